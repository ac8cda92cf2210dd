"""The one contrastive kernel of nnunet-cl: a multi-positive InfoNCE driven by a positive-pair mask.

It is the SupCon "L_out" form (Khosla et al. 2020, eq. 2; SupContrast ``losses.py``)::

    L_i = -1/|P(i)| * sum_{p in P(i)} [ s_ip - log sum_{a in D(i)} exp(s_ia) ],   s = cos / tau

where P(i) are the positives of anchor i (given by ``positive_mask``, self excluded) and D(i) the
candidates of its denominator (every other sample unless ``denominator_mask`` says otherwise).
Every method of the package is a *mask builder* feeding this function.

Choices (documented, tested):
* embeddings are L2-normalised here; the row maximum is subtracted before the log-sum-exp (detached,
  it cancels mathematically and only guards against overflow);
* anchors without any positive are left out of the mean (SupContrast counts them as zeros, which
  dilutes the loss with the number of such anchors); if no anchor has a positive the loss is an
  exact zero that still carries a graph, so callers can add it unconditionally;
* PCL/SuperCL's public code multiplies the loss by tau / tau_base (0.1 / 0.07 = 1.43). That only
  rescales the gradient (the same as a 1.43x learning rate under SGD), so it is off by default;
  pass ``tau_base=0.07`` to reproduce the reference numbers.
* Leading batch dimensions are supported: ``anchors [*, N, D]`` with masks ``[*, N, K]`` computes
  independent blocks (e.g. one block per image for ILCP) in one batched matmul, and the mean runs
  over all anchors of all blocks.
* Equal-label positives (``positive_labels`` instead of ``positive_mask``: "same superpixel", "same
  class", "same component") are the same loss computed without any ``[N, N]`` mask: the positive
  term of anchor i is ``z_i . (sum of z over its label - z_i) / tau`` (per-label sums by one
  ``index_add``), so only the denominator's log-sum-exp touches the ``[N, N]`` similarities, once.
  For ILCP (32 images x 1120 pixels) that is the difference between ~10 and ~2 passes over 40 M
  similarities. Negative labels mark ignored rows (neither anchors nor candidates).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_cl.losses.pairwise_logsumexp import PairwiseLogSumExp
from nnunet_cl.precision import at_least_float32, float32_region


def multi_positive_info_nce(
    anchors: torch.Tensor,
    positive_mask: Optional[torch.Tensor] = None,
    temperature: float = 0.1,
    contrast: Optional[torch.Tensor] = None,
    denominator_mask: Optional[torch.Tensor] = None,
    anchor_weights: Optional[torch.Tensor] = None,
    tau_base: Optional[float] = None,
    normalize: bool = True,
    reduction: str = "mean",
    positive_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Multi-positive InfoNCE (SupCon L_out).

    Args:
        anchors: ``[*, N, D]`` embeddings of the anchors.
        positive_mask: ``[*, N, K]`` bool/0-1, True where candidate k is a positive of anchor n.
        positive_labels: instead of ``positive_mask``, ``[*, N]`` integer labels: rows with the same
            label (within a block) are positives, every other valid row of the block is in the
            denominator, and rows with a negative label are ignored. Only with ``contrast=None``
            and ``denominator_mask=None``; equal to the mask form with
            ``positive_mask = labels_i == labels_j`` and both masks restricted to valid rows.
        temperature: tau.
        contrast: ``[*, K, D]`` candidates. ``None`` means the anchors themselves (K = N); then the
            self-pair (n, n) is excluded from both the positives and the denominator.
        denominator_mask: ``[*, N, K]`` candidates that enter the denominator (default: all but self).
        anchor_weights: ``[*, N]`` non-negative weight per anchor (0 = not an anchor).
        tau_base: if given, the loss is scaled by ``temperature / tau_base`` (reference-code factor).
        normalize: L2-normalise anchors and candidates first.
        reduction: ``"mean"`` (weighted mean over anchors with positives) or ``"none"``
            (per-anchor loss ``[*, N]``, 0 where the anchor has no positive).
    """
    if (positive_mask is None) == (positive_labels is None):
        raise ValueError("give exactly one of positive_mask and positive_labels")
    # Under mixed precision the whole kernel (normalisation, similarities, log-sum-exp) runs in float32:
    # at tau = 0.1 a float16 similarity is off by up to ~0.01 per logit.
    with float32_region(anchors):
        return _info_nce_float32(at_least_float32(anchors), positive_mask, temperature,
                                 None if contrast is None else at_least_float32(contrast), denominator_mask, anchor_weights,
                                 tau_base, normalize, reduction, positive_labels)


def _info_nce_float32(anchors, positive_mask, temperature, contrast, denominator_mask, anchor_weights, tau_base,
                      normalize, reduction, positive_labels):
    if positive_labels is not None:
        if contrast is not None or denominator_mask is not None:
            raise ValueError("positive_labels works on the anchors themselves: no contrast set or denominator mask")
        per_anchor, weights = _equal_label_terms(anchors, positive_labels, temperature, normalize)
        return _reduce(per_anchor, weights, anchor_weights, temperature, tau_base, reduction, anchors)
    self_contrast = contrast is None
    if normalize:
        anchors = F.normalize(anchors, dim=-1)
        contrast = anchors if self_contrast else F.normalize(contrast, dim=-1)
    elif self_contrast:
        contrast = anchors
    logits = torch.matmul(anchors, contrast.transpose(-1, -2)) / temperature

    positives = positive_mask.to(torch.bool)
    if denominator_mask is None:
        in_denominator = torch.ones_like(logits, dtype=torch.bool)
    else:
        in_denominator = denominator_mask.to(torch.bool).expand_as(logits)
    if self_contrast:
        not_self = ~torch.eye(logits.shape[-1], dtype=torch.bool, device=logits.device)
        in_denominator = in_denominator & not_self
        positives = positives & not_self
    positives = positives.expand_as(logits)

    masked_logits = logits.masked_fill(~in_denominator, float("-inf"))
    row_max = masked_logits.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    logits = logits - row_max
    log_denominator = torch.logsumexp(masked_logits - row_max, dim=-1, keepdim=True)
    log_prob = logits - log_denominator

    n_positives = positives.sum(dim=-1)
    has_positive = n_positives > 0
    # torch.where, not multiplication: log_prob is +inf on rows with an empty denominator.
    sum_log_prob_pos = torch.where(positives & has_positive[..., None], log_prob, torch.zeros_like(log_prob)).sum(-1)
    per_anchor = -sum_log_prob_pos / n_positives.clamp(min=1)
    return _reduce(per_anchor, has_positive, anchor_weights, temperature, tau_base, reduction, logits)


def _equal_label_terms(anchors: torch.Tensor, labels: torch.Tensor, temperature: float, normalize: bool):
    """Per-anchor loss ``[*, N]`` and whether each anchor has a positive, for equal-label positives."""
    if labels.shape != anchors.shape[:-1]:
        raise ValueError(f"positive_labels {tuple(labels.shape)} must match the anchors {tuple(anchors.shape[:-1])}")
    z = F.normalize(anchors, dim=-1) if normalize else anchors
    n, dim = z.shape[-2], z.shape[-1]
    blocks = z.reshape(-1, n, dim)
    labels = labels.reshape(-1, n).to(device=z.device, dtype=torch.long)
    valid = labels >= 0

    log_denominator = PairwiseLogSumExp.apply(blocks, valid, temperature)

    # Positives: z_i . (S_label(i) - z_i), with S the per-(block, label) sum of the valid rows. Ignored
    # rows are summed into one extra slot (no boolean indexing: its backward is a slow index_put).
    num_labels = int(labels.max().clamp(min=0)) + 1
    num_slots = blocks.shape[0] * num_labels
    keys = torch.arange(blocks.shape[0], device=z.device)[:, None] * num_labels + labels
    keys = torch.where(valid, keys, torch.full_like(keys, num_slots))
    label_sums = blocks.new_zeros(num_slots + 1, dim).index_add_(0, keys.flatten(), blocks.reshape(-1, dim))
    label_counts = torch.bincount(keys.flatten(), minlength=num_slots + 1)
    n_positives = torch.where(valid, label_counts[keys] - 1, torch.zeros_like(keys))
    positive_logits = ((blocks * label_sums[keys]).sum(-1) - (blocks * blocks).sum(-1)) / temperature
    has_positive = n_positives > 0
    per_anchor = log_denominator - positive_logits / n_positives.clamp(min=1)
    per_anchor = torch.where(has_positive, per_anchor, torch.zeros_like(per_anchor))
    shape = anchors.shape[:-1]
    return per_anchor.reshape(shape), has_positive.reshape(shape)


def _reduce(per_anchor, has_positive, anchor_weights, temperature, tau_base, reduction, graph_source):
    """Weighted mean over the anchors that have a positive (or the per-anchor losses)."""
    if tau_base is not None:
        per_anchor = per_anchor * (temperature / tau_base)

    weights = has_positive.to(per_anchor.dtype)
    if anchor_weights is not None:
        weights = weights * anchor_weights.to(per_anchor.dtype)
    if reduction == "none":
        return per_anchor * (weights > 0)
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    total_weight = weights.sum()
    if total_weight <= 0:
        # No anchor has a positive: an exact zero that keeps the graph (so .backward() works).
        return (graph_source * 0.0).sum()
    return (per_anchor * weights).sum() / total_weight


class MultiPositiveInfoNCE(nn.Module):
    """``nn.Module`` wrapper of :func:`multi_positive_info_nce` with a fixed temperature."""

    def __init__(self, temperature: float = 0.1, tau_base: Optional[float] = None):
        super().__init__()
        self.temperature = temperature
        self.tau_base = tau_base

    def forward(self, anchors, positive_mask, **kwargs):
        return multi_positive_info_nce(anchors, positive_mask, temperature=self.temperature,
                                       tau_base=self.tau_base, **kwargs)
