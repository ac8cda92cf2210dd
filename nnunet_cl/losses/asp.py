"""SuperCL's averaged superpixel feature map (ASP, Zeng et al., eq. 6).

The feature map is averaged over its channels, then over each superpixel, and each superpixel's
average is painted back onto its pixels: one ``h*w`` vector per image, the representation whose
cosine similarities build the CCL graph.

Choices:

* The paper says "average"; the reference code divides each superpixel's sum by the image's pixel
  count ``H*W`` instead of the superpixel's size, which weights every superpixel's value by its
  area. We compute the average, as the paper describes.
* Label 0 (padding, no superpixel) is averaged as a region of its own, so the vector covers every
  pixel of the feature map like the map itself.
* It only produces weak labels (a non-differentiable graph), so it runs without gradient.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def average_superpixel_map(feature_map: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
    """``feature_map [N, C, h, w]``, ``superpixels [N, h, w]`` (non-negative ints) -> ``[N, h*w]``."""
    if feature_map.shape[0] != superpixels.shape[0] or feature_map.shape[2:] != superpixels.shape[1:]:
        raise ValueError(f"ASP needs features [N, C, h, w] and superpixels [N, h, w]; got "
                         f"{tuple(feature_map.shape)} and {tuple(superpixels.shape)}")
    channel_mean = feature_map.detach().float().mean(dim=1).flatten(1)
    labels = superpixels.flatten(1).long().to(channel_mean.device)
    num_labels = int(labels.max()) + 1
    sums = torch.zeros(labels.shape[0], num_labels, device=labels.device).scatter_add_(1, labels, channel_mean)
    sizes = torch.zeros_like(sums).scatter_add_(1, labels, torch.ones_like(channel_mean))
    return (sums / sizes.clamp(min=1)).gather(1, labels)
