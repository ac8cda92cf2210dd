import pytest
import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.label_subsets import check_label_fraction, labeled_subset
from nnunet_cl.masks import equal_label_mask, positional_positive_mask, same_sample_positive_mask


def test_same_sample_mask_view_major():
    mask = same_sample_positive_mask(3, n_views=2)
    for i in range(6):
        for j in range(6):
            assert bool(mask[i, j]) == (i % 3 == j % 3)


def test_positional_mask_hand_case():
    positions = torch.tensor([0.10, 0.15, 0.50])
    mask = positional_positive_mask(positions, n_views=2, threshold=0.1)
    # rows: view0 (a, b, c), view1 (a, b, c); a-b differ by 0.05 < 0.1 -> positive, c alone
    expected_block = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected_block.repeat(2, 2))


def test_equal_label_mask_batched():
    labels = torch.tensor([[0, 1, 0], [2, 2, 1]])
    mask = equal_label_mask(labels)
    assert mask.shape == (2, 3, 3)
    assert mask[0, 0, 2] and not mask[0, 0, 1] and mask[1, 0, 1] and not mask[1, 2, 0]


def test_label_subsets_deterministic_nested_at_least_one():
    cases = [f"case_{i:03d}" for i in range(37)]
    for fold in (0, 1, 4):
        s10 = labeled_subset(cases, 0.1, fold)
        s25 = labeled_subset(cases, 0.25, fold)
        s100 = labeled_subset(cases, 1.0, fold)
        assert s10 == labeled_subset(list(reversed(cases)), 0.1, fold)  # independent of input order
        assert set(s10) < set(s25) < set(s100) == set(cases)
        assert len(s10) == 4 and len(s25) == 9
    assert labeled_subset(cases, 0.1, 0) != labeled_subset(cases, 0.1, 1)  # the fold seeds the draw
    assert len(labeled_subset(["only"], 0.01, 0)) == 1
    assert len(labeled_subset(cases[:3], 0.1, 0)) == 1


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "abc"])
def test_label_fraction_out_of_range_is_a_clear_error(bad):
    with pytest.raises(NnunetClError, match="label fraction"):
        check_label_fraction(bad)
