"""SuperCL's intra-image local contrastive pairs (ILCP, Zeng et al., L_intra, eq. 5).

The pixels of one encoder stage's feature map, from two pixel-aligned (intensity-only, T_fix) views
of an image, are the anchors. Positives: pixels of the same superpixel, in either view (self
excluded); negatives: the pixels of the other superpixels **of the same image** (as the reference
code, which loops over the images). Each image is one block of the shared kernel's batched matmul
(``[B, 2P, C]``), so the whole batch is one call and no Python loop runs per image or pixel; the
positives go in as labels (the kernel's equal-label form), so no ``[B, 2P, 2P]`` mask is built.

Choices:

* The features are the encoder's own (no pixel projector), as in the reference code.
* ``stride`` keeps every stride-th pixel in raster order, the same pixels in both views (paper
  Table IV, whose best setting and the paper's default is 1; the reference code keeps every 16th).
* Label 0 means padding (no superpixel): such pixels are neither anchors nor candidates.
* An image with fewer than two superpixels among its kept pixels (e.g. a constant slice) has no
  negatives; its anchors are left out (the term would only pull everything together). If no image
  qualifies the term is an exact 0 that still carries a graph.
* The mean runs over all anchors of all images (the reference takes a mean per image and then over
  images; they agree when images have equally many valid pixels).
"""

from __future__ import annotations

import torch

from nnunet_cl.losses.info_nce import multi_positive_info_nce


def ilcp_pixels(view1: torch.Tensor, view2: torch.Tensor, superpixels: torch.Tensor, stride: int = 1):
    """Anchors ``[B, 2P, C]`` (view-major within each image) and their labels ``[B, 2P]``."""
    if view1.shape != view2.shape or view1.shape[0] != superpixels.shape[0] or view1.shape[2:] != superpixels.shape[1:]:
        raise ValueError(f"ILCP needs two views [B, C, h, w] and superpixels [B, h, w]; got {tuple(view1.shape)}, "
                         f"{tuple(view2.shape)}, {tuple(superpixels.shape)}")
    if stride < 1:
        raise ValueError(f"ILCP stride must be >= 1, got {stride}")
    kept = slice(None, None, stride)
    pixels = torch.cat([view1.flatten(2)[..., kept], view2.flatten(2)[..., kept]], dim=2).transpose(1, 2).contiguous()
    labels = superpixels.flatten(1)[:, kept].long()
    return pixels, torch.cat([labels, labels], dim=1)


def ilcp_loss(view1: torch.Tensor, view2: torch.Tensor, superpixels: torch.Tensor, temperature: float = 0.1,
              stride: int = 1, tau_base=None) -> tuple[torch.Tensor, int]:
    """ILCP loss of two T_fix views ``[B, C, h, w]`` with superpixel labels ``[B, h, w]`` (0 = padding).

    Returns the loss and the number of images that took part.
    """
    pixels, labels = ilcp_pixels(view1, view2, superpixels, stride)
    labels = labels.to(pixels.device)
    valid = labels > 0
    big = torch.iinfo(labels.dtype).max
    lowest = torch.where(valid, labels, torch.full_like(labels, big)).amin(dim=1)
    highest = torch.where(valid, labels, torch.zeros_like(labels)).amax(dim=1)
    has_negatives = highest > lowest          # >= 2 distinct superpixels among the valid pixels
    anchor_weights = None if bool(has_negatives.all()) else has_negatives[:, None].expand_as(labels).float()
    # Equal-label positives in the kernel: no [B, 2P, 2P] mask is built; padding (0) becomes -1 = ignored.
    loss = multi_positive_info_nce(pixels, positive_labels=labels - 1, temperature=temperature,
                                   anchor_weights=anchor_weights, tau_base=tau_base)
    return loss, int(has_negatives.sum())
