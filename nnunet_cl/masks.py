"""Positive-pair masks: each contrastive method is mostly "which pairs are positive".

Multi-view batches are ordered view-major everywhere in nnunet-cl: row ``v * B + b`` is view ``v`` of
sample ``b`` (the order of ``torch.cat([view0, view1])``).
"""

from __future__ import annotations

import torch


def equal_label_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[*, N] -> [*, N, N]``: True where two rows carry the same label (self included)."""
    return labels[..., :, None] == labels[..., None, :]


def tile_views(per_sample: torch.Tensor, n_views: int) -> torch.Tensor:
    """Repeat a per-sample quantity ``[B, ...]`` for ``n_views`` view-major rows ``[V*B, ...]``."""
    return per_sample.repeat(n_views, *([1] * (per_sample.dim() - 1)))


def same_sample_positive_mask(batch_size: int, n_views: int, device=None) -> torch.Tensor:
    """SimCLR: the other views of the same sample are the positives."""
    sample_ids = tile_views(torch.arange(batch_size, device=device), n_views)
    return equal_label_mask(sample_ids)


def positional_positive_mask(positions: torch.Tensor, n_views: int, threshold: float = 0.1) -> torch.Tensor:
    """PCL (Zeng et al. 2021): slices whose normalised positions differ by less than ``threshold``.

    ``positions`` is ``[B]`` in [0, 1]; the other view of the same slice is always positive
    (distance 0), exactly as in the reference code.
    """
    tiled = tile_views(positions, n_views)
    return (tiled[:, None] - tiled[None, :]).abs() < threshold


def volume_partition(positions: torch.Tensor, partitions: int) -> torch.Tensor:
    """GCL (Chaitanya et al. 2020): index of the partition a slice at normalised position p in (0, 1)
    falls into when its volume is cut into ``partitions`` equal parts, ``min(floor(p * S), S - 1)``."""
    return (positions * partitions).floor().long().clamp(0, partitions - 1)


def partition_positive_mask(positions: torch.Tensor, n_views: int, partitions: int = 4) -> torch.Tensor:
    """GCL: slices in the same partition of their volumes (any volume, any view) are positives."""
    return equal_label_mask(tile_views(volume_partition(positions, partitions), n_views))
