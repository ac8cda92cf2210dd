"""JCL (Zeng 2023, "Multi-level Asymmetric Contrastive Learning", public code MACL): pre-trains the
encoder AND the first k decoder blocks of nnU-Net's own U-Net in one stage.

Two branches share the encoder:

* dominant: view downsampled by the decoder's upsampling factor (2^k for stride-2 stages) -> encoder
  -> first k blocks of ``network.decoder`` (``transpconvs[:k]``, ``stages[:k]``, counted from the
  bottleneck, with this branch's own skips) -> instance projector + pixel projector;
* auxiliary: the full-size view -> encoder -> its own instance projector + pixel projector.

The dominant decoder output and the auxiliary bottleneck then have the same spatial size, and

    L = lambda_global * L_g + lambda_dense * L_d + lambda_er * L_ER        (paper eq. 9, {1, 0.5, 1})

* L_g: PCL's position-based SupCon over the 2B instance projections (B dominant, B auxiliary,
  view-major; all against all, as the public code's ``SupConLoss`` on ``[B, 2, D]``);
* L_d: the same loss at every location of the pixel projections (``location_wise_info_nce``,
  vectorised over locations instead of the public code's Python loop over h*w);
* L_ER: L1 between the dominant bottleneck and the auxiliary bottleneck downsampled to its size.

Choices where the paper is silent or the code differs (documented here, tested where testable):

* Views: one geometric augmentation (rotation, scaling, mirroring) per slice shared by both branches,
  then an independent intensity augmentation per branch. The paper applies "the same random
  augmentations" to both branches; the maps must stay pixel-aligned for L_d. MACL instead runs two
  extra spatially-augmented views (img3/img4) for L_g only, which doubles the forward passes; here
  one pair of views serves all three terms, as in the paper's Figure 2.
* Downsampling (dominant view and auxiliary bottleneck for L_ER): ``F.interpolate(mode="area")``,
  i.e. the mean of each d x d block (anti-aliased, exact for the integer factors used here).
* Crop: nnU-Net's decoder concatenates skips, so the downsampled view must be a multiple of the
  encoder's total stride, i.e. the crop a multiple of total stride x downsampling factor. The default
  (``crop=auto``) is the plan patch size rounded UP to that multiple (slices smaller than the crop are
  zero-padded, centred, larger ones randomly cropped). The dominant bottleneck must hold more than
  one element (InstanceNorm cannot normalise a single value).
* Projectors: the package's heads (instance: GAP -> Linear -> batch standardisation -> ReLU -> Linear;
  pixel: 1x1 conv -> ReLU -> 1x1 conv), hidden width = input channels, 128-d outputs as in the paper's supplement
  (its pixel projector uses 3x3 convs with BatchNorm; 1x1 keeps the location-wise comparison local).
  The two branches have separate projectors (g and g~ in the paper).
* The scale factor tau/tau_base of the public ``SupConLoss`` is not applied (see ``info_nce``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_cl import distributed
from nnunet_cl.errors import NnunetClError
from nnunet_cl.heads import InstanceProjectionHead, PixelProjectionHead
from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.losses.dense_positional import location_wise_info_nce
from nnunet_cl.masks import positional_positive_mask
from nnunet_cl.precision import at_least_float32, float32_region
from nnunet_cl.pretraining.methods import register
from nnunet_cl.pretraining.methods.base import PretrainingMethod
from nnunet_cl.pretraining.methods.instance import check_position_threshold
from nnunet_cl.pretraining.views import apply_per_sample, geometric_pipeline, intensity_pipeline
from nnunet_cl.validation import int_at_least, loss_weights, positive_int


def size_text(size) -> str:
    return "x".join(str(int(s)) for s in size)


def encoder_total_stride(encoder) -> tuple:
    """Per-axis product of the encoder's stage strides (the bottleneck's downsampling)."""
    return tuple(int(np.prod([stride[axis] for stride in encoder.strides])) for axis in range(len(encoder.strides[0])))


def decoder_upsampling(encoder, k: int) -> tuple:
    """Per-axis upsampling of the first k decoder blocks = the strides of the last k encoder stages
    (2^k for nnU-Net's usual stride-2 stages). The dominant view is downsampled by this factor."""
    axes = range(len(encoder.strides[0]))
    return tuple(int(np.prod([stride[axis] for stride in encoder.strides[len(encoder.strides) - k:]])) for axis in axes)


def smallest_valid_crop(patch_size, multiple) -> tuple:
    """The patch size rounded up to ``multiple`` per axis; if that leaves a single-element dominant
    bottleneck, the first axis is doubled."""
    crop = [int(math.ceil(p / m)) * m for p, m in zip(patch_size, multiple)]
    if all(c == m for c, m in zip(crop, multiple)):
        crop[0] *= 2
    return tuple(crop)


def parse_crop(text: str, ndim: int) -> tuple:
    parts = text.lower().replace(",", "x").split("x")
    try:
        crop = tuple(int(p) for p in parts)
    except ValueError:
        crop = ()
    if len(crop) != ndim or min(crop, default=0) < 1:
        raise NnunetClError(f"JCL option crop={text!r} is not a size; write it like crop=64x64 ({ndim} positive "
                            "integers) or crop=auto")
    return crop


def resolve_crop(option: str, patch_size, total_stride, upsampling, k: int) -> tuple:
    """The pre-training crop for ``option`` ("auto" or e.g. "64x32"), or a clear error."""
    multiple = tuple(t * u for t, u in zip(total_stride, upsampling))
    smallest = smallest_valid_crop(patch_size, multiple)
    if option.strip().lower() == "auto":
        return smallest
    crop = parse_crop(option, len(patch_size))
    fits = all(c % m == 0 for c, m in zip(crop, multiple))
    if not fits or all(c == m for c, m in zip(crop, multiple)):
        reason = ("every side must be a multiple of the encoder's total stride "
                  f"{size_text(total_stride)} x the dominant downsampling {size_text(upsampling)} = "
                  f"{size_text(multiple)}"
                  if not fits else "the dominant branch's bottleneck would be a single pixel")
        raise NnunetClError(f"JCL crop {size_text(crop)} does not work with k={k} and the plans' patch size "
                            f"{size_text(patch_size)}: {reason}; the smallest valid crop is "
                            f"{size_text(smallest)} (use -o crop={size_text(smallest)} or -o crop=auto)")
    return crop


def equivariance_loss(dominant_bottleneck: torch.Tensor, auxiliary_bottleneck: torch.Tensor) -> torch.Tensor:
    """L_ER (paper eq. 12): mean absolute difference between the dominant bottleneck Y and the auxiliary
    bottleneck area-downsampled to Y's size (mean over elements, as ``F.l1_loss``)."""
    with float32_region(dominant_bottleneck):     # a mean over all elements: float32 under mixed precision
        dominant_bottleneck, auxiliary_bottleneck = map(at_least_float32, (dominant_bottleneck, auxiliary_bottleneck))
        downsampled = F.interpolate(auxiliary_bottleneck, size=dominant_bottleneck.shape[2:], mode="area")
        return F.l1_loss(dominant_bottleneck, downsampled)


@register
class JCL(PretrainingMethod):
    name = "jcl"
    trainer_name = "JCL"
    supports_distributed = True   # projections and bottlenecks are gathered: every term sees the global batch
    default_options = {"k": 2, "lambda_global": 1.0, "lambda_dense": 0.5, "lambda_er": 1.0, "temperature": 0.1,
                       "position_threshold": 0.1, "projection_dim": 128, "pixel_projection_dim": 128,
                       "crop": "auto"}

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        int_at_least(options["k"], 0, "jcl option k", "decoder blocks in the dominant branch; the paper uses 2")
        check_position_threshold(options["position_threshold"], "jcl option position_threshold")
        for key in ("projection_dim", "pixel_projection_dim"):
            positive_int(options[key], f"jcl option {key}")
        loss_weights(options, ("lambda_global", "lambda_dense", "lambda_er"), "jcl")

    def __init__(self, network, context, options=None):
        super().__init__(network, context, options)
        encoder = network.encoder
        n_blocks = len(network.decoder.stages)
        self.k = self.options["k"]
        if self.k > n_blocks:   # the upper bound depends on the plan's decoder
            raise NnunetClError(f"JCL option k={self.k} is out of range: this plan's decoder has {n_blocks} blocks; "
                                f"choose 0 <= k <= {n_blocks} (the paper uses k=2)")
        self.pretrained_prefixes = ("encoder.",) + tuple(
            f"decoder.{part}.{i}." for part in ("transpconvs", "stages") for i in range(self.k))
        self.total_stride = encoder_total_stride(encoder)
        self.upsampling = decoder_upsampling(encoder, self.k)
        self.crop = resolve_crop(self.options["crop"], self.patch_size, self.total_stride, self.upsampling, self.k)
        self.dominant_size = tuple(c // u for c, u in zip(self.crop, self.upsampling))

        decoded = encoder.output_channels[-(self.k + 1)]   # channels after k decoder blocks
        bottleneck = encoder.output_channels[-1]
        instance_dim, pixel_dim = self.options["projection_dim"], self.options["pixel_projection_dim"]
        self.dominant_instance_head = InstanceProjectionHead(decoded, decoded, instance_dim)
        self.dominant_pixel_head = PixelProjectionHead(decoded, decoded, pixel_dim, conv_op=encoder.conv_op)
        self.auxiliary_instance_head = InstanceProjectionHead(bottleneck, bottleneck, instance_dim)
        self.auxiliary_pixel_head = PixelProjectionHead(bottleneck, bottleneck, pixel_dim, conv_op=encoder.conv_op)
        self.geometric_views = geometric_pipeline(self.crop)
        self.intensity_views = intensity_pipeline()
        self._crop_slices = (None, None)

    # ---------------------------------------------------------------- data
    def _slices_at_crop(self, slices):
        if self._crop_slices[0] is not slices:
            self._crop_slices = (slices, slices.with_patch_size(self.crop))
        return self._crop_slices[1]

    def make_batch(self, slices, batch_size, rng):
        crop_slices = self._slices_at_crop(slices)
        windows = crop_slices.sample_windows(batch_size, rng)
        shared = apply_per_sample(self.geometric_views, crop_slices.images(windows)).numpy()
        dominant = apply_per_sample(self.intensity_views, shared)
        auxiliary = apply_per_sample(self.intensity_views, shared)
        return {"dominant": F.interpolate(dominant, size=self.dominant_size, mode="area"),
                "auxiliary": auxiliary,
                "positions": torch.tensor([w.position for w in windows], dtype=torch.float32)}

    # ---------------------------------------------------------------- network
    def dominant_branch(self, network, small_view):
        """Encoder + the first k decoder blocks, exactly as ``UNetDecoder.forward`` runs them.
        Returns (bottleneck, decoded features)."""
        skips = network.encoder(small_view)
        x = skips[-1]
        for s in range(self.k):
            x = network.decoder.transpconvs[s](x)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            x = network.decoder.stages[s](x)
        return skips[-1], x

    def compute_loss(self, network, batch):
        dominant_bottleneck, decoded = self.dominant_branch(network, batch["dominant"])
        auxiliary_bottleneck = network.encoder(batch["auxiliary"])[-1]
        # view-major: rows 0..B-1 dominant, B..2B-1 auxiliary; under torchrun the global batch of all ranks
        instance = distributed.gather_views(torch.cat([self.dominant_instance_head(decoded),
                                                       self.auxiliary_instance_head(auxiliary_bottleneck)]), n_views=2)
        pixel = distributed.gather_views(torch.cat([self.dominant_pixel_head(decoded),
                                                    self.auxiliary_pixel_head(auxiliary_bottleneck)]), n_views=2)
        # L_ER is a mean over elements: gathering both bottlenecks makes it the global batch's mean too
        dominant_bottleneck = distributed.gather(dominant_bottleneck)
        auxiliary_bottleneck = distributed.gather(auxiliary_bottleneck)
        positives = positional_positive_mask(distributed.gather(batch["positions"]), n_views=2,
                                             threshold=self.options["position_threshold"]).to(instance.device)
        temperature = self.options["temperature"]
        global_loss = multi_positive_info_nce(instance, positives, temperature=temperature)
        dense_loss = location_wise_info_nce(pixel, positives, temperature=temperature)
        er_loss = equivariance_loss(dominant_bottleneck, auxiliary_bottleneck)
        total = (self.options["lambda_global"] * global_loss + self.options["lambda_dense"] * dense_loss
                 + self.options["lambda_er"] * er_loss)
        return total, {"global": float(global_loss.detach()), "dense": float(dense_loss.detach()),
                       "er": float(er_loss.detach())}
