"""Dense (location-wise) contrast: the same multi-positive InfoNCE at every spatial location.

JCL's dense loss L_d (Zeng 2023, eq. 11) compares, at each location s of two aligned projection maps,
the 2B vectors found there (B dominant + B auxiliary, view-major), with the sample-level positive mask
(PCL: slices whose positions differ by < threshold, the other branch of the same slice always), and
averages over locations. The public code (MACL) loops in Python over the h*w locations and calls the
loss once per location; here the locations become the kernel's leading batch dimension
(``[HW, 2B, D]`` anchors, the ``[2B, 2B]`` mask broadcast), one batched matmul.

Because every anchor has a positive (its other view), the kernel's mean over all HW*2B anchors equals
the mean over locations of the per-location losses, i.e. exactly the public code's average.
"""

from __future__ import annotations

import torch

from nnunet_cl.losses.info_nce import multi_positive_info_nce


def location_wise_info_nce(feature_maps: torch.Tensor, positive_mask: torch.Tensor,
                           temperature: float = 0.1) -> torch.Tensor:
    """Multi-positive InfoNCE at every location, averaged over locations and anchors.

    Args:
        feature_maps: ``[N, D, *spatial]`` (e.g. view-major ``N = 2B``), pixel-aligned across rows.
        positive_mask: ``[N, N]`` sample-level positives, the same at every location.
        temperature: tau.
    """
    if feature_maps.dim() < 3:
        raise ValueError(f"feature_maps must be [N, D, *spatial], got shape {tuple(feature_maps.shape)}")
    # [N, D, *spatial] -> [L, N, D]: one independent contrastive block per location. Contiguous, so the
    # normalisation and the batched matmul run on dense rows instead of strided gathers.
    per_location = feature_maps.flatten(2).permute(2, 0, 1).contiguous()
    return multi_positive_info_nce(per_location, positive_mask.to(feature_maps.device), temperature=temperature)
