"""JCL's dense loss L_d: location-wise position-based SupCon, vectorised over locations."""

import math

import pytest
import torch

from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.losses.dense_positional import location_wise_info_nce
from nnunet_cl.masks import positional_positive_mask
from tests.test_info_nce import naive_info_nce


def naive_dense_loss(maps, positive_mask, temperature):
    """Eq. 11 literally: for every location, every anchor, every positive; mean over all anchor terms."""
    n, _, height, width = maps.shape
    total, count = 0.0, 0
    for y in range(height):
        for x in range(width):
            vectors = [maps[i, :, y, x] / maps[i, :, y, x].norm() for i in range(n)]
            for i in range(n):
                positives = [j for j in range(n) if j != i and positive_mask[i][j]]
                if not positives:
                    continue
                denominator = sum(math.exp(float(vectors[i] @ vectors[k]) / temperature) for k in range(n) if k != i)
                total += sum(-(float(vectors[i] @ vectors[p]) / temperature - math.log(denominator))
                             for p in positives) / len(positives)
                count += 1
    return total / count


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_triple_loop(seed):
    g = torch.Generator().manual_seed(seed)
    batch = 3
    maps = torch.randn(2 * batch, 4, 3, 2, generator=g, dtype=torch.float64)   # view-major: dominant, auxiliary
    positions = torch.tensor([0.1, 0.15, 0.7], dtype=torch.float64)
    mask = positional_positive_mask(positions, n_views=2, threshold=0.1)
    got = location_wise_info_nce(maps, mask, temperature=0.2)
    assert got.item() == pytest.approx(naive_dense_loss(maps, mask, 0.2), rel=1e-9)


def test_equals_average_of_per_location_global_losses():
    g = torch.Generator().manual_seed(7)
    maps = torch.randn(8, 5, 4, 3, generator=g, dtype=torch.float64)
    mask = positional_positive_mask(torch.rand(4, generator=g, dtype=torch.float64), n_views=2, threshold=0.3)
    per_location = [multi_positive_info_nce(maps[:, :, y, x], mask, temperature=0.1)
                    for y in range(4) for x in range(3)]
    per_location_naive = [naive_info_nce(maps[:, :, y, x], mask, 0.1) for y in range(4) for x in range(3)]
    got = location_wise_info_nce(maps, mask, temperature=0.1)
    assert got.item() == pytest.approx(torch.stack(per_location).mean().item(), rel=1e-12)
    assert got.item() == pytest.approx(sum(per_location_naive) / len(per_location_naive), rel=1e-9)


def test_hand_computed_two_locations():
    # B = 2 slices far apart (only the other view is positive), tau = 1, rows [dom0, dom1, aux0, aux1].
    # Location A: all four vectors equal -> every anchor: -(1 - log(3e)) = log 3.
    # Location B: slice 0 -> e1 in both views, slice 1 -> -e1: anchor 0 has s02 = 1, s01 = s03 = -1
    #             -> -(1 - log(e + 2/e)) = log(e + 2/e) - 1, the same for every anchor by symmetry.
    e1 = torch.tensor([1.0, 0.0])
    location_a = torch.stack([e1, e1, e1, e1])
    location_b = torch.stack([e1, -e1, 2 * e1, -3 * e1])            # norms differ: the loss normalises
    maps = torch.stack([location_a, location_b], dim=-1)[..., None]  # [4, D=2, H=2, W=1]
    mask = positional_positive_mask(torch.tensor([0.1, 0.9]), n_views=2, threshold=0.1)
    expected = (math.log(3) + math.log(math.e + 2 / math.e) - 1) / 2
    assert location_wise_info_nce(maps, mask, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_gradient_flows_to_every_location():
    maps = torch.randn(6, 4, 2, 2, requires_grad=True)
    mask = positional_positive_mask(torch.tensor([0.2, 0.5, 0.8]), n_views=2)
    location_wise_info_nce(maps, mask).backward()
    assert (maps.grad.flatten(2).abs().sum(dim=(0, 1)) > 0).all()


def test_rejects_flat_input():
    with pytest.raises(ValueError, match=r"\[N, D, \*spatial\]"):
        location_wise_info_nce(torch.randn(4, 3), torch.ones(4, 4, dtype=torch.bool))
