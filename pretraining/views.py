"""Augmented views built from batchgeneratorsv2 transforms (the ones nnU-Net itself trains with).

Two pipelines, as in SuperCL:
* ``intensity_pipeline`` (T_fix): brightness, contrast, gamma, blur, noise. Pixel-aligned with the
  input, so per-pixel maps (superpixels, labels) stay valid.
* ``spatial_pipeline`` (T_var): rotation, scaling, mirroring, then the intensity pipeline.
Probabilities are higher than nnU-Net's supervised defaults: contrastive views must differ.
"""

from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform


def _intensity_transforms():
    return [
        RandomTransform(MultiplicativeBrightnessTransform(BGContrast((0.7, 1.3)), synchronize_channels=False,
                                                          p_per_channel=1), apply_probability=0.8),
        RandomTransform(ContrastTransform(BGContrast((0.7, 1.3)), preserve_range=True, synchronize_channels=False,
                                          p_per_channel=1), apply_probability=0.8),
        RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.3),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=1), apply_probability=0.5),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1,
                                               synchronize_channels=True), apply_probability=0.5),
    ]


def intensity_pipeline() -> ComposeTransforms:
    return ComposeTransforms(_intensity_transforms())


def _geometric_transforms(patch_size):
    spatial = SpatialTransform(tuple(patch_size), patch_center_dist_from_border=0, random_crop=False,
                               p_elastic_deform=0, p_rotation=0.5, rotation=(-np.pi, np.pi), p_scaling=0.5,
                               scaling=(0.7, 1.4), p_synchronize_scaling_across_axes=1)
    return [spatial, MirrorTransform(allowed_axes=(0, 1))]


def geometric_pipeline(patch_size) -> ComposeTransforms:
    """The geometric part of T_var alone (rotation, scaling, mirroring): apply it once and then
    ``intensity_pipeline`` per view to get views that differ in intensity but stay pixel-aligned (JCL)."""
    return ComposeTransforms(_geometric_transforms(patch_size))


def spatial_pipeline(patch_size) -> ComposeTransforms:
    return ComposeTransforms(_geometric_transforms(patch_size) + _intensity_transforms())


def apply_per_sample(pipeline: ComposeTransforms, images: np.ndarray) -> torch.Tensor:
    """``[B, C, H, W]`` numpy -> augmented ``[B, C, H, W]`` float tensor (bgv2 works per sample).

    Each sample is copied first: bgv2's intensity transforms work in place (and the spatial transform
    passes its input through when it draws no rotation/scaling), so without the copy the caller's
    array would change and a second view drawn from it would be augmented twice."""
    return torch.stack([pipeline(image=torch.from_numpy(np.array(img, copy=True)))["image"] for img in images]).float()
