"""SuperCL's loss pieces against slow, obviously-correct references and hand-computed cases:
ILCP (vs. a per-pixel double loop), ASP (hand-made 4 x 4 map), CCL (known graphs), IGCP view pairing."""

import math

import numpy as np
import pytest
import torch

from nnunet_cl.losses.asp import average_superpixel_map
from nnunet_cl.losses.ccl import connected_component_labels, igcp_positive_mask
from nnunet_cl.losses.ilcp import ilcp_loss


# ----------------------------------------------------------------------------- ILCP
def naive_ilcp(view1, view2, superpixels, temperature, stride=1):
    """Per image, per anchor pixel, per positive: explicit loops (SupCon L_out)."""
    total, count = 0.0, 0
    for b in range(view1.shape[0]):
        kept = list(range(0, superpixels[b].numel(), stride))
        feats = [view1[b].flatten(1)[:, i] for i in kept] + [view2[b].flatten(1)[:, i] for i in kept]
        labels = [int(superpixels[b].flatten()[i]) for i in kept] * 2
        valid = [k for k in range(len(labels)) if labels[k] > 0]
        if len({labels[k] for k in valid}) < 2:
            continue                     # one superpixel: no negatives, image skipped
        for i in valid:
            def sim(j):
                return float(torch.dot(feats[i], feats[j]) / (feats[i].norm() * feats[j].norm())) / temperature
            denominator = sum(math.exp(sim(a)) for a in valid if a != i)
            positives = [p for p in valid if p != i and labels[p] == labels[i]]
            if not positives:
                continue
            total += -sum(sim(p) - math.log(denominator) for p in positives) / len(positives)
            count += 1
    return total / count if count else 0.0


@pytest.mark.parametrize("stride", [1, 3])
def test_ilcp_matches_naive_double_loop(stride):
    torch.manual_seed(0)
    B, C, h, w = 3, 5, 4, 5
    view1, view2 = torch.randn(B, C, h, w, dtype=torch.float64), torch.randn(B, C, h, w, dtype=torch.float64)
    superpixels = torch.randint(1, 4, (B, h, w))
    superpixels[0, 0, :] = 0             # padding row: ignored
    superpixels[1, 0, 0] = 7             # a singleton superpixel (its own positive only in the other view)
    superpixels[2] = 5                   # one superpixel: skipped
    loss, used = ilcp_loss(view1, view2, superpixels, temperature=0.2, stride=stride)
    assert used == 2
    assert float(loss) == pytest.approx(naive_ilcp(view1, view2, superpixels, 0.2, stride), rel=1e-9)


def test_ilcp_hand_computed_two_pixels():
    # One image, two pixels (superpixels 1 and 2) at 60 degrees, identical in both views, tau = 1.
    # Each anchor: positive s = 1 (its copy in the other view), denominator e^1 + 2 e^0.5
    # -> loss = log(e + 2 sqrt(e)) - 1 for every anchor.
    a, b = [1.0, 0.0], [0.5, math.sqrt(3) / 2]
    view = torch.tensor([a, b]).T.reshape(1, 2, 1, 2)
    superpixels = torch.tensor([[[1, 2]]])
    loss, used = ilcp_loss(view, view.clone(), superpixels, temperature=1.0)
    assert used == 1
    assert float(loss) == pytest.approx(math.log(math.e + 2 * math.sqrt(math.e)) - 1, rel=1e-6)


def test_ilcp_constant_slice_is_skipped_without_nan():
    view1 = torch.randn(2, 4, 3, 3, requires_grad=True)
    superpixels = torch.ones(2, 3, 3, dtype=torch.long)     # constant slices: one superpixel each
    loss, used = ilcp_loss(view1, view1 * 2, superpixels)
    assert used == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(view1.grad).all() and float(view1.grad.abs().sum()) == 0.0


def test_ilcp_gradient_is_finite_with_padding():
    view = torch.randn(2, 8, 4, 4, requires_grad=True)
    superpixels = torch.randint(0, 3, (2, 4, 4))
    superpixels[:, 0, 0], superpixels[:, 0, 1] = 1, 2
    loss, _ = ilcp_loss(view, view + 0.1 * torch.randn_like(view), superpixels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(view.grad).all()


# ----------------------------------------------------------------------------- ASP
def test_asp_on_hand_made_4x4_map():
    superpixels = torch.tensor([[1, 1, 2, 2],
                                [1, 1, 2, 2],
                                [3, 3, 3, 2],
                                [0, 0, 3, 3]])
    # Two channels whose mean is the value below (channel 0 = 2 * value, channel 1 = 0).
    mean = torch.tensor([[1., 2., 4., 4.],
                         [3., 4., 6., 10.],
                         [0., 1., 2., 6.],
                         [8., 6., 3., 6.]])
    features = torch.stack([2 * mean, torch.zeros_like(mean)])[None]
    # Region averages: 1 -> (1+2+3+4)/4 = 2.5; 2 -> (4+4+6+10+6)/5 = 6; 3 -> (0+1+2+3+6)/5 = 2.4;
    # padding 0 -> (8+6)/2 = 7 (its own region).
    expected = torch.tensor([[2.5, 2.5, 6., 6.],
                             [2.5, 2.5, 6., 6.],
                             [2.4, 2.4, 2.4, 6.],
                             [7., 7., 2.4, 2.4]])
    painted = average_superpixel_map(features, superpixels[None])
    assert painted.shape == (1, 16)
    assert torch.allclose(painted.reshape(4, 4), expected)


def test_asp_is_a_true_average_not_divided_by_image_size():
    features = torch.full((1, 3, 2, 2), 5.0)
    painted = average_superpixel_map(features, torch.tensor([[[1, 1], [1, 2]]]))
    assert torch.allclose(painted, torch.full((1, 4), 5.0))   # the reference's /(H*W) would give 15/4 and 5/4


# ----------------------------------------------------------------------------- CCL / IGCP
def unit_vectors(degrees):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


def same_partition(labels, groups):
    labels = labels.tolist()
    return all(len({labels[i] for i in g}) == 1 for g in groups) and len({labels[g[0]] for g in groups}) == len(groups)


def test_ccl_chain_is_one_component():
    # Nearest neighbours 0<->1, 2->1, 3->2, 4->3: a chain, one component although 0 and 4 are far apart.
    labels, count = connected_component_labels(unit_vectors([0, 10, 25, 45, 70]), n_views=1)
    assert count == 1 and same_partition(labels, [[0, 1, 2, 3, 4]])


def test_ccl_two_cliques_are_two_components():
    labels, count = connected_component_labels(unit_vectors([0, 5, 8, 90, 95, 99]), n_views=1)
    assert count == 2 and same_partition(labels, [[0, 1, 2], [3, 4, 5]])


def test_ccl_all_identical_is_one_component():
    labels, count = connected_component_labels(torch.ones(8, 6), n_views=2)
    assert count == 1 and len(set(labels.tolist())) == 1


def test_ccl_views_are_joined_and_partners_excluded_from_the_search():
    # Two views x 4 images; each view's nearest row is its own other view (5 degrees apart), images
    # {0,1} and {2,3} are close pairs. Excluding own views links 0-1 and 2-3 -> two components; the
    # reference search (own views allowed) only finds the partners -> four components.
    view0, view1 = [0, 20, 100, 120], [5, 25, 105, 125]
    rows = unit_vectors(view0 + view1)
    labels, count = connected_component_labels(rows, n_views=2)
    assert count == 2 and same_partition(labels, [[0, 1, 4, 5], [2, 3, 6, 7]])
    labels, count = connected_component_labels(rows, n_views=2, exclude_own_views=False)
    assert count == 4 and same_partition(labels, [[0, 4], [1, 5], [2, 6], [3, 7]])


@pytest.mark.parametrize("exclude_own_views", [True, False])
def test_igcp_labels_always_pair_the_two_views(exclude_own_views):
    torch.manual_seed(1)
    B = 12
    # The two views of a sample are far apart (opposite), so only the explicit join can pair them.
    view0 = torch.randn(B, 16)
    rows = torch.cat([view0, -view0 + 0.01 * torch.randn(B, 16)])
    mask, count = igcp_positive_mask(rows, n_views=2, exclude_own_views=exclude_own_views)
    labels, _ = connected_component_labels(rows, n_views=2, exclude_own_views=exclude_own_views)
    assert torch.equal(labels[:B], labels[B:])
    assert bool(mask[torch.arange(B), torch.arange(B) + B].all())
    assert 1 <= count <= (B // 2 if exclude_own_views else B)
    # A partition: the mask is an equivalence relation.
    assert torch.equal(mask, mask.T) and torch.equal((mask.float() @ mask.float() > 0), mask)


def test_ccl_components_bounded_by_half_the_batch():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = torch.from_numpy(rng.standard_normal((2 * 10, 5)))
        _, count = connected_component_labels(rows, n_views=2)
        assert 1 <= count <= 5           # every image is linked to another image
