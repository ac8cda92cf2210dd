"""Per-case, per-class segmentation metrics: Dice (DSC), Jaccard (JC), HD95 and ASD, spacing-aware.

DSC and JC are nnU-Net's own (``compute_tp_fp_fn_tn`` on ``region_or_label_to_mask``, so region-based
datasets and the ignore label are handled as ``nnUNetv2_evaluate_folder`` handles them). The surface
distances use scipy's Euclidean distance transform with ``sampling=spacing`` (millimetres for NIfTI):

* the **surface** of a mask is its voxels with at least one face-neighbour (6-connectivity in 3D,
  4 in 2D) outside the mask: ``mask & ~binary_erosion(mask)``; voxels on the image border count as
  surface (erosion treats outside the image as background), as MedPy does;
* d(x, S) is the distance from surface voxel x to the nearest voxel of the other surface S;
* **HD95** = 95th percentile (numpy's linear interpolation) of the pooled distances of both
  directions, {d(a, S_ref) : a in S_pred} and {d(b, S_pred) : b in S_ref} (as MedPy's ``hd95``);
* **ASD** = average symmetric surface distance = the mean of that same pooled set,
  (sum_a d(a, S_ref) + sum_b d(b, S_pred)) / (|S_pred| + |S_ref|) (Heimann et al. 2009; MedPy's
  ``assd`` instead averages the two directed means, which differs when the surfaces differ in size).

Empty masks (documented rule, tested):

* reference and prediction both empty -> DSC = JC = 1, HD95 = ASD = 0 (a correct "nothing here").
  nnU-Net's ``summary.json`` reports NaN for this case and leaves it out of its means; we count it
  as perfect so that a method is not rewarded for missing hard cases by having them dropped.
* exactly one empty -> DSC = JC = 0, and HD95 = ASD = NaN: a distance to an empty surface is
  undefined. NaN distances are left out of every mean and *counted* instead (``distance_undefined``
  in ``results.csv``, the "undef." column of ``results.md``), so a method that misses structures
  cannot look good on HD95 / ASD without it being visible. No arbitrary penalty value is used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunet_cl.errors import NnunetClError


@dataclass
class ClassMetrics:
    dsc: float
    jc: float
    hd95: float
    asd: float
    n_ref: int          # reference voxels
    n_pred: int         # predicted voxels

    @property
    def distance_undefined(self) -> bool:
        return math.isnan(self.hd95)

    def as_dict(self) -> dict:
        return dict(asdict(self), distance_undefined=self.distance_undefined)


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (see the module docstring)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(mask_from: np.ndarray, mask_to: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances from each surface voxel of ``mask_from`` to the surface of ``mask_to`` (both non-empty)."""
    to_surface = surface(mask_to)
    # EDT of the complement: at every voxel, the distance to the nearest surface voxel of mask_to.
    distance_map = ndimage.distance_transform_edt(~to_surface, sampling=tuple(float(s) for s in spacing))
    return distance_map[surface(mask_from)]


def _check_spacing(mask: np.ndarray, spacing) -> tuple:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != mask.ndim or min(spacing) <= 0:
        raise NnunetClError(f"spacing {spacing} does not fit an image of {mask.ndim} dimensions (one positive "
                            "value per axis, in the array's axis order)")
    return spacing


def class_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                  ignore_mask: np.ndarray | None = None) -> ClassMetrics:
    """DSC, JC, HD95, ASD of one binary prediction against one binary reference."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    mask_ref, mask_pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if mask_ref.shape != mask_pred.shape:
        raise NnunetClError(f"prediction shape {mask_pred.shape} differs from reference shape {mask_ref.shape}; "
                            "predictions must be in the reference's geometry (as nnUNetv2_predict writes them)")
    spacing = _check_spacing(mask_ref, spacing)
    tp, fp, fn, _ = (int(v) for v in compute_tp_fp_fn_tn(mask_ref, mask_pred, ignore_mask))
    if ignore_mask is not None:
        # Voxels under the ignore label count for nothing, in the distances too.
        mask_ref, mask_pred = mask_ref & ~ignore_mask, mask_pred & ~ignore_mask
    n_ref, n_pred = tp + fn, tp + fp
    if n_ref == 0 and n_pred == 0:
        return ClassMetrics(1.0, 1.0, 0.0, 0.0, 0, 0)
    dsc = 2 * tp / (2 * tp + fp + fn)
    jc = tp / (tp + fp + fn)
    if n_ref == 0 or n_pred == 0:
        return ClassMetrics(dsc, jc, math.nan, math.nan, n_ref, n_pred)
    distances = np.concatenate([surface_distances(mask_pred, mask_ref, spacing),
                                surface_distances(mask_ref, mask_pred, spacing)])
    return ClassMetrics(dsc, jc, float(np.percentile(distances, 95)), float(distances.mean()), n_ref, n_pred)


def _label_key(value):
    """dataset.json label value -> the form nnU-Net's label manager uses (int, or tuple for a region)."""
    if isinstance(value, (list, tuple)):
        return int(value[0]) if len(value) == 1 else tuple(int(v) for v in value)
    return int(value)


def foreground_classes(dataset_json: dict) -> tuple:
    """([(class name, label or region)], ignore label or None) of the foreground, as nnU-Net evaluates."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
    names = {_label_key(v): name for name, v in dataset_json["labels"].items()}
    classes = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    return [(names.get(_label_key(c), str(c)), _label_key(c)) for c in classes], manager.ignore_label


def case_metrics(reference: np.ndarray, prediction: np.ndarray, spacing, classes: list,
                 ignore_label: int | None = None) -> list:
    """One dict per class: {"class", "class_id", dsc, jc, hd95, asd, n_ref, n_pred, distance_undefined}."""
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    ignore_mask = reference == ignore_label if ignore_label is not None else None
    rows = []
    for name, label in classes:
        metrics = class_metrics(region_or_label_to_mask(reference, label), region_or_label_to_mask(prediction, label),
                                spacing, ignore_mask)
        rows.append(dict(**{"class": name, "class_id": str(label)}, **metrics.as_dict()))
    return rows


def evaluate_case_files(reference_file: str, prediction_file: str, dataset_json: dict) -> list:
    """Read both segmentations with nnU-Net's reader for the dataset (spacing from the image header)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    reader = determine_reader_writer_from_dataset_json(dataset_json, reference_file, verbose=False)()
    reference, ref_properties = reader.read_seg(reference_file)
    prediction, pred_properties = reader.read_seg(prediction_file)
    spacing = ref_properties["spacing"]
    if not np.allclose(spacing, pred_properties["spacing"], rtol=1e-3):
        raise NnunetClError(f"{prediction_file} has spacing {pred_properties['spacing']} but its reference "
                            f"{reference_file} has {spacing}; predict with nnUNetv2_predict into the original geometry")
    classes, ignore_label = foreground_classes(dataset_json)
    return case_metrics(reference[0], prediction[0], spacing, classes, ignore_label)
