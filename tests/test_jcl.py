"""JCL: crop rule, the asymmetric branches on nnU-Net's own modules, each loss term against a naive
reference and a hand-computed case, the batch, and pre-training -> JCL Init trainer."""

import copy
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_cl.errors import NnunetClError
from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.masks import positional_positive_mask
from nnunet_cl.pretraining.methods.jcl import JCL, equivariance_loss
from tests.conftest import parameters_under, parameters_with_gradient, training_log
from tests.test_dense_positional import naive_dense_loss
from tests.test_info_nce import naive_info_nce

DEFAULT_PREFIXES = ("encoder.", "decoder.transpconvs.0.", "decoder.transpconvs.1.", "decoder.stages.0.",
                    "decoder.stages.1.")


def unet(features=(4, 8, 16, 32), strides=None):
    """A PlainConvUNet shaped like nnU-Net's Hippocampus 2d plan (4 stages, total stride 8), but thin."""
    strides = strides or [1] + [2] * (len(features) - 1)
    return PlainConvUNet(1, len(features), list(features), torch.nn.Conv2d, 3, strides, [2] * len(features), 3,
                         [2] * (len(features) - 1), conv_bias=True, norm_op=torch.nn.InstanceNorm2d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True})


def jcl(network=None, patch_size=(56, 40), **options):
    network = network or unet()
    return JCL(network, SimpleNamespace(patch_size=patch_size), options)


# ---------------------------------------------------------------- crop and prefixes
def test_default_crop_is_the_patch_rounded_up_to_stride_times_2k():
    method = jcl()
    assert method.total_stride == (8, 8) and method.upsampling == (4, 4)
    assert method.crop == (64, 64) and method.dominant_size == (16, 16)
    assert method.pretrained_prefixes == DEFAULT_PREFIXES


def test_other_k_changes_crop_prefixes_and_heads():
    method = jcl(k=1)
    assert method.crop == (64, 48) and method.dominant_size == (32, 24)
    assert method.pretrained_prefixes == ("encoder.", "decoder.transpconvs.0.", "decoder.stages.0.")
    assert jcl(k=0).pretrained_prefixes == ("encoder.",) and jcl(k=0).crop == (56, 40)


def test_valid_user_crop():
    assert jcl(crop="64x32").crop == (64, 32)


@pytest.mark.parametrize("crop, reason", [("56x40", "multiple of"), ("32x32", "single pixel")])
def test_invalid_crop_names_patch_k_and_smallest_valid_crop(crop, reason):
    with pytest.raises(NnunetClError) as error:
        jcl(crop=crop)
    message = str(error.value)
    assert f"crop {crop}" in message and "k=2" in message and "patch size 56x40" in message
    assert reason in message and "smallest valid crop is 64x64" in message and "-o crop=64x64" in message


def test_malformed_crop_and_k_out_of_range_are_clear_errors():
    with pytest.raises(NnunetClError, match="crop='big' is not a size"):
        jcl(crop="big")
    with pytest.raises(NnunetClError, match=r"k=4 is out of range: this plan's decoder has 3 blocks; choose 0 <= k <= 3"):
        jcl(k=4)


# ---------------------------------------------------------------- branches on nnU-Net's modules
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_dominant_branch_equals_unet_decoder_forward_and_matches_auxiliary_size(k):
    torch.manual_seed(0)
    network = unet()
    method = jcl(network, k=k)
    small = torch.randn(2, 1, *method.dominant_size)
    captured = {}
    if k:
        network.decoder.stages[k - 1].register_forward_hook(
            lambda module, inputs, output: captured.setdefault("out", output))
        network(small)  # the stock forward: decoder block k-1 sees exactly what our branch computes
    bottleneck, decoded = method.dominant_branch(network, small)
    assert torch.equal(bottleneck, network.encoder(small)[-1])
    if k:
        assert torch.equal(decoded, captured["out"])
    auxiliary = network.encoder(torch.randn(2, 1, *method.crop))[-1]
    assert decoded.shape[2:] == auxiliary.shape[2:]
    assert decoded.shape[1] == network.encoder.output_channels[-(k + 1)]


def test_anisotropic_strides_use_per_axis_factors():
    network = unet(strides=[[1, 1], [2, 2], [2, 1], [2, 2]])
    method = jcl(network, patch_size=(40, 20))
    assert method.total_stride == (8, 4) and method.upsampling == (4, 2)
    assert method.crop == (64, 24)   # multiples of (32, 8)
    _, decoded = method.dominant_branch(network, torch.randn(2, 1, *method.dominant_size))
    assert decoded.shape[2:] == network.encoder(torch.randn(2, 1, *method.crop))[-1].shape[2:]


# ---------------------------------------------------------------- the loss terms
def naive_l1_to_block_means(dominant, auxiliary):
    """L_ER by loops: mean |Y - mean of the matching d x d block of Y~| over all elements."""
    b, c, h, w = dominant.shape
    dy, dx = auxiliary.shape[2] // h, auxiliary.shape[3] // w
    total = 0.0
    for i in range(b):
        for j in range(c):
            for y in range(h):
                for x in range(w):
                    block = auxiliary[i, j, y * dy:(y + 1) * dy, x * dx:(x + 1) * dx]
                    total += abs(float(dominant[i, j, y, x]) - float(block.mean()))
    return total / dominant.numel()


def test_equivariance_loss_hand_computed():
    # Y = 0 (1x1); Y~ = [[1, 2], [3, 4]] -> area-downsampled 2.5 -> |0 - 2.5| = 2.5. Second channel: Y = 1, Y~ = 1.
    dominant = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    auxiliary = torch.stack([torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.ones(2, 2)]).view(1, 2, 2, 2)
    assert equivariance_loss(dominant, auxiliary).item() == pytest.approx(2.5 / 2)


def test_compute_loss_terms_match_naive_references():
    torch.manual_seed(1)
    network = unet().double()
    method = jcl(network, lambda_global=0.7, lambda_dense=0.3, lambda_er=2.0, temperature=0.2,
                 position_threshold=0.2).double()
    batch = {"dominant": torch.randn(3, 1, 16, 16, dtype=torch.float64),
             "auxiliary": torch.randn(3, 1, 64, 64, dtype=torch.float64),
             "positions": torch.tensor([0.1, 0.25, 0.8], dtype=torch.float64)}
    total, terms = method.compute_loss(network, batch)

    with torch.no_grad():
        dominant_bottleneck, decoded = method.dominant_branch(network, batch["dominant"])
        auxiliary_bottleneck = network.encoder(batch["auxiliary"])[-1]
        instance = torch.cat([method.dominant_instance_head(decoded),
                              method.auxiliary_instance_head(auxiliary_bottleneck)])
        pixel = torch.cat([method.dominant_pixel_head(decoded), method.auxiliary_pixel_head(auxiliary_bottleneck)])
    # positives by hand: |0.1 - 0.25| < 0.2 -> slices 0 and 1 are positives across both branches; slice 2 alone.
    mask = torch.zeros(6, 6, dtype=torch.bool)
    for i in range(6):
        for j in range(6):
            mask[i, j] = (i % 3 == j % 3) or {i % 3, j % 3} == {0, 1}
    assert torch.equal(mask, positional_positive_mask(batch["positions"], 2, 0.2))
    want_global = naive_info_nce(instance, mask, 0.2)
    want_dense = naive_dense_loss(pixel, mask, 0.2)
    want_er = naive_l1_to_block_means(dominant_bottleneck, auxiliary_bottleneck)
    assert terms["global"] == pytest.approx(want_global, rel=1e-9)
    assert terms["dense"] == pytest.approx(want_dense, rel=1e-9)
    assert terms["er"] == pytest.approx(want_er, rel=1e-9)
    assert total.item() == pytest.approx(0.7 * want_global + 0.3 * want_dense + 2.0 * want_er, rel=1e-9)
    total.backward()
    # every pre-trained part receives gradient, nothing else of the U-Net does
    assert parameters_with_gradient(network) == parameters_under(network, DEFAULT_PREFIXES)


def test_global_loss_hand_computed_through_the_method():
    # Two slices 0.05 apart (threshold 0.1): all four rows are mutual positives. With identical
    # projections every similarity is 1/tau, so each anchor's loss is log(3) (3 positives, 3 candidates).
    method = jcl()
    identical = torch.ones(4, 8)
    mask = positional_positive_mask(torch.tensor([0.5, 0.55]), 2, method.options["position_threshold"])
    assert multi_positive_info_nce(identical, mask, temperature=0.1).item() == pytest.approx(math.log(3), abs=1e-6)


# ---------------------------------------------------------------- batch
def test_batch_views_are_pixel_aligned_and_downsampled(synthetic_context):
    from nnunet_cl.pretraining.slices import PreprocessedSlices

    network = synthetic_context.build_network()
    method = JCL(network, synthetic_context, {})
    method.intensity_views = ComposeTransforms([])   # identity: the branches then differ only by downsampling
    slices = PreprocessedSlices(synthetic_context.data_folder, synthetic_context.patch_size)
    batch = method.make_batch(slices, 4, np.random.default_rng(0))
    assert batch["auxiliary"].shape == (4, 1, *method.crop)
    assert batch["dominant"].shape == (4, 1, *method.dominant_size)
    assert torch.allclose(batch["dominant"], F.avg_pool2d(batch["auxiliary"], method.upsampling), atol=1e-5)
    assert ((batch["positions"] > 0) & (batch["positions"] < 1)).all()
    loss, terms = method.compute_loss(network, batch)
    assert torch.isfinite(loss) and set(terms) == {"global", "dense", "er"}


# ---------------------------------------------------------------- pre-training -> Init trainer
def jcl_folder(env):
    return env.pretraining_folder("jcl")


@pytest.fixture(scope="module")
def jcl_checkpoint(synthetic_env):
    synthetic_env.run(["nnunet_cl", "pretrain", "-d", "990", "-m", "jcl", "--epochs", "1", "--iters-per-epoch", "2",
                       "--batch-size", "4", "-device", "cpu"])
    return os.path.join(jcl_folder(synthetic_env), "checkpoint_final.pth")


@pytest.mark.integration
def test_pretrain_records_encoder_and_k_decoder_blocks(synthetic_env, jcl_checkpoint):
    checkpoint = torch.load(jcl_checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint["method"] == "jcl" and tuple(checkpoint["pretrained_prefixes"]) == DEFAULT_PREFIXES
    log = open(os.path.join(jcl_folder(synthetic_env), "pretrain_log.txt")).read()
    assert " global " in log and " dense " in log and " er " in log


@pytest.mark.integration
@pytest.mark.parametrize("parts", ["all", None])
def test_init_trainer_loads_exactly_the_pretrained_prefixes_or_by_default_the_encoder(synthetic_context, jcl_checkpoint,
                                                                                      tmp_path, monkeypatch, parts):
    from nnunet_cl.checkpoint import save_checkpoint
    from nnunet_cl.trainers import nnUNetTrainerJCLInit

    # Shift every tensor of the checkpoint: no fresh initialisation can coincide with it by chance.
    checkpoint = torch.load(jcl_checkpoint, map_location="cpu", weights_only=False)
    checkpoint["network_weights"] = {k: v + 1.5 for k, v in checkpoint["network_weights"].items()}
    shifted = str(tmp_path / "shifted.pth")
    save_checkpoint(checkpoint, shifted)
    monkeypatch.setenv("nnUNet_cl_pretrained_checkpoint", shifted)
    if parts is None:
        monkeypatch.delenv("nnUNet_cl_pretrained_parts", raising=False)
    else:
        monkeypatch.setenv("nnUNet_cl_pretrained_parts", parts)

    plans = dict(copy.deepcopy(synthetic_context.plans), continue_training=False)  # as run_training passes them
    trainer = nnUNetTrainerJCLInit(plans, "2d", 1, synthetic_context.dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    loaded = trainer.network.state_dict()
    source = checkpoint["network_weights"]
    prefixes = DEFAULT_PREFIXES if parts == "all" else ("encoder.",)
    pretrained = [k for k in loaded if k.startswith(prefixes) or k.startswith("decoder.encoder.")]
    fresh = [k for k in loaded if k not in pretrained]
    assert any(k.startswith("decoder.stages.2.") for k in fresh) and any(".seg_layers." in k for k in fresh)
    assert any(k.startswith("decoder.stages.0.") for k in (pretrained if parts == "all" else fresh))
    for key in pretrained:            # decoder.encoder.* are aliases of encoder.* (same tensors)
        assert torch.equal(loaded[key], source[key]), key
    for key in fresh:
        assert not torch.equal(loaded[key], source[key]), key


@pytest.mark.integration
def test_finetune_with_jcl_init_10pct(synthetic_env, jcl_checkpoint):
    trainer = "nnUNetTrainerJCLInit_10pct"
    synthetic_env.run(["nnUNetv2_train", "990", "2d", "0", "-tr", trainer, "-device", "cpu"],
                      **synthetic_env.ext_trainer())
    folder = synthetic_env.fold_folder(trainer)
    log = training_log(folder)
    # by default only the encoder; the decoder blocks the method trained are named as not loaded
    assert "nnunet_cl: loaded" in log and "under ['encoder.']" in log and "(method jcl)" in log
    assert "nnUNet_cl_pretrained_parts=encoder, not loaded: [" in log and "'decoder.stages.1.'" in log
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))


@pytest.mark.integration
def test_invalid_crop_is_one_line_error_from_the_cli(synthetic_env):
    proc = synthetic_env.run(["nnunet_cl", "pretrain", "-d", "990", "-m", "jcl", "-o", "crop=48x40", "--epochs", "1",
                              "--iters-per-epoch", "1", "--batch-size", "4", "-device", "cpu"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "nnunet_cl: error: JCL crop 48x40 does not work with k=2" in proc.stderr
    assert "smallest valid crop is" in proc.stderr
