"""Hu et al. (MICCAI'21): global contrast, then supervised local contrast on the few labelled cases.

``nnunet_cl pretrain -d D -m semi_local --fraction 0.1 --fold 0`` runs two stages in one run:

1. **Global** (the first ``stage1_fraction`` of the epochs): SimCLR or PCL (``-o global_method=pcl``)
   on the encoder bottleneck, on the slices of *all* preprocessed cases -- the same data the simclr /
   pcl methods use (images only, no labels).
2. **Supervised local** (the remaining epochs): two pixel-aligned intensity views of labelled slices
   -> the whole U-Net -> the last decoder stage's full-resolution map -> a 1x1-conv projection head
   -> :func:`nnunet_cl.losses.supervised_local.supervised_local_contrast` (``-o strategy=stride|block``).
   Encoder and the whole decoder train; the segmentation layers are not used.

The labelled slices come from exactly the subset the ``_10pct`` / ``_25pct`` fine-tuning trainers of
the same fold use (``nnunet_cl.splits.labeled_cases_of_fold`` -> ``label_subsets.labeled_subset`` on
the fold of ``splits_final.json``, created as nnU-Net would if missing). The results folder is
``semi_local_frac<percent>_fold<fold>``, and ``nnUNetTrainerSemiLocalInit_10pct`` / ``_25pct`` refuse a
checkpoint made for another fraction or fold. They load encoder, decoder stages and transposed
convolutions (``pretrained_prefixes``); the segmentation layers start fresh. There is no 100 % trainer
(there would be no unlabelled data, and the method is about the few labels).

Choices where the paper / public code are silent or differ (documented here, tested):
* One run, two stages; the cosine learning-rate schedule restarts at the stage boundary (the paper
  trains the stages as separate runs; the engine's SGD is shared, the local stage's head is new).
  ``stage1_fraction`` 0.5 of the epochs (the public scripts: 100 SimCLR epochs, then 60 local ones);
  ``stage1_fraction=0`` gives the paper's "local only" ablation. The stage boundary is an epoch
  boundary, so every epoch's log line belongs to one stage.
* Stage 1 is the package's registered SimCLR / PCL with their own defaults (tau 0.1, GAP -> MLP head with
  batch standardisation); the public stage 1 is NT-Xent with tau 0.5 on a 512 -> 256 head.
* Stage-2 batch: ``stage2_batch_size`` slices per process (default 4 = ``run_coseg.sh``; 0 = the
  engine's batch), drawn uniformly from the labelled cases; a batch without foreground gives a zero
  loss (as the public code's skip). Under torchrun the projected maps and labels of every process are
  gathered, so the contrast runs over the global stage-2 batch (processes x ``stage2_batch_size``).
* Views: the package's pixel-aligned intensity pipeline (brightness, contrast, gamma, blur, noise);
  the public code uses brightness, gamma and noise.
* Projection head: the package's ``PixelProjectionHead`` (1x1 conv -> ReLU -> 1x1 conv,
  ``local_hidden_dim`` 256 -> ``local_projection_dim`` 128 as the public code's sizes); the public head
  has no non-linearity between its two 1x1 convolutions (so it collapses to one linear map).
* tau = 0.1 (``run_coseg.sh``) and no tau/tau_base factor (the public ``SupConLoss`` applies none).
* The per-term log shows ``global`` and ``local``; the term of the inactive stage is NaN (a gap in
  progress.png), so epoch means are never mixed across stages.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nnunet_cl import distributed
from nnunet_cl.decoder_features import DecoderFeatureTap, decoder_output_channels
from nnunet_cl.errors import NnunetClError
from nnunet_cl.heads import PixelProjectionHead
from nnunet_cl.label_subsets import check_label_fraction
from nnunet_cl.losses.supervised_local import STRATEGIES, supervised_local_contrast
from nnunet_cl.masks import tile_views
from nnunet_cl.pretraining.methods import get_method, register
from nnunet_cl.pretraining.methods.base import PretrainingMethod
from nnunet_cl.pretraining.methods.instance import check_position_threshold
from nnunet_cl.pretraining.slices import PreprocessedSlices
from nnunet_cl.pretraining.views import apply_per_sample, intensity_pipeline
from nnunet_cl.splits import check_fold_exists, labeled_cases_of_fold, parse_fold
from nnunet_cl.validation import finite_float, int_at_least, one_of, positive_finite_float, positive_int

GLOBAL_METHODS = ("simclr", "pcl")


def stage1_epochs(options: dict, epochs: int) -> int:
    """Epochs of the global stage; the local stage gets the rest."""
    if options["stage1_fraction"] == 0:
        return 0
    if epochs < 2:
        raise NnunetClError("semi_local runs a global and a local stage: use --epochs >= 2, or "
                            "-o stage1_fraction=0 for the local stage alone")
    return max(1, min(epochs - 1, round(options["stage1_fraction"] * epochs)))


@register
class SemiLocal(PretrainingMethod):
    name = "semi_local"
    trainer_name = "SemiLocal"
    supports_distributed = True   # stage 1: SimCLR / PCL gather; stage 2 gathers maps and labels below
    pretrained_prefixes = ("encoder.", "decoder.stages.", "decoder.transpconvs.")
    label_fractions = (0.1, 0.25)
    # A "module:Class" string: this module must not import nnunet_cl.trainers (import cycle with its registry).
    init_trainer_base = "nnunet_cl.trainers.label_aware_init:nnUNetTrainerLabelAwarePretrainedInit"
    default_options = {
        "fraction": None,            # required: --fraction
        "fold": "0",                 # --fold
        "global_method": "simclr",
        "stage1_fraction": 0.5,
        "global_temperature": 0.1,
        "projection_dim": 128,
        "position_threshold": 0.1,
        "strategy": "stride",
        "stride": 4,
        "block_size": 16,
        "temperature": 0.1,
        "local_hidden_dim": 256,
        "local_projection_dim": 128,
        "stage2_batch_size": 4,
    }

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        if options["fraction"] is None:
            raise NnunetClError("method semi_local needs the labelled fraction: add --fraction 0.1 (or 0.25) and "
                                "--fold F, as the fine-tuning trainer (nnUNetTrainerSemiLocalInit_10pct, fold F)")
        options["fraction"] = check_label_fraction(options["fraction"])
        options["fold"] = str(parse_fold(options["fold"]))
        one_of(options["global_method"], GLOBAL_METHODS, "semi_local option global_method")
        one_of(options["strategy"], STRATEGIES, "semi_local option strategy")
        finite_float(options["stage1_fraction"], "semi_local option stage1_fraction", low=0.0, high=1.0,
                     high_open=True, why="0 = supervised local stage only")
        positive_finite_float(options["global_temperature"], "semi_local option global_temperature")
        check_position_threshold(options["position_threshold"], "semi_local option position_threshold")
        for key in ("stride", "block_size", "local_hidden_dim", "local_projection_dim", "projection_dim"):
            positive_int(options[key], f"semi_local option {key}")
        int_at_least(options["stage2_batch_size"], 0, "semi_local option stage2_batch_size", "0 = --batch-size")

    @classmethod
    def folder_name(cls, options: dict) -> str:
        return f"{cls.name}_frac{options['fraction'] * 100:g}_fold{options['fold']}"

    def __init__(self, network, context, options=None):
        super().__init__(network, context, options)
        options = self.options   # resolved: every option typed, defaults filled in
        global_options = {"temperature": options["global_temperature"],
                          "projection_dim": options["projection_dim"]}
        if options["global_method"] == "pcl":
            global_options["position_threshold"] = options["position_threshold"]
        self.global_contrast = get_method(options["global_method"])(network, context, global_options)
        self.local_head = PixelProjectionHead(decoder_output_channels(network), options["local_hidden_dim"],
                                              options["local_projection_dim"])
        self.intensity_views = intensity_pipeline()
        self.tap = DecoderFeatureTap(network)
        # Stage 1 reads every case; the engine's slices (``case_ids``) are the labelled subset for stage 2.
        self.all_slices = PreprocessedSlices(context.data_folder, context.patch_size) \
            if options["stage1_fraction"] > 0 else None
        self.stage = 1 if options["stage1_fraction"] > 0 else 2

    # ---------------------------------------------------------------- data
    def case_ids(self, context) -> list:
        check_fold_exists(context.preprocessed_folder, self.options["fold"])
        return labeled_cases_of_fold(context.preprocessed_folder, context.data_folder, self.options["fraction"],
                                     self.options["fold"])

    # ---------------------------------------------------------------- schedule (engine hooks)
    @classmethod
    def check_schedule(cls, options: dict, epochs: int, iters_per_epoch: int) -> None:
        stage1_epochs(options, epochs)

    def stage1_epochs(self, epochs: int) -> int:
        return stage1_epochs(self.options, epochs)

    def begin_iteration(self, iteration: int, epochs: int, iters_per_epoch: int) -> None:
        self.stage = 1 if iteration < self.stage1_epochs(epochs) * iters_per_epoch else 2

    def lr_cycle(self, iteration: int, epochs: int, iters_per_epoch: int) -> tuple:
        """(first iteration, length) of the cosine cycle: one per stage."""
        boundary = self.stage1_epochs(epochs) * iters_per_epoch
        total = epochs * iters_per_epoch
        return (0, boundary) if iteration < boundary else (boundary, total - boundary)

    # ---------------------------------------------------------------- batches and loss
    def make_batch(self, slices, batch_size, rng):
        if self.stage == 1:
            return self.global_contrast.make_batch(self.all_slices, batch_size, rng)
        n = self.options["stage2_batch_size"] or batch_size
        windows = slices.sample_windows(n, rng)
        images = slices.images(windows)
        labels = np.stack([slices.segmentation(w)[0] for w in windows]).astype(np.int64)
        views = torch.cat([apply_per_sample(self.intensity_views, images),
                           apply_per_sample(self.intensity_views, images)])
        return {"views": views, "labels": torch.from_numpy(labels)}

    def compute_loss(self, network, batch):
        if "labels" not in batch:
            loss, _ = self.global_contrast.compute_loss(network, batch)
            return loss, {"global": float(loss.detach()), "local": math.nan}
        with self.tap:
            network(batch["views"])
        embeddings = distributed.gather_views(self.local_head(self.tap.pop()), n_views=2)
        labels = distributed.gather(batch["labels"])
        options = self.options
        loss = supervised_local_contrast(embeddings, tile_views(labels, 2), options["strategy"],
                                         options["stride"], options["block_size"], options["temperature"])
        return loss, {"global": math.nan, "local": float(loss.detach())}
