"""Projection heads: the instance head's batch standardisation and why it is there."""

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_cl.heads import GlobalBatchStandardization, InstanceProjectionHead
from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.masks import same_sample_positive_mask


def naive_standardization(x, weight, bias, eps):
    """Feature by feature, row by row: (x - mean) / sqrt(biased var + eps) * weight + bias."""
    rows, features = x.shape
    out = torch.empty_like(x)
    for j in range(features):
        mean = sum(float(x[i, j]) for i in range(rows)) / rows
        var = sum((float(x[i, j]) - mean) ** 2 for i in range(rows)) / rows
        for i in range(rows):
            out[i, j] = (float(x[i, j]) - mean) / math.sqrt(var + eps) * float(weight[j]) + float(bias[j])
    return out


def test_standardization_matches_naive_loop_and_torch_batch_norm():
    torch.manual_seed(0)
    layer = GlobalBatchStandardization(5).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.uniform_(-1.0, 1.0)
    x = torch.randn(7, 5, dtype=torch.float64) * 3 + 10
    expected = naive_standardization(x, layer.weight.detach(), layer.bias.detach(), layer.eps)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    reference = F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)
    torch.testing.assert_close(layer(x), reference, rtol=1e-10, atol=1e-10)


def test_standardization_hand_computed():
    # One feature, rows 1 and 3: mean 2, biased variance 1 -> -1 and +1 (eps 0).
    layer = GlobalBatchStandardization(1, eps=0.0)
    assert layer(torch.tensor([[1.0], [3.0]])).flatten().tolist() == [-1.0, 1.0]


def test_standardization_uses_batch_statistics_in_eval_mode_too():
    layer = GlobalBatchStandardization(3)
    x = torch.randn(6, 3) + 4
    train_out = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), train_out)


def test_standardization_refuses_a_single_row():
    with pytest.raises(ValueError, match="at least 2 rows"):
        GlobalBatchStandardization(3)(torch.randn(1, 3))


def test_gradient_matches_torch_batch_norm():
    torch.manual_seed(1)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    layer = GlobalBatchStandardization(4).double()
    (layer(x) ** 3).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps) ** 3).sum().backward()
    torch.testing.assert_close(ours, x.grad)


def test_instance_head_ignores_what_every_slice_shares():
    """A vector added to every slice's feature map (what InstanceNorm'd stages share) does not change
    the projections: the head sees only what distinguishes the slices."""
    torch.manual_seed(2)
    head = InstanceProjectionHead(8, 16, 4).double()
    maps = torch.randn(6, 8, 3, 2, dtype=torch.float64)
    shared = torch.randn(1, 8, 1, 1, dtype=torch.float64) * 50
    torch.testing.assert_close(head(maps + shared), head(maps), rtol=1e-7, atol=1e-7)


def test_instance_loss_leaves_chance_level_when_slices_differ_only_slightly():
    """Pooled features = a large common part + small per-slice differences (as measured on the
    bottleneck of nnU-Net's InstanceNorm U-Net): the InfoNCE of two noisy views is at chance,
    ln(2N - 1), for a head without standardisation, and far below it with it."""
    torch.manual_seed(3)
    n, channels = 16, 32
    common = torch.randn(1, channels, 1, 1) * 10
    per_slice = torch.randn(n, channels, 1, 1) * 0.3
    views = torch.cat([common + per_slice + 0.01 * torch.randn(n, channels, 1, 1),
                       common + per_slice + 0.01 * torch.randn(n, channels, 1, 1)])
    mask = same_sample_positive_mask(n, n_views=2)
    chance = math.log(2 * n - 1)

    head = InstanceProjectionHead(channels, 64, 16)
    with torch.no_grad():
        with_standardization = float(multi_positive_info_nce(head(views), mask, temperature=0.1))
        plain = torch.nn.Sequential(head.mlp[0], head.mlp[2], head.mlp[3])   # the same head without it
        without = float(multi_positive_info_nce(plain(views.mean(dim=(2, 3))), mask, temperature=0.1))
    assert abs(without - chance) < 0.05
    assert with_standardization < chance - 1.0
