"""Local pixel-to-class-mean contrast of Chaitanya et al. (MedIA'23, "Local contrastive loss with
pseudo-label based self-training for semi-supervised medical image segmentation"), eqs. (3)-(4).

Per image x and foreground class c, |S_c| pixels are sampled (with replacement) among the pixels
labelled c (ground truth or pseudo-label). Each sampled pixel z_i is an anchor; its positive is the
mean embedding of its class, its negatives the means of the other foreground classes::

    L_i,c = -log  e^{s(z_i, mu_c)} / sum_{k in FG present} e^{s(z_i, mu_k)},   s = cos / tau

* ``intra``: the class means come from the anchor's own image.
* ``inter``: images are paired (x, x'); an anchor of x has two positives, mu_c(x) and mu_c(x'), and
  the denominator runs over the foreground means of both images -- exactly the two terms with the
  shared denominator of the public code (``models.py``, ``exp_no=1``), i.e. SupCon L_out over the
  2 x C means. Anchors of x' are treated symmetrically (the public code adds the mirrored terms).

Both are "which pairs are positive" for the shared kernel: anchors = sampled pixels, ``contrast`` =
class means, positive = own class mean(s), denominator = foreground means of present classes. The
leading batch dimension of the kernel is the image (intra) or the pair (inter).

Choices (documented, tested):
* Background is neither an anchor nor a negative (paper and code). Labels outside 1..C (background
  0, nnU-Net's ignore label) are never sampled and enter no mean.
* A class absent from an image has no anchors and no mean there (the public code zeroes such terms
  with ``tf.cond``); an image with only background contributes nothing; if no image has foreground
  the loss is an exact zero that keeps the graph.
* Means are taken over all pixels of the class (anchor included) of the un-normalised embeddings,
  then compared by cosine (paper: mean of z, sim = cosine). Gradients flow through the means.
* Mean over all anchors of the batch, i.e. over (image, present class) pairs because |S_c| is fixed.
  The paper divides by the number of classes C including absent ones; the public code divides by
  2*3*(K-1) inside its per-image loop, so earlier images are divided repeatedly -- a bug not copied.
* Pairs for ``inter``: a random perfect matching of the batch (an odd image out is paired with a
  random other image), so every image is x in one pair -- the paper draws (x, x') with replacement.
"""

from __future__ import annotations

from typing import Optional

import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.losses.info_nce import multi_positive_info_nce

MODES = ("intra", "inter")


def sample_class_pixels(labels: torch.Tensor, num_classes: int, pixels_per_class: int,
                        generator: Optional[torch.Generator] = None) -> tuple:
    """``labels [B, H, W]`` -> (``indices [B, C, S]`` into the flattened H*W, ``present [B, C]``).

    Uniform with replacement among the pixels of foreground class c = 1..C; rows of absent classes
    get arbitrary indices and ``present`` False."""
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)
    classes = torch.arange(1, num_classes + 1, device=labels.device)
    members = (flat[:, None, :] == classes[None, :, None]).float()              # [B, C, HW]
    present = members.sum(dim=2) > 0
    # multinomial needs a positive row sum: absent rows draw from all pixels and are masked out later.
    weights = torch.where(present[..., None], members, torch.ones_like(members)).reshape(-1, flat.shape[1])
    if generator is not None:
        weights = weights.to(generator.device)
    draws = torch.multinomial(weights, pixels_per_class, replacement=True, generator=generator)
    return draws.to(labels.device).reshape(batch, num_classes, pixels_per_class), present


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple:
    """``embeddings [B, D, H, W]``, ``labels [B, H, W]`` -> (``means [B, C, D]``, ``present [B, C]``)."""
    batch, dim = embeddings.shape[:2]
    flat = embeddings.reshape(batch, dim, -1)                                     # [B, D, HW]
    classes = torch.arange(1, num_classes + 1, device=labels.device)
    members = (labels.reshape(batch, 1, -1) == classes[None, :, None]).to(embeddings.dtype)   # [B, C, HW]
    counts = members.sum(dim=2)
    means = torch.bmm(members, flat.transpose(1, 2)) / counts.clamp(min=1)[..., None]
    return means, counts > 0


def random_pairs(batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random perfect matching of ``range(batch_size)`` as ``[P, 2]`` (odd one out: a random partner)."""
    if batch_size < 2:
        raise NnunetClError("the inter-image class-mean contrast needs at least 2 images per batch; "
                            "use mode 'intra' or a larger batch")
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(batch_size, generator=generator, device=device)
    pairs = order[: batch_size - batch_size % 2].reshape(-1, 2)
    if batch_size % 2:
        partner = order[int(torch.randint(0, batch_size - 1, (1,), generator=generator, device=device))]
        pairs = torch.cat([pairs, torch.stack([order[-1], partner])[None]])
    return pairs


def class_mean_contrast(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, mode: str = "inter",
                        pixels_per_class: int = 3, temperature: float = 0.1,
                        generator: Optional[torch.Generator] = None, sampled: Optional[tuple] = None,
                        pairs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Chaitanya et al.'s loss for ``embeddings [B, D, H, W]`` and (pseudo-)``labels [B, H, W]``.

    ``num_classes`` = number of foreground classes (labels 1..C). ``sampled`` (from
    :func:`sample_class_pixels`) and ``pairs`` (``[P, 2]`` image indices) can be given to fix the
    randomness; otherwise they are drawn with ``generator``."""
    if mode not in MODES:
        raise NnunetClError(f"class-mean contrast mode {mode!r} is not one of {MODES}")
    if embeddings.dim() != 4 or labels.shape != (embeddings.shape[0], *embeddings.shape[2:]):
        raise ValueError(f"embeddings must be [B, D, H, W] and labels [B, H, W]; got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    labels = labels.long()
    batch, dim = embeddings.shape[:2]
    indices, present = sampled if sampled is not None else sample_class_pixels(
        labels, num_classes, pixels_per_class, generator)
    per_class = indices.shape[2]
    means, _ = class_means(embeddings, labels, num_classes)                       # [B, C, D]
    pixels = embeddings.reshape(batch, dim, -1).transpose(1, 2)                   # [B, HW, D]
    anchors = torch.gather(pixels, 1, indices.reshape(batch, -1, 1).expand(-1, -1, dim))   # [B, C*S, D]
    anchor_class = torch.arange(num_classes, device=embeddings.device).repeat_interleave(per_class)  # [C*S]
    anchor_valid = present.repeat_interleave(per_class, dim=1)                   # [B, C*S]
    mean_class = torch.arange(num_classes, device=embeddings.device)

    if mode == "inter":
        pairs = (pairs if pairs is not None else random_pairs(batch, generator)).to(embeddings.device)
        first, second = pairs[:, 0], pairs[:, 1]
        anchors = torch.cat([anchors[first], anchors[second]], dim=1)           # [P, 2CS, D]
        anchor_valid = torch.cat([anchor_valid[first], anchor_valid[second]], dim=1)
        anchor_class = anchor_class.repeat(2)
        means = torch.cat([means[first], means[second]], dim=1)                 # [P, 2C, D]
        present = torch.cat([present[first], present[second]], dim=1)
        mean_class = mean_class.repeat(2)

    positives = (anchor_class[:, None] == mean_class[None, :])[None] & present[:, None, :]
    return multi_positive_info_nce(anchors, positives, temperature=temperature, contrast=means,
                                   denominator_mask=present[:, None, :],
                                   anchor_weights=anchor_valid.to(embeddings.dtype))
