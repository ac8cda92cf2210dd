"""SuperCL's superpixel cache and method on the synthetic dataset: round trip, idempotence, invalidation
on changed parameters, shape check, constant slices, feature-map downsampling, leakage, geometry."""

import os

import numpy as np
import pytest
import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.pretraining.slices import PreprocessedSlices
from nnunet_cl.pretraining.superpixels import (SlicParameters, SuperpixelCache, build_superpixel_cache, cache_folder,
                                               default_feature_stage, default_n_segments, feature_map_shape,
                                               leakage_counts, majority_downsample, slic_slice, superpixel_volume)
from tests.conftest import parameters_under, parameters_with_gradient


@pytest.fixture(scope="module")
def slices(synthetic_context):
    return PreprocessedSlices(synthetic_context.data_folder, synthetic_context.patch_size)


@pytest.fixture(scope="module")
def params(synthetic_context):
    return SlicParameters(n_segments=47, patch_size=synthetic_context.patch_size)


def test_cache_round_trip_and_crops(slices, params):
    cache = SuperpixelCache.ensure(slices, params, num_processes=1, progress=False)
    assert cache.folder == cache_folder(slices.data_folder, params)
    assert os.path.dirname(cache.folder) == os.path.dirname(slices.data_folder)   # beside the preprocessed data
    for case_index in (0, len(slices.case_ids) - 1):
        data, _ = slices._case(case_index)
        expected = superpixel_volume(np.asarray(data), params)
        assert np.array_equal(cache.volume(case_index), expected)
        assert expected.min() >= 1
    windows = slices.sample_windows(6, np.random.default_rng(0))
    patches = cache.patches(windows)
    assert patches.shape == (6,) + tuple(slices.patch_size)
    for window, patch in zip(windows, patches):
        full = np.asarray(cache.volume(window.case_index)[window.z])
        assert np.array_equal(patch, PreprocessedSlices.crop(full.astype(np.int32), window, slices.patch_size, fill=0))


def test_cache_is_idempotent(slices, params):
    folder = build_superpixel_cache(slices.data_folder, params, num_processes=1, progress=False)
    path = os.path.join(folder, slices.case_ids[0] + ".npy")
    before = os.stat(path).st_mtime_ns
    assert build_superpixel_cache(slices.data_folder, params, num_processes=1, progress=False) == folder
    assert os.stat(path).st_mtime_ns == before
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_changed_parameters_never_reuse_the_cache(slices, params, tmp_path):
    other = SlicParameters(n_segments=params.n_segments, patch_size=params.patch_size, compactness=0.3)
    assert other.key != params.key
    assert cache_folder(slices.data_folder, other) != cache_folder(slices.data_folder, params)
    for changed in (SlicParameters(12, params.patch_size), SlicParameters(params.n_segments, (32, 32)),
                    SlicParameters(params.n_segments, params.patch_size, max_num_iter=10)):
        assert changed.key != params.key
    # A folder holding other parameters is refused rather than reused.
    build_superpixel_cache(slices.data_folder, params, case_ids=slices.case_ids[:1], num_processes=1,
                           folder=str(tmp_path / "sp"), progress=False)
    with pytest.raises(NnunetClError, match="other parameters"):
        build_superpixel_cache(slices.data_folder, other, case_ids=slices.case_ids[:1], num_processes=1,
                               folder=str(tmp_path / "sp"), progress=False)


def test_cache_shape_is_checked_against_the_image(slices, params, tmp_path):
    folder = build_superpixel_cache(slices.data_folder, params, case_ids=slices.case_ids[:1], num_processes=1,
                                    folder=str(tmp_path / "sp"), progress=False)
    np.save(os.path.join(folder, slices.case_ids[0] + ".npy"), np.ones((2, 5, 5), np.int16))
    with pytest.raises(NnunetClError, match="preprocessed again"):
        SuperpixelCache(folder, slices).volume(0)
    with pytest.raises(NnunetClError, match="no superpixels"):
        SuperpixelCache(folder, slices).volume(1)


def test_constant_slice_is_one_superpixel(params):
    assert np.array_equal(slic_slice(np.full((1, 30, 20), 3.5, np.float32), params), np.ones((30, 20), np.int32))
    labels = slic_slice(np.random.default_rng(0).standard_normal((1, 48, 40)).astype(np.float32), params)
    assert labels.min() == 1 and labels.max() > 10


def test_superpixel_count_scales_with_slice_area(params):
    assert params.segments_for(params.patch_size) == params.n_segments
    assert params.segments_for((params.patch_size[0] * 2, params.patch_size[1])) == 2 * params.n_segments


def test_majority_downsampling_by_hand():
    maps = np.array([[[1, 1, 2, 2],
                      [1, 3, 2, 0],
                      [0, 0, 4, 5],
                      [0, 3, 6, 7]]])
    # Blocks: {1,1,1,3} -> 1; {2,2,2,0} -> 2; {0,0,0,3} -> 0 (padding wins); {4,5,6,7} tie -> smallest 4.
    assert np.array_equal(majority_downsample(maps, (2, 2)), [[[1, 2], [0, 4]]])
    assert np.array_equal(majority_downsample(maps, (1, 1)), maps)
    assert np.array_equal(majority_downsample(maps, (1, 2)), [[[1, 2], [1, 0], [0, 4], [0, 6]]])


def test_leakage_counts_by_hand():
    superpixels = np.array([[1, 1, 2, 2],
                            [1, 1, 2, 2],
                            [3, 3, 4, 4],
                            [3, 3, 4, 0]])
    labels = np.array([[0, 0, 0, 1],
                       [0, 0, 1, 1],
                       [0, 0, 0, 0],
                       [2, 2, 0, -1]])
    # 4 superpixels; 2 (labels 0/1) and 3 (labels 0/2) cross; 2 and 3 touch foreground, both cross.
    assert leakage_counts(superpixels, labels).tolist() == [4, 2, 2, 2]


def test_default_geometry_follows_the_paper():
    hippocampus = [[1, 1], [2, 2], [2, 2], [2, 2]]
    assert default_feature_stage((56, 40), hippocampus) == 1
    assert feature_map_shape((56, 40), hippocampus, 1) == (28, 20)
    assert default_n_segments((28, 20)) == 55            # 100 * 560 / 1024
    paper = [[1, 1]] + [[2, 2]] * 6
    assert feature_map_shape((512, 512), paper, default_feature_stage((512, 512), paper)) == (32, 32)
    assert default_n_segments((32, 32)) == 100
    with pytest.raises(NnunetClError, match="does not exist"):
        feature_map_shape((56, 40), hippocampus, 7)


# ----------------------------------------------------------------------------- the method on real batches
@pytest.fixture(scope="module")
def method_and_network(synthetic_context):
    from nnunet_cl.pretraining.methods import get_method
    network = synthetic_context.build_network()
    method = get_method("supercl")(network, synthetic_context, {})
    return method, network


def test_method_geometry_and_batch(method_and_network, slices):
    method, network = method_and_network
    assert method.stage == 1 and method.feature_shape == (24, 20)
    assert method.slic_parameters.n_segments == default_n_segments((24, 20))
    batch = method.make_batch(slices, 4, np.random.default_rng(0))
    assert batch["views"].shape == batch["fixed_views"].shape == (8, 1) + tuple(slices.patch_size)
    assert batch["superpixels"].shape == (4, 24, 20) and batch["superpixels"].dtype == torch.int64
    torch.manual_seed(0)
    loss, terms = method.compute_loss(network, batch)
    assert set(terms) == {"ins", "intra", "inter"} and torch.isfinite(loss)
    network.zero_grad()
    loss.backward()
    # the instance term trains the whole encoder; the ILCP/IGCP terms read an encoder stage; no decoder part
    assert parameters_with_gradient(network) == parameters_under(network, ["encoder."])
    statistics = method.epoch_statistics()
    assert 1 <= statistics["ccl_components"] <= 2 and method.epoch_statistics() == {}


def test_constant_slices_skip_ilcp_without_nan(method_and_network, slices):
    method, network = method_and_network
    batch = method.make_batch(slices, 4, np.random.default_rng(1))
    batch["superpixels"] = torch.ones_like(batch["superpixels"])     # every image one superpixel
    batch["fixed_views"] = torch.zeros_like(batch["fixed_views"])
    loss, terms = method.compute_loss(network, batch)
    assert terms["intra"] == 0.0 and torch.isfinite(loss)
    network.zero_grad()
    loss.backward()
    assert parameters_with_gradient(network) == parameters_under(network, ["encoder."])   # the instance term


def test_lambda_zero_switches_terms_off(synthetic_context, slices):
    from nnunet_cl.pretraining.methods import get_method
    network = synthetic_context.build_network()
    method = get_method("supercl")(network, synthetic_context, {"lambda_intra": "0", "lambda_inter": "0",
                                                                "base_loss": "wcl"})
    batch = method.make_batch(slices, 4, np.random.default_rng(0))
    assert "fixed_views" not in batch and "superpixels" not in batch
    _, terms = method.compute_loss(network, batch)
    assert set(terms) == {"ins"}
    assert method.folder_name(method.options) == "supercl_base_loss-wcl_lambda_inter-0.0_lambda_intra-0.0"
    assert method.folder_name(method.resolve_options({})) == "supercl"


def test_bad_options_are_one_clear_error(synthetic_context):
    from nnunet_cl.pretraining.methods import get_method
    network = synthetic_context.build_network()
    for options, message in (({"base_loss": "moco"}, "base_loss"), ({"lambda_ins": "0", "lambda_intra": "0",
                             "lambda_inter": "0"}, "are all 0: no loss term is left"), ({"ilcp_stride": "0"}, "ilcp_stride"),
                             ({"feature_stage": "9"}, "does not exist")):
        with pytest.raises(NnunetClError, match=message):
            get_method("supercl")(network, synthetic_context, options)


def test_parallel_build_equals_serial(slices, params, tmp_path):
    cases = slices.case_ids[:3]
    serial = build_superpixel_cache(slices.data_folder, params, cases, num_processes=1, folder=str(tmp_path / "a"),
                                    progress=False)
    parallel = build_superpixel_cache(slices.data_folder, params, cases, num_processes=2, folder=str(tmp_path / "b"),
                                      progress=False)
    for case in cases:
        assert np.array_equal(np.load(os.path.join(serial, case + ".npy")), np.load(os.path.join(parallel, case + ".npy")))


def test_ilcp_only_skips_the_instance_views(synthetic_context, slices):
    from nnunet_cl.pretraining.methods import get_method
    network = synthetic_context.build_network()
    method = get_method("supercl")(network, synthetic_context, {"lambda_ins": "0", "lambda_inter": "0"})
    batch = method.make_batch(slices, 4, np.random.default_rng(0))
    assert "views" not in batch and batch["fixed_views"].shape[0] == 8
    loss, terms = method.compute_loss(network, batch)
    assert set(terms) == {"intra"} and torch.isfinite(loss)
    loss.backward()
