"""Losses of the label-aware methods: Hu et al.'s supervised local contrast (stride, block) and
Chaitanya et al.'s pixel-to-class-mean contrast (intra, inter), each against a naive double-loop
reference and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_cl.losses.class_mean_contrast import (class_mean_contrast, class_means, random_pairs,
                                                  sample_class_pixels)
from nnunet_cl.losses.supervised_local import supervised_local_contrast, to_blocks


# ----------------------------------------------------------------------------- naive references
def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _naive_supcon_anchor(z, labels, i, temperature, usable):
    """-1/|P| sum_p [s_ip - log sum_{a != i} e^{s_ia}] over the candidates in ``usable`` (None: no positive)."""
    positives = [p for p in usable if p != i and labels[p] == labels[i]]
    if not positives:
        return None
    denominator = sum(math.exp(_cos(z[i], z[a]) / temperature) for a in usable if a != i)
    return -sum(_cos(z[i], z[p]) / temperature - math.log(denominator) for p in positives) / len(positives)


def _pixels(features, labels, ys, xs):
    """Explicit list of (vector, label) for every row and the given pixel coordinates."""
    z, lab = [], []
    for r in range(features.shape[0]):
        for y in ys:
            for x in xs:
                z.append(features[r, :, y, x].double())
                lab.append(int(labels[r, y, x]))
    return z, lab


def naive_stride(features, labels, stride, temperature):
    z, lab = _pixels(features, labels, range(0, features.shape[2], stride), range(0, features.shape[3], stride))
    usable = range(len(z))
    losses = [_naive_supcon_anchor(z, lab, i, temperature, usable) for i in usable if lab[i] > 0]
    losses = [l for l in losses if l is not None]
    return sum(losses) / len(losses) if losses else 0.0


def naive_block(features, labels, block, temperature):
    height, width = features.shape[2:]
    tile_means = []
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            z, lab = _pixels(features, labels, range(y0, min(y0 + block, height)), range(x0, min(x0 + block, width)))
            usable = range(len(z))
            losses = [_naive_supcon_anchor(z, lab, i, temperature, usable) for i in usable if lab[i] > 0]
            losses = [l for l in losses if l is not None]
            if losses:
                tile_means.append(sum(losses) / len(losses))
    return sum(tile_means) / len(tile_means) if tile_means else 0.0


def naive_class_mean(embeddings, labels, num_classes, indices, present, mode, temperature, pairs=None):
    batch, _, height, width = embeddings.shape
    means = {}
    for b in range(batch):
        for c in range(1, num_classes + 1):
            members = [embeddings[b, :, y, x].double() for y in range(height) for x in range(width)
                       if labels[b, y, x] == c]
            if members:
                means[b, c] = sum(members) / len(members)
    groups = [[b] for b in range(batch)] if mode == "intra" else [list(map(int, p)) for p in pairs]
    losses = []
    for group in groups:
        contrast = [(means[b, c], c) for b in group for c in range(1, num_classes + 1) if (b, c) in means]
        for b in group:
            for c in range(1, num_classes + 1):
                if not bool(present[b, c - 1]):
                    continue
                for flat in indices[b, c - 1].tolist():
                    anchor = embeddings[b, :, flat // width, flat % width].double()
                    positives = [m for m, k in contrast if k == c]
                    denominator = sum(math.exp(_cos(anchor, m) / temperature) for m, _ in contrast)
                    losses.append(-sum(_cos(anchor, m) / temperature - math.log(denominator) for m in positives)
                                  / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


def _random_case(seed, rows=4, dim=5, height=7, width=9, classes=2):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, dim, height, width, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes + 1, (rows, height, width), generator=g)
    return features, labels


# ----------------------------------------------------------------------------- Hu et al.
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_stride_matches_naive_loops(seed, stride):
    features, labels = _random_case(seed)
    loss = supervised_local_contrast(features, labels, "stride", stride=stride, temperature=0.2)
    assert float(loss) == pytest.approx(naive_stride(features, labels, stride, 0.2), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("block", [2, 4, 16])
def test_block_matches_naive_loops_with_ragged_tiles(seed, block):
    features, labels = _random_case(seed)  # 7 x 9: not a multiple of the block size, not square
    loss = supervised_local_contrast(features, labels, "block", block_size=block, temperature=0.2)
    assert float(loss) == pytest.approx(naive_block(features, labels, block, 0.2), rel=1e-9)


def test_block_skips_background_tiles_and_weights_tiles_equally():
    features, labels = _random_case(3, rows=2, height=8, width=8)
    labels[:, :, 4:] = 0          # right half background: its tiles are skipped
    labels[:, :4, :4] = 1         # top-left tile: many anchors
    labels[:, 4:, :4] = 0
    labels[:, 4, 0] = 2           # bottom-left tile: one pixel per row, class 2 (2 anchors)
    loss = supervised_local_contrast(features, labels, "block", block_size=4, temperature=0.5)
    per_tile = [naive_block(features[:, :, y:y + 4, x:x + 4], labels[:, y:y + 4, x:x + 4], 4, 0.5)
                for y, x in ((0, 0), (4, 0))]
    assert float(loss) == pytest.approx(sum(per_tile) / 2, rel=1e-9)


def test_hu_hand_computed_case():
    # one row, 1 x 4 pixels: (1,0) (0.6,0.8) (0,1) (-1,0) labelled 1 1 2 0, tau = 0.5
    features = torch.tensor([[1.0, 0.6, 0.0, -1.0], [0.0, 0.8, 1.0, 0.0]]).reshape(1, 2, 1, 4)
    labels = torch.tensor([[[1, 1, 2, 0]]])
    # pixel 0: positive pixel 1 (cos .6); denominator pixels 1, 2, 3 (cos .6, 0, -1)
    l0 = -(1.2 - math.log(math.exp(1.2) + math.exp(0.0) + math.exp(-2.0)))
    # pixel 1: positive pixel 0 (cos .6); denominator pixels 0, 2, 3 (cos .6, .8, -.6)
    l1 = -(1.2 - math.log(math.exp(1.2) + math.exp(1.6) + math.exp(-1.2)))
    # pixel 2 (class 2) has no positive, pixel 3 is background: neither is an anchor
    expected = (l0 + l1) / 2
    for strategy in ("stride", "block"):
        loss = supervised_local_contrast(features, labels, strategy, stride=1, block_size=4, temperature=0.5)
        assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("strategy", ["stride", "block"])
def test_background_only_batch_is_zero_and_differentiable(strategy):
    features = torch.randn(4, 3, 8, 8, requires_grad=True)
    loss = supervised_local_contrast(features, torch.zeros(4, 8, 8, dtype=torch.long), strategy, stride=2,
                                     block_size=4)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert features.grad is not None and float(features.grad.abs().sum()) == 0.0


def test_background_is_negative_not_anchor():
    # moving a background pixel towards the anchors' class changes the loss (it is a negative) ...
    features, labels = _random_case(5, rows=2, height=4, width=4)
    labels[:] = 1
    labels[:, 0, 0] = 0
    base = supervised_local_contrast(features, labels, "stride", stride=1)
    moved = features.clone()
    moved[:, :, 0, 0] = features[:, :, 1, 1]
    assert float(supervised_local_contrast(moved, labels, "stride", stride=1)) > float(base)
    # ... but a background-only change of an anchor-free batch leaves it at zero (never an anchor)
    assert float(supervised_local_contrast(features, torch.zeros_like(labels), "stride", stride=1)) == 0.0


def test_to_blocks_gathers_tile_of_every_row():
    maps = torch.arange(2 * 4 * 6).reshape(2, 4, 6)
    tiles = to_blocks(maps, 2, fill=-1)
    assert tiles.shape == (6, 8)
    assert tiles[1].tolist() == [2, 3, 8, 9, 26, 27, 32, 33]   # tile (0, 1) of row 0, then of row 1


def test_bad_strategy_is_a_clear_error():
    from nnunet_cl.errors import NnunetClError
    with pytest.raises(NnunetClError, match="strategy"):
        supervised_local_contrast(torch.randn(2, 3, 4, 4), torch.ones(2, 4, 4, dtype=torch.long), "tiles")


# ----------------------------------------------------------------------------- Chaitanya et al.
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["intra", "inter"])
def test_class_mean_matches_naive_loops(seed, mode):
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(5, 4, 6, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (5, 6, 7), generator=g)
    labels[1] = 0                   # an image with only background
    labels[2][labels[2] == 3] = 1   # an image without class 3
    sampled = sample_class_pixels(labels, 3, 4, generator=g)
    pairs = random_pairs(5, generator=g)
    loss = class_mean_contrast(embeddings, labels, 3, mode, temperature=0.3, sampled=sampled, pairs=pairs)
    expected = naive_class_mean(embeddings, labels, 3, *sampled, mode, 0.3, pairs)
    assert float(loss) == pytest.approx(expected, rel=1e-9)


def test_sampling_draws_only_pixels_of_the_class():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4, 5, 6), generator=g)
    labels[3][labels[3] == 2] = 0
    indices, present = sample_class_pixels(labels, 2, 7, generator=g)
    assert indices.shape == (4, 2, 7)
    assert present[3].tolist() == [True, False]
    flat = labels.reshape(4, -1)
    for b in range(4):
        for c in range(2):
            if present[b, c]:
                assert (flat[b, indices[b, c]] == c + 1).all()


def test_class_means_hand_computed():
    embeddings = torch.tensor([[1.0, 3.0, 5.0, 7.0], [0.0, 2.0, 0.0, 2.0]]).reshape(1, 2, 1, 4)
    labels = torch.tensor([[[1, 1, 0, 2]]])
    means, present = class_means(embeddings, labels, 3)
    assert means[0, 0].tolist() == [2.0, 1.0] and means[0, 1].tolist() == [7.0, 2.0]
    assert present.tolist() == [[True, True, False]]


def test_class_mean_intra_hand_computed():
    # class-1 pixels all (1,0), class-2 pixels (0,1), background far away: every anchor has
    # s(mu_own) = 1/tau and s(mu_other) = 0  ->  log(1 + e^{-1/tau})
    embeddings = torch.tensor([[1.0, 1.0, 0.0, 5.0], [0.0, 0.0, 1.0, 5.0]], dtype=torch.float64).reshape(1, 2, 1, 4)
    labels = torch.tensor([[[1, 1, 2, 0]]])
    loss = class_mean_contrast(embeddings, labels, 2, "intra", pixels_per_class=3, temperature=0.1,
                               generator=torch.Generator().manual_seed(0))
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-10.0)), rel=1e-6)


def test_class_mean_inter_hand_computed_with_absent_class():
    # image A: class 1 only, pixels (1,0); image B: class 1 pixel (.6,.8), class 2 pixel (0,1); tau = .5
    embeddings = torch.tensor([[[[1.0, 1.0, 9.0]], [[0.0, 0.0, 9.0]]],
                               [[[0.6, 0.0, 9.0]], [[0.8, 1.0, 9.0]]]])
    labels = torch.tensor([[[1, 1, 0]], [[1, 2, 0]]])
    d_a = math.exp(2.0) + math.exp(1.2) + math.exp(0.0)          # contrast mu1A, mu1B, mu2B (mu2A absent)
    l_a = -((2.0 - math.log(d_a)) + (1.2 - math.log(d_a))) / 2   # positives mu1A (cos 1), mu1B (cos .6)
    d_b1 = math.exp(1.2) + math.exp(2.0) + math.exp(1.6)
    l_b1 = -((1.2 - math.log(d_b1)) + (2.0 - math.log(d_b1))) / 2
    d_b2 = math.exp(0.0) + math.exp(1.6) + math.exp(2.0)
    l_b2 = -(2.0 - math.log(d_b2))                              # only positive mu2B: class 2 absent in A
    loss = class_mean_contrast(embeddings, labels, 2, "inter", pixels_per_class=2, temperature=0.5,
                               generator=torch.Generator().manual_seed(0), pairs=torch.tensor([[0, 1]]))
    assert float(loss) == pytest.approx((l_a + l_b1 + l_b2) / 3, rel=1e-6)
    # intra on image A alone: its only class is its only mean -> -log 1 = 0
    intra_a = class_mean_contrast(embeddings[:1], labels[:1], 2, "intra", temperature=0.5)
    assert float(intra_a) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("mode", ["intra", "inter"])
def test_background_only_images_contribute_nothing(mode):
    g = torch.Generator().manual_seed(1)
    embeddings = torch.randn(2, 4, 5, 5, generator=g, requires_grad=True)
    zero = class_mean_contrast(embeddings, torch.zeros(2, 5, 5, dtype=torch.long), 2, mode, generator=g)
    assert float(zero.detach()) == 0.0
    zero.backward()
    assert float(embeddings.grad.abs().sum()) == 0.0
    # an only-background image next to a labelled one: intra loss = the labelled image's loss alone
    labels = torch.randint(0, 3, (1, 5, 5), generator=g)
    sampled = sample_class_pixels(labels, 2, 3, generator=torch.Generator().manual_seed(4))
    alone = class_mean_contrast(embeddings[:1].detach(), labels, 2, "intra", sampled=sampled)
    both_labels = torch.cat([labels, torch.zeros_like(labels)])
    both_sampled = (torch.cat([sampled[0], sampled[0]]), torch.cat([sampled[1], torch.zeros_like(sampled[1])]))
    with_bg = class_mean_contrast(embeddings.detach(), both_labels, 2, "intra", sampled=both_sampled)
    assert float(with_bg) == pytest.approx(float(alone), rel=1e-6)


def test_gradients_flow_into_anchors_and_means():
    g = torch.Generator().manual_seed(2)
    embeddings = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    labels = torch.tensor([[1, 1, 2, 2]] * 4).expand(2, 4, 4).clone()
    class_mean_contrast(embeddings, labels, 2, "inter", generator=g).backward()
    assert float(embeddings.grad.abs().sum()) > 0


def test_random_pairs_is_a_matching():
    pairs = random_pairs(6, generator=torch.Generator().manual_seed(0))
    assert sorted(pairs.flatten().tolist()) == list(range(6))
    odd = random_pairs(5, generator=torch.Generator().manual_seed(0))
    assert odd.shape == (3, 2) and set(odd.flatten().tolist()) == set(range(5))
