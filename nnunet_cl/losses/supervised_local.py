"""Supervised local contrast of Hu et al. (MICCAI'21, "Semi-supervised contrastive learning for
label-efficient medical image segmentation"), eq. (2) with their supervised Omega, P and N.

Every pixel of the full-resolution feature maps of all views in the batch is a candidate; pixels with
the same label are positives. Background pixels are never anchors (the paper's Omega) but stay in
every denominator as negatives. The loss is the shared SupCon L_out kernel
(:func:`nnunet_cl.losses.multi_positive_info_nce`), which is also what the public code computes
(``SupConLoss`` in ``loss_functions/supcon_loss.py``). Two ways to keep the N x N similarity matrix
affordable:

* ``stride``: keep every s-th pixel in both directions (``F[..., ::s, ::s]``), then one contrast over
  all kept pixels of all views. Only foreground pixels are anchors, so the kernel gets an
  ``[N_fg, N]`` problem instead of ``[N, N]`` (same result: background rows are dropped anyway).
* ``block``: cut the maps into ``b x b`` tiles; a tile position holds that tile of every view of every
  image (as the public ``BlockConLoss``), and the contrast runs inside each tile only. Tiles are the
  leading batch dimension of the kernel (one batched matmul). Tiles without foreground are skipped;
  each remaining tile counts equally (per-tile mean, then the mean over tiles), as in the public
  code.

Choices where the paper/code are silent or buggy (documented, tested):
* The public block mode crashes (``main_coseg.py`` reads an undefined ``opt.block_size``) and uses
  ``img_size // block_size`` tiles on both axes, silently dropping the remainder and assuming square
  images. Here the maps are padded to a multiple of b on each axis; padded pixels are neither anchors,
  positives nor negatives, so border pixels are used too and non-square patches work.
* An anchor without any positive (a lone pixel of its class; impossible with two pixel-aligned
  views) is left out of the mean by the kernel; the public code would produce NaN.
* A batch (or tile set) without foreground gives an exact zero that keeps the graph, as the public
  code's "skip" (it returns a constant 0).
"""

from __future__ import annotations

import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.losses.info_nce import multi_positive_info_nce

STRATEGIES = ("stride", "block")
INVALID = -1   # label of padding pixels in block mode


def _check_inputs(features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.dim() != 4 or labels.dim() != 3 or features.shape[0] != labels.shape[0] \
            or features.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"features must be [R, D, H, W] and labels [R, H, W] with the same R, H, W; got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")


def stride_local_contrast(features: torch.Tensor, labels: torch.Tensor, stride: int = 4,
                          temperature: float = 0.1) -> torch.Tensor:
    """Supervised local contrast on every ``stride``-th pixel of all rows (views x images)."""
    _check_inputs(features, labels)
    kept = features[:, :, ::stride, ::stride]
    candidates = kept.permute(0, 2, 3, 1).reshape(-1, kept.shape[1])            # [N, D]
    candidate_labels = labels[:, ::stride, ::stride].reshape(-1)                  # [N]
    anchor_index = torch.nonzero(candidate_labels > 0).squeeze(1)               # foreground only
    anchor_labels = candidate_labels[anchor_index]
    not_self = torch.arange(candidates.shape[0], device=features.device)[None, :] != anchor_index[:, None]
    positives = (anchor_labels[:, None] == candidate_labels[None, :]) & not_self
    return multi_positive_info_nce(candidates[anchor_index], positives, temperature=temperature,
                                   contrast=candidates, denominator_mask=not_self)


def to_blocks(maps: torch.Tensor, block_size: int, fill) -> torch.Tensor:
    """``[R, ..., H, W] -> [n_tiles, R * b * b, ...]``: each tile position gathers its pixels of all rows.

    H and W are padded with ``fill`` up to multiples of ``block_size``."""
    rows, height, width = maps.shape[0], maps.shape[-2], maps.shape[-1]
    pad_h, pad_w = (-height) % block_size, (-width) % block_size
    if pad_h or pad_w:
        maps = torch.nn.functional.pad(maps, (0, pad_w, 0, pad_h), value=fill)
    ty, tx = maps.shape[-2] // block_size, maps.shape[-1] // block_size
    extra = maps.shape[1:-2]                                                      # () or (D,)
    tiles = maps.reshape(rows, *extra, ty, block_size, tx, block_size)
    n_extra = len(extra)
    # -> [ty, tx, R, b, b, *extra]
    order = (1 + n_extra, 3 + n_extra, 0, 2 + n_extra, 4 + n_extra) + tuple(range(1, 1 + n_extra))
    return tiles.permute(order).reshape(ty * tx, rows * block_size * block_size, *extra)


def block_local_contrast(features: torch.Tensor, labels: torch.Tensor, block_size: int = 16,
                         temperature: float = 0.1) -> torch.Tensor:
    """Supervised local contrast inside each ``block_size x block_size`` tile (all rows of a tile together)."""
    _check_inputs(features, labels)
    tile_labels = to_blocks(labels.long(), block_size, INVALID)                  # [T, M]
    has_foreground = (tile_labels > 0).any(dim=1)
    if not bool(has_foreground.any()):
        return (features * 0.0).sum()
    tile_labels = tile_labels[has_foreground]
    tile_features = to_blocks(features, block_size, 0.0)[has_foreground]         # [T', M, D]
    valid = tile_labels != INVALID
    positives = (tile_labels[:, :, None] == tile_labels[:, None, :]) & valid[:, None, :]
    is_anchor = tile_labels > 0
    # Per-tile mean, then mean over tiles: weight each anchor by 1 / (anchors with a positive in its tile).
    eye = torch.eye(tile_labels.shape[1], dtype=torch.bool, device=features.device)
    counted = is_anchor & (positives & ~eye).any(dim=2)
    weights = counted.to(features.dtype) / counted.sum(dim=1, keepdim=True).clamp(min=1)
    return multi_positive_info_nce(tile_features, positives, temperature=temperature,
                                   denominator_mask=valid[:, None, :], anchor_weights=weights)


def supervised_local_contrast(features: torch.Tensor, labels: torch.Tensor, strategy: str = "stride",
                              stride: int = 4, block_size: int = 16, temperature: float = 0.1) -> torch.Tensor:
    """Hu et al.'s loss. ``features [R, D, H, W]`` (R = views x images, any order), ``labels [R, H, W]``
    (0 = background; pixel-aligned views simply repeat the label map)."""
    if strategy == "stride":
        if stride < 1:
            raise NnunetClError(f"stride={stride} must be >= 1 (Hu et al. use 4)")
        return stride_local_contrast(features, labels, stride, temperature)
    if strategy == "block":
        if block_size < 1:
            raise NnunetClError(f"block_size={block_size} must be >= 1 (Hu et al. use 16)")
        return block_local_contrast(features, labels, block_size, temperature)
    raise NnunetClError(f"strategy={strategy!r} is not one of {STRATEGIES} (Hu et al.'s two memory strategies)")
