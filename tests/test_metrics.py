"""Metrics on hand-made shapes with known answers, against a brute-force reference, and through files."""

import itertools
import math
import os

import numpy as np
import pytest

from nnunet_cl.errors import NnunetClError
from nnunet_cl.tools.metrics import case_metrics, class_metrics, evaluate_case_files, foreground_classes, surface


def brute_force_surface(mask):
    """Voxels of mask with a face-neighbour outside the mask or outside the image (explicit loops)."""
    out = np.zeros_like(mask)
    for index in itertools.product(*[range(s) for s in mask.shape]):
        if not mask[index]:
            continue
        for axis in range(mask.ndim):
            for step in (-1, 1):
                neighbour = list(index)
                neighbour[axis] += step
                if not 0 <= neighbour[axis] < mask.shape[axis] or not mask[tuple(neighbour)]:
                    out[index] = True
    return out


def brute_force_distances(ref, pred, spacing):
    """HD95 and ASD from explicit pairwise distances between the two surfaces' voxel centres."""
    spacing = np.asarray(spacing, float)
    s_ref = np.argwhere(brute_force_surface(ref)) * spacing
    s_pred = np.argwhere(brute_force_surface(pred)) * spacing
    d_pred = [min(np.linalg.norm(a - b) for b in s_ref) for a in s_pred]
    d_ref = [min(np.linalg.norm(b - a) for a in s_pred) for b in s_ref]
    pooled = np.array(d_pred + d_ref)
    return np.percentile(pooled, 95), pooled.mean()


def square(shape, top_left, size):
    mask = np.zeros(shape, bool)
    mask[top_left[0]:top_left[0] + size, top_left[1]:top_left[1] + size] = True
    return mask


def test_identical_masks_are_perfect():
    mask = square((20, 20), (3, 4), 8)
    m = class_metrics(mask, mask, (0.7, 1.3))
    assert (m.dsc, m.jc, m.hd95, m.asd) == (1.0, 1.0, 0.0, 0.0)


def test_dice_and_jaccard_by_hand():
    ref = np.zeros((4, 4), bool)
    ref[0, :4] = True                  # 4 voxels
    pred = np.zeros((4, 4), bool)
    pred[0, 2:] = True                 # 2 voxels, both inside ref
    pred[3, 0] = True                  # 1 false positive
    m = class_metrics(ref, pred, (1, 1))
    # tp 2, fp 1, fn 2: DSC = 4 / 7, JC = 2 / 5
    assert m.dsc == pytest.approx(4 / 7)
    assert m.jc == pytest.approx(2 / 5)
    assert (m.n_ref, m.n_pred) == (4, 3)


def test_single_voxels_anisotropic_distance():
    ref = np.zeros((4, 5, 8), bool)
    pred = np.zeros((4, 5, 8), bool)
    ref[1, 1, 1] = True
    pred[2, 3, 5] = True               # offset (1, 2, 4) voxels
    m = class_metrics(ref, pred, (3.0, 1.0, 0.5))
    # offset in mm (3, 2, 2): sqrt(9 + 4 + 4)
    assert m.hd95 == pytest.approx(math.sqrt(17))
    assert m.asd == pytest.approx(math.sqrt(17))
    assert m.dsc == 0.0


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_squares_offset_by_d_have_hd95_d_times_spacing(offset):
    ref = square((30, 30), (5, 5), 10)
    pred = square((30, 30), (5, 5 + offset), 10)
    # The far edge of each square is `offset` voxels from the other's nearest surface, and more than 5 %
    # of the surface voxels lie on it, so the 95th percentile is exactly offset * spacing along that axis.
    m = class_metrics(ref, pred, (0.7, 1.5))
    assert m.hd95 == pytest.approx(offset * 1.5)
    assert m.dsc == pytest.approx(2 * 10 * (10 - offset) / 200)


def test_parallel_lines_have_asd_equal_to_their_gap():
    ref = np.zeros((10, 12), bool)
    pred = np.zeros((10, 12), bool)
    ref[2, 1:11] = True
    pred[6, 1:11] = True               # every voxel of one line is 4 rows from the other line
    m = class_metrics(ref, pred, (0.5, 2.0))
    assert m.asd == pytest.approx(4 * 0.5)
    assert m.hd95 == pytest.approx(4 * 0.5)


def test_surface_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = ndimage_blob(rng, (7, 9, 8))
    np.testing.assert_array_equal(surface(mask), brute_force_surface(mask))


def ndimage_blob(rng, shape):
    from scipy import ndimage
    return ndimage.gaussian_filter(rng.standard_normal(shape), 1.2) > 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    ref, pred = ndimage_blob(rng, (6, 9, 8)), ndimage_blob(rng, (6, 9, 8))
    spacing = (2.5, 0.8, 1.1)
    m = class_metrics(ref, pred, spacing)
    hd95, asd = brute_force_distances(ref, pred, spacing)
    assert m.hd95 == pytest.approx(hd95)
    assert m.asd == pytest.approx(asd)


def test_empty_rules():
    empty = np.zeros((6, 6), bool)
    something = square((6, 6), (1, 1), 2)
    both = class_metrics(empty, empty, (1, 1))
    assert (both.dsc, both.jc, both.hd95, both.asd, both.distance_undefined) == (1.0, 1.0, 0.0, 0.0, False)
    for ref, pred in ((empty, something), (something, empty)):
        one = class_metrics(ref, pred, (1, 1))
        assert (one.dsc, one.jc) == (0.0, 0.0)
        assert math.isnan(one.hd95) and math.isnan(one.asd) and one.distance_undefined


def test_ignore_label_voxels_count_for_nothing():
    ref = np.zeros((8, 8), np.int16)
    ref[1:4, 1:4] = 1
    ref[6, 6] = 9                      # ignore label
    pred = (ref == 1).astype(np.int16)
    pred[6, 6] = 1                     # predicted foreground under the ignore label: no false positive
    rows = case_metrics(ref, pred, (1, 1), [("organ", 1)], ignore_label=9)
    assert rows[0]["dsc"] == 1.0 and rows[0]["hd95"] == 0.0


def test_bad_spacing_and_shapes_are_clear_errors():
    mask = square((6, 6), (1, 1), 2)
    with pytest.raises(NnunetClError, match="spacing"):
        class_metrics(mask, mask, (1.0,))
    with pytest.raises(NnunetClError, match="shape"):
        class_metrics(mask, mask[:5], (1, 1))


def test_foreground_classes_labels_and_regions():
    classes, ignore = foreground_classes({"labels": {"background": 0, "Anterior": 1, "Posterior": 2}})
    assert classes == [("Anterior", 1), ("Posterior", 2)] and ignore is None
    regions, _ = foreground_classes({"labels": {"background": 0, "whole": [1, 2], "core": 2},
                                     "regions_class_order": [1, 2]})
    assert regions == [("whole", (1, 2)), ("core", 2)]


def test_case_files_use_header_spacing_in_array_order(tmp_path):
    import SimpleITK as sitk

    ref = np.zeros((4, 5, 8), np.uint8)
    pred = np.zeros((4, 5, 8), np.uint8)
    ref[1, 1, 1] = 1
    pred[2, 3, 5] = 1
    ref[0, 0, 0] = pred[0, 0, 0] = 2   # class 2 predicted perfectly
    for name, array in (("ref", ref), ("pred", pred)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.5, 1.0, 3.0))   # SimpleITK order (x, y, z) = array axes reversed
        sitk.WriteImage(image, os.path.join(tmp_path, f"{name}.nii.gz"))
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
    rows = evaluate_case_files(str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"), dataset_json)
    assert [r["class"] for r in rows] == ["a", "b"]
    assert rows[0]["hd95"] == pytest.approx(math.sqrt(17))     # array offsets (1, 2, 4) * (3, 1, 0.5)
    assert rows[1]["dsc"] == 1.0 and rows[1]["asd"] == 0.0
