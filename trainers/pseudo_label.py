"""Chaitanya et al. (MedIA'23): joint training with a local pixel-to-class-mean contrastive loss on
labelled + pseudo-labelled images; pseudo-labels never enter the segmentation loss.

``nnUNetTrainerPseudoLabelCL_10pct`` / ``_25pct`` (and ``...Intra...`` for the intra-image loss):

1. **Phase 1** (the first ``phase1_fraction`` of all iterations, paper: 5000 of 20000): nnU-Net's own
   segmentation step on the labelled subset only (the same subset as every ``_10pct`` / ``_25pct``
   trainer: ``nnUNetTrainerCL.do_split``).
2. **Pseudo-labels** for the unlabelled rest of the fold's training cases, predicted with the current
   network (nnU-Net's sliding window, no mirroring; argmax) in preprocessed space and stored in
   ``fold_X/pseudo_labels/`` (see :mod:`nnunet_cl.pseudo_labels`). Re-estimated every P iterations of
   the joint phase (default: ``pseudo_label_rounds`` = 3 rounds, as the paper); each re-estimation
   logs its agreement with the previous round (voxel agreement, Dice per class).
3. **Phase 2** (joint): per iteration one labelled batch (nnU-Net's loader, augmentation, deep
   supervision) and one pseudo-labelled batch of the same size (a second nnU-Net loader over the
   unlabelled cases whose segmentation is the current round). One forward pass of both; the loss is

       nnU-Net's loss(outputs of the labelled images, their ground truth)
       + lambda_cont * class_mean_contrast(head(last decoder features of all images), GT + pseudo-labels)

   The segmentation loss only ever receives the labelled part of the batch -- by construction the
   pseudo-labels cannot reach it.

The contrastive head (1x1 conv -> ReLU -> 1x1 conv, 16-d output as the paper) is a trainer attribute
outside ``self.network``: it is in the optimiser (a second parameter group, same schedule), saved in
and restored from every checkpoint (``contrastive_head``, with the pseudo-label round, so ``--c``
resumes), and ``network_weights`` stays the plain nnU-Net network that stock ``nnUNetv2_predict`` loads.

Knobs (class attributes; environment variables for the test/CPU budget):
``lambda_cont`` 0.1, ``contrast_mode`` "inter" (the public code's default; "intra" variants exist),
``pixels_per_class`` 3 (|S_c|), ``contrast_temperature`` 0.1, ``embedding_dim`` 16,
``phase1_fraction`` 0.25 / ``nnUNet_cl_pseudo_phase1_iterations``,
``pseudo_label_rounds`` 3 / ``nnUNet_cl_pseudo_label_every`` (P, in iterations).

Choices where the paper / public code differ from nnU-Net or are silent (documented):
* Segmentation loss = nnU-Net's (Dice + CE with deep supervision), not the paper's Dice alone;
  optimiser and schedule are nnU-Net's (SGD, poly) for the whole run, not Adam 1e-3.
* Pseudo-labels come from the *current* network, not a restored best-validation checkpoint, and
  without CRF post-processing (the public code applies a dense CRF).
* The pseudo-labelled batches get nnU-Net's full training augmentation (labels follow the spatial
  transforms), the paper uses intensity-only augmentation for the contrastive batch.
* Foreground oversampling of the pseudo-labelled loader uses the pseudo-labels' foreground.
* Region-based datasets and multi-GPU (DDP) training are refused (clear error).
* The joint step is nnU-Net's ``train_step`` with ``self.loss`` = ``joint_loss``; its gradient clipping
  (norm 12) covers the network, not the small contrastive head.

Pre-trained init (paper Table III, "PI. + proposed"): for every registered pre-training method M,
``nnUNetTrainerPseudoLabelCL<M>Init_10pct`` / ``_25pct`` first load M's checkpoint exactly as
``nnUNetTrainer<M>Init_10pct`` does (same lookup, ``nnUNet_cl_pretrained_checkpoint`` override, same
fraction/fold checks for label-aware methods), then train as above.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_cl.decoder_features import DecoderFeatureTap, decoder_output_channels
from nnunet_cl.errors import NnunetClError
from nnunet_cl.heads import PixelProjectionHead
from nnunet_cl.label_subsets import labeled_subset
from nnunet_cl.losses.class_mean_contrast import MODES, class_mean_contrast
from nnunet_cl.pseudo_labels import PseudoLabeledDataset, PseudoLabelStore, RoundAgreement, label_dtype
from nnunet_cl.trainers.base import nnUNetTrainerCL, unwrap_network
from nnunet_cl.validation import int_env, positive_int_env

PHASE1_ENV = "nnUNet_cl_pseudo_phase1_iterations"
EVERY_ENV = "nnUNet_cl_pseudo_label_every"


def _full_resolution(target):
    """nnU-Net's target is a list over deep-supervision scales (full resolution first) or one tensor."""
    return target[0] if isinstance(target, (list, tuple)) else target


class nnUNetTrainerPseudoLabelCL(nnUNetTrainerCL):
    lambda_cont = 0.1
    contrast_mode = "inter"
    pixels_per_class = 3
    contrast_temperature = 0.1
    embedding_dim = 16
    phase1_fraction = 0.25
    pseudo_label_rounds = 3

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        total = self.num_epochs * self.num_iterations_per_epoch
        phase1 = self.settings[PHASE1_ENV]
        self.phase1_iterations = phase1 if phase1 is not None else int(round(self.phase1_fraction * total))
        if self.phase1_iterations >= total:
            # needs nnU-Net's budget, known only after its __init__ (which has created the fold folder)
            raise NnunetClError(f"phase 1 ({self.phase1_iterations} iterations, {PHASE1_ENV}) leaves no joint "
                                f"training within the {total} iterations of this run; lower it")
        every = self.settings[EVERY_ENV]
        joint = total - self.phase1_iterations
        self.pseudo_label_every = every or max(1, math.ceil(joint / self.pseudo_label_rounds))
        self.global_iteration = 0
        self.pseudo_round = 0                 # 0: no pseudo-labels yet
        self.pseudo_estimated_at = None       # iteration of the last estimation
        self.pseudo_loader = None
        self.contrastive_head = None
        self.feature_tap = None
        self.joint_step_labels = None         # pseudo-labels of the running joint step (None: none running)
        self.joint_step_terms = None          # its loss terms, for the epoch log
        self.unlabeled_cases = None
        self.store = None

    @classmethod
    def training_recipe(cls) -> str:
        return f"pseudo-label CL ({cls.contrast_mode})"

    @classmethod
    def read_settings(cls, plans: dict, fold) -> dict:
        if cls.label_fraction >= 1.0:
            raise NnunetClError(f"{cls.__name__} needs unlabelled cases: use a _10pct or _25pct variant")
        if cls.contrast_mode not in MODES:
            raise NnunetClError(f"contrast_mode {cls.contrast_mode!r} of {cls.__name__} is not one of {MODES}")
        return dict(super().read_settings(plans, fold), **{PHASE1_ENV: int_env(PHASE1_ENV, minimum=0),
                                                            EVERY_ENV: positive_int_env(EVERY_ENV)})

    # ---------------------------------------------------------------- set-up
    def initialize(self):
        super().initialize()
        if self.is_ddp:
            raise NnunetClError(f"{type(self).__name__} runs on one device only (its contrastive head is outside "
                                "the DDP-wrapped network); train without -num_gpus")
        if self.label_manager.has_regions:
            raise NnunetClError(f"{type(self).__name__} needs a label-based dataset (its loss contrasts classes); "
                                "region-based training is not supported")
        self.feature_tap = DecoderFeatureTap(unwrap_network(self.network))

    @property
    def num_contrast_classes(self) -> int:
        """Foreground classes 1..C (nnU-Net's ignore label, if any, is the highest label and excluded)."""
        return self.label_manager.num_segmentation_heads - 1

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        channels = decoder_output_channels(unwrap_network(self.network))
        self.contrastive_head = PixelProjectionHead(channels, channels, self.embedding_dim).to(self.device)
        optimizer.add_param_group({"params": list(self.contrastive_head.parameters())})
        return optimizer, scheduler

    def on_train_start(self):
        super().on_train_start()
        all_cases = self.all_training_cases()
        labeled = labeled_subset(all_cases, self.label_fraction, self.fold)
        self.unlabeled_cases = sorted(set(all_cases) - set(labeled))
        if not self.unlabeled_cases:
            raise NnunetClError(f"fold {self.fold} has no unlabelled training cases at fraction "
                                f"{self.label_fraction:g}; pseudo-label training needs some")
        self.global_iteration = self.current_epoch * self.num_iterations_per_epoch
        self.store = PseudoLabelStore(os.path.join(self.output_folder, "pseudo_labels"))
        if self.pseudo_round == 0:
            self.store.clear()   # a fresh run: stale rounds of an earlier run must not be used
        elif self.store.is_complete(self.pseudo_round):
            self.pseudo_loader = self.build_pseudo_loader(self.pseudo_round)
        self.print_to_log_file(
            f"pseudo-label joint training: {len(labeled)} labelled / {len(self.unlabeled_cases)} unlabelled cases; "
            f"phase 1 (segmentation only) {self.phase1_iterations} iterations, pseudo-labels every "
            f"{self.pseudo_label_every} iterations, lambda_cont {self.lambda_cont}, mode {self.contrast_mode}, "
            f"|S_c| {self.pixels_per_class}, tau {self.contrast_temperature}")

    def on_train_end(self):
        super().on_train_end()
        self._finish_pseudo_loader()

    # ---------------------------------------------------------------- pseudo-labels
    def _training_transforms(self):
        """nnU-Net's training transforms, built exactly as in ``nnUNetTrainer.get_dataloaders``."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, self._get_deep_supervision_scales(), mirror_axes,
            dummy_2d, use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels, regions=None,
            ignore_label=self.label_manager.ignore_label)
        return transforms, initial_patch_size

    def build_pseudo_loader(self, round_number: int):
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
        from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        self._finish_pseudo_loader()
        base = self.dataset_class(self.preprocessed_dataset_folder, list(self.unlabeled_cases),
                                  folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        transforms, initial_patch_size = self._training_transforms()
        loader = nnUNetDataLoader(PseudoLabeledDataset(base, self.store, round_number), self.batch_size,
                                  initial_patch_size, self.configuration_manager.patch_size, self.label_manager,
                                  oversample_foreground_percent=self.oversample_foreground_percent,
                                  sampling_probabilities=None, pad_sides=None, transforms=transforms,
                                  probabilistic_oversampling=self.probabilistic_oversampling)
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, num_processes=max(1, processes // 2),
                                            num_cached=max(3, processes // 2), seeds=None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def _finish_pseudo_loader(self):
        if self.pseudo_loader is not None and hasattr(self.pseudo_loader, "_finish"):
            old_stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
            try:
                self.pseudo_loader._finish()
            finally:
                sys.stdout.close()
                sys.stdout = old_stdout
        self.pseudo_loader = None

    def predict_case_labels(self, predictor, data) -> np.ndarray:
        """``(C, Z, Y, X)`` preprocessed image -> ``(1, Z, Y, X)`` argmax labels of the current network."""
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data[:], np.float32)))
        labels = self.label_manager.convert_logits_to_segmentation(logits)
        labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
        return labels[None].astype(label_dtype(max(self.label_manager.all_labels)))

    def estimate_pseudo_labels(self, iteration: int) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        start = time.time()
        round_number, previous = self.pseudo_round + 1, self.pseudo_round
        self._finish_pseudo_loader()
        self.store.start_round(round_number)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, type(self).__name__, self.inference_allowed_mirroring_axes)
        images = self.dataset_class(self.preprocessed_dataset_folder, list(self.unlabeled_cases),
                                    folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        agreement = RoundAgreement(self.label_manager.foreground_labels)
        self.set_deep_supervision_enabled(False)
        try:
            for case in self.unlabeled_cases:
                data = images.load_case(case)[0]          # only the image is used, never the case's ground truth
                labels = self.predict_case_labels(predictor, data)
                locations = DefaultPreprocessor._sample_foreground_locations(
                    labels, self.label_manager.foreground_labels, seed=1234)
                self.store.write_case(round_number, case, labels, locations)
                if self.store.is_complete(previous):
                    agreement.update(self.store.labels(previous, case), labels)
        finally:
            self.set_deep_supervision_enabled(True)
            self.network.train()
        summary = agreement.summary() if previous > 0 else {}
        self.store.finish_round(round_number, {"iteration": iteration, "epoch": self.current_epoch,
                                               "cases": list(self.unlabeled_cases),
                                               "agreement_with_previous_round": summary or None})
        self.pseudo_round, self.pseudo_estimated_at = round_number, iteration
        self.pseudo_loader = self.build_pseudo_loader(round_number)
        if summary:
            dice = ", ".join(f"{k}: {v:.4f}" if v is not None else f"{k}: n/a"
                             for k, v in summary["dice_per_class"].items())
            agreement_text = (f"agreement with round {previous}: {summary['voxel_agreement']:.2%} of voxels, "
                              f"Dice per class {{{dice}}}")
        else:
            agreement_text = "first round"
        self.print_to_log_file(f"pseudo-labels round {round_number} at iteration {iteration}: "
                               f"{len(self.unlabeled_cases)} unlabelled cases in {time.time() - start:.1f}s; "
                               f"{agreement_text}")

    def pseudo_labels_due(self, iteration: int) -> bool:
        if iteration < self.phase1_iterations:
            return False
        if self.pseudo_loader is None:
            return True     # first joint iteration, or a resume whose round is not on disk
        return (iteration - self.phase1_iterations) % self.pseudo_label_every == 0 \
            and self.pseudo_estimated_at != iteration

    # ---------------------------------------------------------------- training
    def _build_loss(self):
        """nnU-Net's loss stays ``segmentation_loss``; ``self.loss`` becomes ``joint_loss``, so nnU-Net's own
        ``train_step`` (device transfer, autocast, backward, clipping, optimiser step) runs the joint step."""
        self.segmentation_loss = super()._build_loss()
        return self.joint_loss

    def joint_loss(self, output, target):
        """nnU-Net's loss, plus ``lambda_cont`` x the contrastive loss while a joint step is running."""
        if self.joint_step_labels is None:          # phase 1 and validation: nnU-Net's loss alone
            return self.segmentation_loss(output, target)
        segmentation_loss, contrastive_loss = self.joint_loss_terms(output, target, self.feature_tap.pop(),
                                                                    self.joint_step_labels)
        self.joint_step_terms = {"loss": segmentation_loss.detach().cpu().numpy(),
                                 "contrastive_loss": contrastive_loss.detach().cpu().numpy()}
        return segmentation_loss + self.lambda_cont * contrastive_loss

    def joint_loss_terms(self, output, target, features, pseudo_labels):
        """(segmentation loss, contrastive loss) of one forward pass over labelled + pseudo-labelled images.

        ``output``: the network's output for ``[labelled images, unlabelled images]``; ``target``: nnU-Net's
        (deep-supervision) targets of the labelled images; ``features``: the last decoder stage's output of
        the same pass; ``pseudo_labels``: full-resolution pseudo-labels of the unlabelled images. Only the
        labelled part of the output and ``target`` reach ``segmentation_loss``."""
        n_labeled = _full_resolution(target).shape[0]
        labeled_output = [scale[:n_labeled] for scale in output] if isinstance(output, (list, tuple)) \
            else output[:n_labeled]
        segmentation_loss = self.segmentation_loss(labeled_output, target)
        # float32 outside nnU-Net's CUDA autocast (autocast(enabled=False) fails on some devices, as nnU-Net notes)
        with autocast(self.device.type, enabled=False) if self.device.type == "cuda" else dummy_context():
            embeddings = self.contrastive_head(features.float())
            labels = torch.cat([_full_resolution(target), pseudo_labels])[:, 0]
            contrastive_loss = class_mean_contrast(embeddings, labels, self.num_contrast_classes, self.contrast_mode,
                                                   self.pixels_per_class, self.contrast_temperature)
        return segmentation_loss, contrastive_loss

    def train_step(self, batch: dict) -> dict:
        """Phase 1: nnU-Net's step. Joint phase: nnU-Net's step on ``[labelled, pseudo-labelled]`` images with
        the labelled targets; ``joint_loss`` splits the output and adds the contrastive term."""
        iteration = self.global_iteration
        self.global_iteration += 1
        if iteration < self.phase1_iterations:
            return dict(super().train_step(batch), contrastive_loss=np.array(np.nan))
        if self.pseudo_labels_due(iteration):
            self.estimate_pseudo_labels(iteration)
        pseudo_batch = next(self.pseudo_loader)
        joint_batch = {"data": torch.cat([batch["data"], pseudo_batch["data"]]), "target": batch["target"]}
        self.joint_step_labels = _full_resolution(pseudo_batch["target"]).to(self.device, non_blocking=True)
        try:
            with self.feature_tap:
                super().train_step(joint_batch)
        finally:
            self.joint_step_labels = None
        return self.joint_step_terms

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        contrastive = np.array([float(step["contrastive_loss"]) for step in train_outputs])
        if np.isfinite(contrastive).any():
            self.print_to_log_file(f"contrastive_loss {np.nanmean(contrastive):.4f} (pseudo-label round "
                                   f"{self.pseudo_round})")

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_extras(self) -> dict:
        return {"contrastive_head": self.contrastive_head.state_dict(),
                "pseudo_label_state": {"round": self.pseudo_round, "estimated_at": self.pseudo_estimated_at}}

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise NnunetClError(f"{type(self).__name__}.load_checkpoint needs a checkpoint file path")
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        if "contrastive_head" not in checkpoint:
            raise NnunetClError(f"{filename_or_checkpoint} has no contrastive head: it was not written by "
                                f"{type(self).__name__}; train from scratch (without --c)")
        self.contrastive_head.load_state_dict(checkpoint["contrastive_head"])
        state = checkpoint.get("pseudo_label_state") or {}
        self.pseudo_round = int(state.get("round") or 0)
        self.pseudo_estimated_at = state.get("estimated_at")
