"""SuperCL (Zeng et al., "Superpixel Guided Contrastive Learning for Medical Image Segmentation
Pre-training"): ``L = lambda_ins * L_ins + lambda_intra * L_intra + lambda_inter * L_inter``.

Per slice of the batch, two views of each pipeline:

* T_var (spatial + intensity, ``views``) -> full encoder -> instance head (the PCL head) -> ``z``;
* T_fix (intensity only, ``fixed_views``; pixel-aligned with the cached superpixel map) -> encoder
  stages up to ``feature_stage`` -> feature maps ``f``.

Terms, all through the one contrastive kernel:

* ``ins``   (L_ins): PCL's position mask on ``z`` (``base_loss=pcl``, the paper's choice) or WCL's
  instance discrimination, the other view as the one positive (``base_loss=wcl``, the paper's
  second ablation base);
* ``intra`` (L_intra, ILCP): pixels of ``f`` in the same superpixel are positives, within an image
  (``nnunet_cl.losses.ilcp``);
* ``inter`` (L_inter, IGCP): ASP maps of ``f`` (both T_fix views) -> CCL components -> SupCon on ``z``
  (``nnunet_cl.losses.asp`` / ``ccl``).

Defaults from the paper and its code: tau 0.1, lambdas 1 / 1 / 0.5, 100 superpixels per 32 x 32 map,
learning rate 0.01 (the code's; its README says 0.1), ILCP stride 1 (the paper's setting and best row
of its Table IV; the public code keeps every 16th pixel, ``-o ilcp_stride=16``). ILCP costs
``B * (2P)^2`` similarities per step and dominates the loss time on CPU: ``scripts/bench_supercl.py``
prints its share for strides 1 / 2 / 4 / 16. A term with lambda 0 is not
computed (the T_fix views are skipped when neither ILCP nor IGCP is on), which gives the paper's
ablations: PCL + ILCP (``-o lambda_inter=0``), PCL + IGCP (``-o lambda_intra=0``), and the same on the
WCL base (``-o base_loss=wcl``); plain WCL is ``-m wcl``.

Choices where the paper is silent or the code differs (documented in the modules named):
superpixels are cached per preprocessed slice instead of recomputed per view
(``pretraining/superpixels.py``); the ILCP stage defaults to the highest-resolution encoder stage with
at most 32 x 32 pixels (the reference uses the bottleneck, which is 32 x 32 at its 512^2 input);
ASP is a true average; a batch whose CCL graph is one component has no IGCP negatives, so the term
is skipped for it (with a warning) rather than pulling the whole batch together; CCL's neighbour
search skips the image's own other view (``nnunet_cl/losses/ccl.py`` explains why; option
``ccl_exclude_own_views=false`` restores the reference code's search).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from nnunet_cl import distributed
from nnunet_cl.errors import NnunetClError
from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.losses.asp import average_superpixel_map
from nnunet_cl.losses.ccl import igcp_positive_mask
from nnunet_cl.losses.ilcp import ilcp_loss
from nnunet_cl.masks import same_sample_positive_mask
from nnunet_cl.pretraining.methods import register
from nnunet_cl.pretraining.methods.instance import PCL
from nnunet_cl.pretraining.superpixels import (SlicParameters, SuperpixelCache, build_superpixel_cache,
                                               default_feature_stage, default_n_segments, feature_map_shape,
                                               majority_downsample, stage_downsampling)
from nnunet_cl.pretraining.views import apply_per_sample, intensity_pipeline
from nnunet_cl.validation import int_at_least, loss_weights, positive_finite_float, positive_int

BASE_LOSSES = ("pcl", "wcl")


def encoder_stage_outputs(encoder, x: torch.Tensor, last_stage: int) -> list:
    """Outputs of encoder stages ``0..last_stage`` only (the deeper stages are not computed)."""
    stem = getattr(encoder, "stem", None)
    if stem is not None:
        x = stem(x)
    outputs = []
    for stage in encoder.stages[: last_stage + 1]:
        x = stage(x)
        outputs.append(x)
    return outputs


def cache_processes() -> int:
    """Processes for building the superpixel cache: nnU-Net's ``nnUNet_def_n_proc`` if set, else 2."""
    try:
        return max(1, int(os.environ.get("nnUNet_def_n_proc", "2")))
    except ValueError:
        return 2


@register
class SuperCL(PCL):
    supports_distributed = True   # z, feature maps and superpixels are gathered: ILCP and CCL see the global batch
    name = "supercl"
    trainer_name = "SuperCL"
    default_lr = 0.01
    default_options = {
        **PCL.default_options,
        "base_loss": "pcl",
        "lambda_ins": 1.0,
        "lambda_intra": 1.0,
        "lambda_inter": 0.5,
        "feature_stage": -1,        # -1: highest-resolution stage with <= 32 x 32 pixels
        "ilcp_stride": 1,
        "ccl_exclude_own_views": True,   # False: the reference code's neighbour search (see losses/ccl.py)
        "n_segments": 0,            # superpixels per patch; 0: 100 per 32 x 32 feature-map pixels
        "compactness": 0.1,
        "slic_iterations": 5,
    }

    def __init__(self, network, context, options=None):
        super().__init__(network, context, options)
        self.stage, self.feature_shape, self.slic_parameters = self.geometry(
            self.patch_size, network.encoder.strides, self.options)
        self.feature_factor = stage_downsampling(network.encoder.strides, self.stage)
        self.intensity_views = intensity_pipeline()
        self.uses_fixed_views = self.options["lambda_intra"] > 0 or self.options["lambda_inter"] > 0
        self.uses_instance_views = self.options["lambda_ins"] > 0 or self.options["lambda_inter"] > 0
        self.superpixels = None
        if self.uses_fixed_views:
            # "nnunet_cl pretrain -m supercl" computes the cache first if it is missing (under torchrun
            # rank 0 builds it while the others wait).
            if distributed.is_main_process():
                build_superpixel_cache(context.data_folder, self.slic_parameters, num_processes=cache_processes())
            distributed.barrier()
        self.reset_statistics()

    # ------------------------------------------------------------------ options and geometry
    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        if options["base_loss"] not in BASE_LOSSES:
            raise NnunetClError(f"supercl option base_loss={options['base_loss']!r} must be one of {BASE_LOSSES}")
        loss_weights(options, ("lambda_ins", "lambda_intra", "lambda_inter"), "supercl")
        positive_int(options["ilcp_stride"], "supercl option ilcp_stride")
        int_at_least(options["n_segments"], 0, "supercl option n_segments", "0 = automatic")
        int_at_least(options["feature_stage"], -1, "supercl option feature_stage", "-1 = automatic")
        positive_finite_float(options["compactness"], "supercl option compactness")
        positive_int(options["slic_iterations"], "supercl option slic_iterations")

    @classmethod
    def geometry(cls, patch_size, strides, options: dict) -> tuple:
        """(feature stage, its map shape, SLIC parameters) for a patch size and the encoder's strides."""
        stage = options["feature_stage"]
        if stage < 0:
            stage = default_feature_stage(patch_size, strides)
        feature_shape = feature_map_shape(patch_size, strides, stage)
        n_segments = options["n_segments"] or default_n_segments(feature_shape)
        params = SlicParameters(n_segments=int(n_segments), patch_size=tuple(int(p) for p in patch_size),
                                compactness=float(options["compactness"]),
                                max_num_iter=int(options["slic_iterations"]))
        return stage, feature_shape, params

    @classmethod
    def folder_name(cls, options: dict) -> str:
        """``supercl`` for the defaults; ablations / sweeps get their non-default options appended
        (e.g. ``supercl_n_segments-100``) so they never overwrite each other."""
        changed = [f"{k}-{v}" for k, v in sorted(options.items()) if k in cls.default_options
                   and v != cls.default_options[k]]
        return "_".join([cls.name] + changed)

    # ------------------------------------------------------------------ batches
    def superpixel_cache(self, slices) -> SuperpixelCache:
        if self.superpixels is None or self.superpixels.slices is not slices:
            self.superpixels = SuperpixelCache.ensure(slices, self.slic_parameters, num_processes=cache_processes())
        return self.superpixels

    def make_batch(self, slices, batch_size, rng):
        windows = slices.sample_windows(batch_size, rng)
        images = slices.images(windows)
        batch = {"positions": torch.tensor([w.position for w in windows], dtype=torch.float32)}
        if self.uses_instance_views:
            batch["views"] = torch.cat([apply_per_sample(self.spatial_views, images) for _ in range(2)])
        if self.uses_fixed_views:
            batch["fixed_views"] = torch.cat([apply_per_sample(self.intensity_views, images) for _ in range(2)])
            maps = self.superpixel_cache(slices).patches(windows)
            batch["superpixels"] = torch.from_numpy(majority_downsample(maps, self.feature_factor).astype(np.int64))
        return batch

    # ------------------------------------------------------------------ loss
    def positive_mask(self, batch):
        if self.options["base_loss"] == "wcl":
            return same_sample_positive_mask(len(batch["positions"]), n_views=2)
        return super().positive_mask(batch)

    def compute_loss(self, network, batch):
        options, temperature = self.options, self.options["temperature"]
        terms, total = {}, 0.0
        # Under torchrun every term sees the global batch (all ranks, view-major; nnunet_cl.distributed).
        global_batch = dict(batch, positions=distributed.gather(batch["positions"]))
        if self.uses_instance_views:
            z = distributed.gather_views(self.instance_projections(network, batch["views"]), n_views=2)
        if options["lambda_ins"] > 0:
            ins = multi_positive_info_nce(z, self.positive_mask(global_batch).to(z.device), temperature=temperature)
            total = total + options["lambda_ins"] * ins
            terms["ins"] = float(ins.detach())
        if self.uses_fixed_views:
            fixed = encoder_stage_outputs(network.encoder, batch["fixed_views"], self.stage)[-1]
            fixed = distributed.gather_views(fixed, n_views=2)
            superpixels = distributed.gather(batch["superpixels"].to(fixed.device))
            view1, view2 = fixed.chunk(2)
        if options["lambda_intra"] > 0:
            intra, _ = ilcp_loss(view1, view2, superpixels, temperature, stride=options["ilcp_stride"])
            total = total + options["lambda_intra"] * intra
            terms["intra"] = float(intra.detach())
        if options["lambda_inter"] > 0:
            asp = average_superpixel_map(fixed, torch.cat([superpixels, superpixels]))
            mask, components = igcp_positive_mask(asp, n_views=2,
                                                  exclude_own_views=options["ccl_exclude_own_views"])
            self.record_components(components)
            inter = z.sum() * 0.0           # one component: no negatives, the term is skipped
            if components > 1:
                inter = multi_positive_info_nce(z, mask, temperature=temperature)
            total = total + options["lambda_inter"] * inter
            terms["inter"] = float(inter.detach())
        return total, terms

    # ------------------------------------------------------------------ statistics
    def reset_statistics(self) -> None:
        self._component_counts: list = []
        self._warned_collapse = False

    def record_components(self, components: int) -> None:
        self._component_counts.append(components)
        if components == 1 and not self._warned_collapse:
            print("nnunet_cl: warning: CCL joined the whole batch into one component (all ASP maps are each "
                  "other's neighbours); IGCP is skipped for such batches. If it persists, lower lambda_inter or "
                  "check the superpixels (nnunet_cl show-superpixels)", file=sys.stderr, flush=True)
            self._warned_collapse = True

    def epoch_statistics(self) -> dict:
        counts = self._component_counts
        statistics = {}
        if counts:
            statistics = {"ccl_components": float(np.mean(counts)),
                          "ccl_collapsed_batches": float(sum(c == 1 for c in counts))}
        self.reset_statistics()
        return statistics
