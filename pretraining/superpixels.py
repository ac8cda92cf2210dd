"""SLIC superpixels of every preprocessed 2d slice, computed once and cached beside the data.

SuperCL (Zeng et al.) labels pixels by the superpixel they fall into. Its public code runs SLIC inside
the data loader on every augmented view; here it runs once per slice of the preprocessed volume and is
stored on disk, so no SLIC ever runs inside a training step. That is equivalent for SuperCL's pixel
terms because the views they use (T_fix) are intensity-only and therefore pixel-aligned with the
un-augmented slice.

Layout: ``$nnUNet_preprocessed/<Dataset>/<data_identifier>_superpixels_<key>/`` with ``params.json``
and one ``<case>.npy`` per case, an int16/int32 array ``(Z, Y, X)`` of labels ``1..K`` per slice.
``<key>`` hashes the SLIC parameters, so changed parameters get a new folder and never reuse a stale
cache. Files are written atomically and only missing cases are computed (idempotent, resumable).

Choices (the paper is silent on them):

* SLIC on the z-scored grayscale slice, ``channel_axis=None`` (multi-channel data: channels last,
  ``convert2lab=False``). scikit-image rescales the input to [0, 1] internally, so the intensity
  scale does not matter. ``compactness=0.1``: the reference code calls SLIC on a 3-channel stack
  converted to Lab with ``compactness=10``; Lab's L spans [0, 100], our rescaled input spans [0, 1],
  so the same intensity/space balance is ``10 / 100 = 0.1``.
* ``max_num_iter=5`` instead of scikit-image's 10: it costs 40 % less, and on every 10th Hippocampus
  case it gave 38.9 vs 39.3 superpixels per slice and 11.8 % vs 11.6 % label leakage
  (``scripts/bench_supercl.py`` measures it again). Overridable (``-o slic_iterations=10``).
* The number of superpixels follows the paper's geometry: 100 superpixels on a 32 x 32 feature map
  (about 10 feature-map pixels per superpixel). :func:`default_n_segments` scales 100 by the
  feature map's pixel count (Hippocampus, 28 x 20: 55). ``n_segments`` counts superpixels per patch
  area; a slice of another size gets ``n_segments * slice area / patch area`` so superpixels keep the
  same size in pixels wherever they are cut out.
* A constant slice (e.g. empty slices at the ends of a volume) is one superpixel: SLIC would return a
  regular grid there, i.e. contrast identical pixels against each other.
* When a patch is cropped from a smaller slice, the padding gets label 0 = "no superpixel"; the loss
  terms treat it as documented there (ILCP ignores it, ASP averages it as a region of its own).
* Downsampling to the feature map: majority vote over each stride x stride block (ties: the smallest
  label), which unlike nearest sampling does not depend on the block's corner pixel.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from nnunet_cl.errors import NnunetClError

CACHE_FORMAT = 1
PAPER_SUPERPIXELS = 100            # SuperCL's best setting (Fig. 8) ...
PAPER_FEATURE_PIXELS = 32 * 32     # ... on its 32 x 32 feature map (512^2 input, stride 16)


# ----------------------------------------------------------------------------- geometry
def feature_map_shape(patch_size: Sequence[int], strides: Sequence, stage: int) -> tuple:
    """Spatial shape of encoder stage ``stage``'s output for a patch (cumulative strides)."""
    factor = stage_downsampling(strides, stage)
    shape = []
    for size, f in zip(patch_size, factor):
        if size % f:
            raise NnunetClError(f"patch size {tuple(patch_size)} is not divisible by the cumulative stride {factor} "
                                f"of encoder stage {stage}; choose another stage with -o feature_stage=N")
        shape.append(size // f)
    return tuple(shape)


def stage_downsampling(strides: Sequence, stage: int) -> tuple:
    """Cumulative stride per axis of encoder stage ``stage`` (nnU-Net's ``encoder.strides``)."""
    strides = [tuple(int(s) for s in (st if isinstance(st, (list, tuple)) else (st, st))) for st in strides]
    if not 0 <= stage < len(strides):
        raise NnunetClError(f"encoder stage {stage} does not exist; the encoder has stages 0..{len(strides) - 1}")
    return tuple(int(np.prod([s[axis] for s in strides[: stage + 1]])) for axis in range(len(strides[0])))


def default_feature_stage(patch_size: Sequence[int], strides: Sequence, max_pixels: int = PAPER_FEATURE_PIXELS) -> int:
    """The highest-resolution stage whose map has at most ``max_pixels`` pixels (SuperCL: 32 x 32)."""
    for stage in range(len(strides)):
        factor = stage_downsampling(strides, stage)
        if np.prod([p // f for p, f in zip(patch_size, factor)]) <= max_pixels:
            return stage
    return len(strides) - 1


def default_n_segments(feature_shape: Sequence[int]) -> int:
    """100 superpixels per 32 x 32 feature-map pixels, scaled to this feature map (at least 2)."""
    return max(2, int(round(PAPER_SUPERPIXELS * float(np.prod(feature_shape)) / PAPER_FEATURE_PIXELS)))


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class SlicParameters:
    n_segments: int                 # superpixels per patch area
    patch_size: tuple
    compactness: float = 0.1
    max_num_iter: int = 5

    def __post_init__(self):
        if self.n_segments < 1:
            raise NnunetClError(f"n_segments must be >= 1, got {self.n_segments}")
        if self.compactness <= 0:
            raise NnunetClError(f"SLIC compactness must be > 0, got {self.compactness}")
        if self.max_num_iter < 1:
            raise NnunetClError(f"SLIC iterations must be >= 1, got {self.max_num_iter}")

    def as_dict(self) -> dict:
        return dict(asdict(self), patch_size=[int(p) for p in self.patch_size], cache_format=CACHE_FORMAT)

    @property
    def key(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def segments_for(self, slice_shape: Sequence[int]) -> int:
        area_ratio = float(np.prod(slice_shape)) / float(np.prod(self.patch_size))
        return max(1, int(round(self.n_segments * area_ratio)))


def cache_folder(data_folder: str, params: SlicParameters) -> str:
    return f"{os.path.normpath(data_folder)}_superpixels_{params.key}"


# ----------------------------------------------------------------------------- SLIC
def slic_slice(image_cyx: np.ndarray, params: SlicParameters) -> np.ndarray:
    """SLIC labels ``1..K`` (int32, ``(Y, X)``) of one slice ``(C, Y, X)``."""
    from skimage.segmentation import slic

    image_cyx = np.asarray(image_cyx, dtype=np.float32)
    shape = image_cyx.shape[1:]
    if not np.isfinite(image_cyx).all():
        raise NnunetClError("a preprocessed slice contains NaN/inf; re-run nnUNetv2_plan_and_preprocess")
    if image_cyx.max() == image_cyx.min():
        return np.ones(shape, dtype=np.int32)
    if image_cyx.shape[0] == 1:
        image, kwargs = image_cyx[0], {"channel_axis": None}
    else:
        image, kwargs = np.moveaxis(image_cyx, 0, -1), {"channel_axis": -1, "convert2lab": False}
    labels = slic(image, n_segments=params.segments_for(shape), compactness=params.compactness,
                  max_num_iter=params.max_num_iter, start_label=1, **kwargs)
    return labels.astype(np.int32)


def superpixel_volume(data_czyx: np.ndarray, params: SlicParameters) -> np.ndarray:
    """SLIC of every z-slice of a case ``(C, Z, Y, X)`` -> ``(Z, Y, X)``, as small an int dtype as fits."""
    data_czyx = np.asarray(data_czyx)
    labels = np.stack([slic_slice(data_czyx[:, z], params) for z in range(data_czyx.shape[1])])
    return labels.astype(np.int16 if labels.max() < np.iinfo(np.int16).max else np.int32)


def _case_path(folder: str, case_id: str) -> str:
    return os.path.join(folder, case_id + ".npy")


def _slic_job(job) -> tuple:
    """Worker: SLIC of one case's volume. Workers only import numpy and scikit-image (cheap to spawn);
    reading and writing stay in the parent."""
    case_id, data, params_dict = job
    params = SlicParameters(**{k: v for k, v in params_dict.items() if k != "cache_format"})
    return case_id, superpixel_volume(data, params)


def _save_case(folder: str, case_id: str, labels: np.ndarray) -> None:
    from nnunet_cl.atomic import atomic_target
    with atomic_target(_case_path(folder, case_id)) as tmp:
        with open(tmp, "wb") as f:    # a file object: np.save would append ".npy" to a path
            np.save(f, labels)


def build_superpixel_cache(data_folder: str, params: SlicParameters, case_ids: Optional[Sequence[str]] = None,
                           num_processes: int = 2, folder: Optional[str] = None, progress: bool = True) -> str:
    """Compute the superpixels of every case that has none yet; returns the cache folder.

    ``folder`` overrides the default location (benchmarks). The parent reads each case with nnU-Net's
    dataset class and writes the result atomically; SLIC runs in ``num_processes`` spawned workers
    (spawned: forking a process that holds torch/blosc2 threads is unsafe), with at most two cases per
    worker in flight so memory stays bounded, and a tqdm progress bar.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from nnunet_cl.atomic import atomic_write_json

    folder = folder or cache_folder(data_folder, params)
    dataset_class = infer_dataset_class(data_folder)
    if case_ids is None:
        case_ids = sorted(dataset_class.get_identifiers(data_folder))
    os.makedirs(folder, exist_ok=True)
    params_file = os.path.join(folder, "params.json")
    if os.path.isfile(params_file):
        with open(params_file) as f:
            stored = json.load(f)
        if {k: stored.get(k) for k in params.as_dict()} != params.as_dict():
            raise NnunetClError(f"{folder} holds superpixels of other parameters ({stored}); delete the folder")
    else:
        import skimage
        atomic_write_json(dict(params.as_dict(), key=params.key, data_folder=os.path.abspath(data_folder),
                               scikit_image=skimage.__version__), params_file)
    missing = [c for c in case_ids if not os.path.isfile(_case_path(folder, c))]
    if not missing:
        return folder
    dataset = dataset_class(data_folder, missing)

    def jobs():
        for case_id in missing:
            yield case_id, np.asarray(dataset.load_case(case_id)[0]), params.as_dict()

    from tqdm import tqdm
    bar = tqdm(total=len(missing), desc=f"SLIC superpixels ({params.n_segments} per patch)", disable=not progress,
               mininterval=1)
    num_processes = max(1, min(int(num_processes), len(missing)))
    if num_processes == 1:
        for job in jobs():
            _save_case(folder, *_slic_job(job))
            bar.update()
    else:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            pending = []
            for job in jobs():
                pending.append(pool.apply_async(_slic_job, (job,)))
                while len(pending) >= 2 * num_processes or (pending and pending[0].ready()):
                    _save_case(folder, *pending.pop(0).get())
                    bar.update()
            for result in pending:
                _save_case(folder, *result.get())
                bar.update()
    bar.close()
    return folder


# ----------------------------------------------------------------------------- loading
class SuperpixelCache:
    """Cached superpixel maps of a :class:`PreprocessedSlices`, cropped exactly like its images."""

    def __init__(self, folder: str, slices):
        if not os.path.isfile(os.path.join(folder, "params.json")):
            raise NnunetClError(f"{folder} is not a superpixel cache; run: nnunet_cl superpixels -d DATASET")
        self.folder = folder
        self.slices = slices
        self._volumes: dict = {}

    @classmethod
    def ensure(cls, slices, params: SlicParameters, num_processes: int = 2, progress: bool = True):
        """Build whatever is missing for the slices' cases, then open the cache."""
        folder = build_superpixel_cache(slices.data_folder, params, slices.case_ids, num_processes,
                                        progress=progress)
        return cls(folder, slices)

    def volume(self, case_index: int) -> np.ndarray:
        if case_index not in self._volumes:
            case_id = self.slices.case_ids[case_index]
            path = _case_path(self.folder, case_id)
            if not os.path.isfile(path):
                raise NnunetClError(f"no superpixels for case {case_id} in {self.folder}; "
                                    f"run: nnunet_cl superpixels -d DATASET")
            volume = np.load(path, mmap_mode="r")
            expected = tuple(self.slices.shapes[case_index][1:])
            if volume.shape != expected:
                raise NnunetClError(f"superpixels of {case_id} have shape {volume.shape} but the preprocessed image "
                                    f"has {expected} (the data were preprocessed again); delete {self.folder} and "
                                    f"run: nnunet_cl superpixels -d DATASET")
            self._volumes[case_index] = volume
        return self._volumes[case_index]

    def patch(self, window) -> np.ndarray:
        """The window's superpixel map at patch size; padding is 0."""
        from nnunet_cl.pretraining.slices import PreprocessedSlices
        return PreprocessedSlices.crop(np.asarray(self.volume(window.case_index)[window.z], dtype=np.int32),
                                       window, self.slices.patch_size, fill=0)

    def patches(self, windows) -> np.ndarray:
        return np.stack([self.patch(w) for w in windows])


# ----------------------------------------------------------------------------- feature-map size
def majority_downsample(maps: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """``[N, H, W] -> [N, H/fy, W/fx]``: the most frequent label of each block (ties: smallest label)."""
    maps = np.asarray(maps)
    fy, fx = (int(f) for f in factor)
    if fy == fx == 1:
        return maps.copy()
    n, height, width = maps.shape
    if height % fy or width % fx:
        raise NnunetClError(f"superpixel map {height}x{width} is not divisible by the feature stride {fy}x{fx}")
    h, w = height // fy, width // fx
    blocks = maps.reshape(n, h, fy, w, fx).transpose(0, 1, 3, 2, 4).reshape(n * h * w, fy * fx).astype(np.int64)
    num_labels = int(blocks.max()) + 1
    # One bincount over (block, label) pairs counts every block at once.
    keys = (np.arange(n * h * w)[:, None] * num_labels + blocks).ravel()
    counts = np.bincount(keys, minlength=n * h * w * num_labels).reshape(n * h * w, num_labels)
    return counts.argmax(axis=1).reshape(n, h, w).astype(maps.dtype)


# ----------------------------------------------------------------------------- leakage
def leakage_counts(superpixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For one slice: ``[superpixels, crossing a label boundary, touching foreground, of those crossing]``.

    A superpixel "crosses a label boundary" when it contains pixels of more than one label; label 0 of
    ``superpixels`` (padding) is not a superpixel. ``labels``: nnU-Net's -1 counts as background.
    """
    superpixels = np.asarray(superpixels, dtype=np.int64).ravel()
    labels = np.maximum(np.asarray(labels, dtype=np.int64).ravel(), 0)
    num_labels = int(labels.max()) + 1
    present = np.zeros((int(superpixels.max()) + 1, num_labels), dtype=bool)
    present[superpixels, labels] = True
    present = present[1:][present[1:].any(axis=1)]
    crossing = present.sum(axis=1) > 1
    foreground = present[:, 1:].any(axis=1)
    return np.array([len(present), crossing.sum(), foreground.sum(), (crossing & foreground).sum()], dtype=np.int64)
