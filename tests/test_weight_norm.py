"""The function-preserving weight-norm reset (nnUNet_cl_weight_norm_reset): output unchanged, norms equal the
reference, refusal of a convolution whose output is not normalised."""

from __future__ import annotations

import pytest
import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.trainers.weight_norm import conv_weight_norms, convolutions, rescale_to_norms
from tests.test_checkpoint import small_unet


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    yield


def grown(network: torch.nn.Module, prefix: str, seed: int = 1) -> None:
    """Scale every conv weight under ``prefix`` by its own factor in [0.5, 3): a pre-training that changed
    the norms (and, through a shift, the weights themselves)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, conv in convolutions(network).items():
            if name.startswith(prefix):
                conv.weight.add_(0.01 * torch.randn(conv.weight.shape, generator=generator))
                conv.weight.mul_(0.5 + 2.5 * float(torch.rand(1, generator=generator)))


def encoder_keys(network) -> list:
    return [k for k in network.state_dict() if k.startswith("encoder.")]


def test_rescale_keeps_the_output_and_sets_the_init_norms():
    torch.manual_seed(0)
    network = small_unet().eval()
    initial = conv_weight_norms(network)
    grown(network, "encoder.")
    before_reset = conv_weight_norms(network)
    assert all(abs(before_reset[n] / initial[n] - 1) > 0.05 for n in initial if n.startswith("encoder."))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = network(x)
    ratios = rescale_to_norms(network, encoder_keys(network), initial)
    with torch.no_grad():
        output = network(x)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4)
    after = conv_weight_norms(network)
    encoder_convs = [n for n in initial if n.startswith("encoder.")]
    assert sorted(ratios) == sorted(encoder_convs)
    for name in encoder_convs:
        assert after[name] == pytest.approx(initial[name], rel=1e-6), name
        assert ratios[name] == pytest.approx(before_reset[name] / initial[name], rel=1e-6), name
    for name in initial:              # layers not among the keys are left alone
        if not name.startswith("encoder."):
            assert after[name] == before_reset[name], name


def test_rescale_refuses_a_transposed_convolution_and_changes_nothing():
    torch.manual_seed(0)
    network = small_unet()
    initial = conv_weight_norms(network)
    grown(network, "")
    state = {k: v.clone() for k, v in network.state_dict().items()}
    keys = encoder_keys(network) + [k for k in state if k.startswith("decoder.transpconvs.0.")]
    with pytest.raises(NnunetClError) as error:
        rescale_to_norms(network, keys, initial)
    message = str(error.value)
    assert "decoder.transpconvs.0" in message and "ConvTranspose2d" in message and "\n" not in message
    assert "nnUNet_cl_pretrained_parts=encoder" in message
    for key, value in network.state_dict().items():   # checked before anything was scaled
        assert torch.equal(value, state[key]), key


def test_rescale_refuses_the_segmentation_layer():
    torch.manual_seed(0)
    network = small_unet()
    keys = [k for k in network.state_dict() if k.startswith("decoder.seg_layers.")]
    with pytest.raises(NnunetClError, match="decoder.seg_layers.0"):
        rescale_to_norms(network, keys, conv_weight_norms(network))


def test_rescale_refuses_a_convolution_followed_by_batch_norm():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    network = PlainConvUNet(1, 2, [4, 8], torch.nn.Conv2d, 3, [1, 2], [1, 1], 2, [1], conv_bias=True,
                            norm_op=torch.nn.BatchNorm2d, nonlin=torch.nn.LeakyReLU)
    with pytest.raises(NnunetClError, match="BatchNorm2d"):
        rescale_to_norms(network, encoder_keys(network), conv_weight_norms(network))
