"""The shared kernel against a naive double loop and a hand-computed case."""

import math

import pytest
import torch

from nnunet_cl.losses import MultiPositiveInfoNCE, multi_positive_info_nce


def naive_info_nce(anchors, positive_mask, temperature, contrast=None, denominator_mask=None, anchor_weights=None):
    """Literal SupCon L_out: loops over anchors, positives and denominator terms."""
    self_contrast = contrast is None
    contrast = anchors if self_contrast else contrast
    n, k = anchors.shape[0], contrast.shape[0]
    total, weight_sum = 0.0, 0.0
    for i in range(n):
        a = anchors[i] / anchors[i].norm()
        positives = [j for j in range(k) if positive_mask[i][j] and not (self_contrast and i == j)]
        if not positives:
            continue
        denominator_terms = [j for j in range(k) if not (self_contrast and i == j)
                             and (denominator_mask is None or denominator_mask[i][j])]
        denominator = sum(math.exp(float(a @ (contrast[j] / contrast[j].norm())) / temperature)
                          for j in denominator_terms)
        loss_i = 0.0
        for p in positives:
            s_ip = float(a @ (contrast[p] / contrast[p].norm())) / temperature
            loss_i += -(s_ip - math.log(denominator))
        loss_i /= len(positives)
        w = 1.0 if anchor_weights is None else float(anchor_weights[i])
        total += w * loss_i
        weight_sum += w
    return total / weight_sum if weight_sum else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference_random(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(12, 12, generator=g) < 0.3
    weights = torch.rand(12, generator=g, dtype=torch.float64)
    got = multi_positive_info_nce(x, mask, temperature=0.2, anchor_weights=weights)
    assert got.item() == pytest.approx(naive_info_nce(x, mask, 0.2, anchor_weights=weights), rel=1e-9)


def test_matches_naive_reference_with_contrast_set_and_denominator_mask():
    g = torch.Generator().manual_seed(3)
    anchors = torch.randn(7, 4, generator=g, dtype=torch.float64)
    contrast = torch.randn(3, 4, generator=g, dtype=torch.float64)
    positive = torch.zeros(7, 3, dtype=torch.bool)
    positive[torch.arange(7), torch.arange(7) % 3] = True
    denominator = torch.rand(7, 3, generator=g) < 0.7
    denominator |= positive
    got = multi_positive_info_nce(anchors, positive, temperature=0.1, contrast=contrast, denominator_mask=denominator)
    want = naive_info_nce(anchors, positive, 0.1, contrast=contrast, denominator_mask=denominator)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_hand_computed_three_samples():
    # z0 = z1 = (1, 0), z2 = (0, 1), tau = 1, positives 0<->1. Anchor 0: s01 = 1, s02 = 0,
    # L0 = -(1 - log(e^1 + e^0)) = log(1 + e) - 1; the same for anchor 1; anchor 2 has no positive.
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # norms differ: the kernel normalises
    mask = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    got = multi_positive_info_nce(z, mask, temperature=1.0)
    assert got.item() == pytest.approx(math.log(1 + math.e) - 1, abs=1e-6)
    # tau_base reproduces the reference code's scale factor tau / tau_base.
    scaled = multi_positive_info_nce(z, mask, temperature=1.0, tau_base=0.5)
    assert scaled.item() == pytest.approx(2 * (math.log(1 + math.e) - 1), abs=1e-6)


def test_self_pair_is_never_a_positive_nor_in_the_denominator():
    z = torch.randn(4, 3, dtype=torch.float64)
    full = torch.ones(4, 4, dtype=torch.bool)              # diagonal set on purpose
    off_diagonal = full & ~torch.eye(4, dtype=torch.bool)
    assert multi_positive_info_nce(z, full).item() == pytest.approx(multi_positive_info_nce(z, off_diagonal).item())


def test_no_positive_anywhere_gives_zero_with_gradient():
    z = torch.randn(5, 3, requires_grad=True)
    loss = multi_positive_info_nce(z, torch.zeros(5, 5, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.all(z.grad == 0)


def test_anchors_without_positives_do_not_dilute_the_mean():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    per_anchor = multi_positive_info_nce(z, mask, reduction="none")
    assert torch.all(per_anchor[2:] == 0)
    assert multi_positive_info_nce(z, mask).item() == pytest.approx(per_anchor[:2].mean().item())


def test_batched_blocks_equal_separate_calls():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 8, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (3, 8), generator=g)
    mask = labels[:, :, None] == labels[:, None, :]
    batched = multi_positive_info_nce(z, mask)
    per_block = [multi_positive_info_nce(z[b], mask[b], reduction="none") for b in range(3)]
    has_pos = [(mask[b] & ~torch.eye(8, dtype=torch.bool)).any(1) for b in range(3)]
    expected = torch.cat(per_block).sum() / torch.cat(has_pos).sum()
    assert batched.item() == pytest.approx(expected.item())


def test_stable_for_large_logits():
    z = torch.randn(16, 8) * 1e4
    mask = torch.rand(16, 16) < 0.5
    loss = multi_positive_info_nce(z, mask, temperature=0.001)
    assert torch.isfinite(loss)


def test_module_wrapper_and_gradient_direction():
    z = torch.tensor([[1.0, 0.2], [0.2, 1.0], [1.0, -0.2]], requires_grad=True)
    mask = torch.tensor([[0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    loss = MultiPositiveInfoNCE(temperature=0.5)(z, mask)
    loss.backward()
    # One SGD step must pull the positive pair together (higher cosine).
    with torch.no_grad():
        before = torch.cosine_similarity(z[0], z[2], dim=0)
        stepped = z - 0.1 * z.grad
        after = torch.cosine_similarity(stepped[0], stepped[2], dim=0)
    assert after > before


# ----------------------------------------------------------------------------- equal-label positives
def label_masks(labels):
    """The mask form of ``positive_labels``: same label positive, negative labels ignored entirely."""
    valid = labels >= 0
    pair_valid = valid[..., :, None] & valid[..., None, :]
    return (labels[..., :, None] == labels[..., None, :]) & pair_valid, pair_valid


@pytest.fixture(params=["single-block path", "batched path"])
def pairwise_path(request, monkeypatch):
    """PairwiseLogSumExp compacts one large block at a time, or batches small blocks with masking; the
    buffer size decides which, so both are forced here on small inputs."""
    from nnunet_cl.losses.pairwise_logsumexp import PairwiseLogSumExp
    monkeypatch.setattr(PairwiseLogSumExp, "BUFFER_ELEMENTS", 1 if request.param == "single-block path" else 1 << 20)
    return request.param


def test_equal_labels_match_naive_double_loop(pairwise_path):
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 9, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (3, 9), generator=g)
    labels[0, :3] = -1                      # ignored rows: neither anchors nor candidates
    labels[1, 4] = 9                        # a singleton: no positive, but a candidate of the others
    labels[2, :8] = -1                      # one valid row left: no candidate at all (finite, unused)
    weights = torch.rand(3, 9, generator=g, dtype=torch.float64)
    got = multi_positive_info_nce(z, positive_labels=labels, temperature=0.3, anchor_weights=weights)
    total, weight_sum = 0.0, 0.0
    for b in range(3):
        mask, pair_valid = label_masks(labels[b])
        per_block_weights = weights[b] * (labels[b] >= 0)
        # naive_info_nce returns the weighted mean of a block; recover the weighted sum.
        has_pos = [(mask[i] & (torch.arange(9) != i)).any() and per_block_weights[i] > 0 for i in range(9)]
        block_weight = float(sum(per_block_weights[i] for i in range(9) if has_pos[i]))
        if block_weight:
            mean = naive_info_nce(z[b], mask, 0.3, denominator_mask=pair_valid, anchor_weights=per_block_weights)
            total += mean * block_weight
            weight_sum += block_weight
    assert got.item() == pytest.approx(total / weight_sum, rel=1e-9)


def test_equal_labels_equal_the_mask_form_in_value_and_gradient(pairwise_path):
    g = torch.Generator().manual_seed(8)
    z = torch.randn(4, 12, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 4, (4, 12), generator=g)
    mask, pair_valid = label_masks(labels)
    z_labels, z_mask = z.clone().requires_grad_(), z.clone().requires_grad_()
    by_labels = multi_positive_info_nce(z_labels, positive_labels=labels, temperature=0.2, tau_base=0.07)
    by_mask = multi_positive_info_nce(z_mask, mask, temperature=0.2, denominator_mask=pair_valid,
                                      anchor_weights=(labels >= 0).double(), tau_base=0.07)
    assert by_labels.item() == pytest.approx(by_mask.item(), rel=1e-10)
    by_labels.backward()
    by_mask.backward()
    torch.testing.assert_close(z_labels.grad, z_mask.grad, rtol=1e-9, atol=1e-12)
    per_anchor = multi_positive_info_nce(z, positive_labels=labels, temperature=0.2, reduction="none")
    torch.testing.assert_close(per_anchor, multi_positive_info_nce(z, mask, temperature=0.2, denominator_mask=pair_valid,
                                                                   anchor_weights=(labels >= 0).double(),
                                                                   reduction="none"))


def test_pairwise_logsumexp_gradcheck(pairwise_path):
    from nnunet_cl.losses.pairwise_logsumexp import PairwiseLogSumExp
    g = torch.Generator().manual_seed(9)
    z = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    assert torch.autograd.gradcheck(lambda x: PairwiseLogSumExp.apply(x, valid, 0.5), (z,))


def test_equal_labels_hand_computed():
    # The three-sample case above as labels: rows 0 and 1 share label 0, row 2 is alone (label 1).
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    got = multi_positive_info_nce(z, positive_labels=torch.tensor([0, 0, 1]), temperature=1.0)
    assert got.item() == pytest.approx(math.log(1 + math.e) - 1, abs=1e-6)
    # An ignored third row leaves each anchor only its positive: -(1 - log e^1) = 0.
    alone = multi_positive_info_nce(z, positive_labels=torch.tensor([0, 0, -1]), temperature=1.0)
    assert alone.item() == pytest.approx(0.0, abs=1e-6)


def test_equal_labels_without_any_positive_give_zero_with_gradient():
    z = torch.randn(2, 4, 3, requires_grad=True)
    loss = multi_positive_info_nce(z, positive_labels=torch.arange(8).reshape(2, 4), temperature=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(z.grad == 0)


def test_equal_labels_reject_a_mask_too_or_a_contrast_set():
    z = torch.randn(4, 3)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        multi_positive_info_nce(z, torch.ones(4, 4, dtype=torch.bool), positive_labels=labels)
    with pytest.raises(ValueError, match="contrast"):
        multi_positive_info_nce(z, positive_labels=labels, contrast=z)
