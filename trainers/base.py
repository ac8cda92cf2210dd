"""Base nnUNetTrainer of nnunet-cl: label fractions, CPU-friendly budget variables, atomic checkpoints.

Budget environment variables (unset: nnU-Net's own recipe):
``nnUNet_cl_num_epochs``, ``nnUNet_cl_num_iterations_per_epoch``, ``nnUNet_cl_batch_size`` and
``nnUNet_cl_num_val_iterations_per_epoch``; ``nnUNet_cl_save_every`` (epochs between checkpoint_latest.pth).
``nnUNet_cl_num_threads`` sets torch's CPU threads (nnUNetv2_train otherwise uses one per core, which on a
machine shared with other jobs makes OpenMP threads spin).
``nnUNet_cl_plot_every=N`` redraws progress.png every N epochs and after the last one (nnU-Net: every epoch;
drawing it costs about as much as a few training iterations of a small 2d network on a CPU).
``nnUNet_cl_val_mirroring=0`` runs the final validation without test-time mirroring (4x fewer forward passes
for 2d; used by the benchmark's ``cpu`` preset). The checkpoint keeps the mirror axes, so ``nnUNetv2_predict``
still mirrors unless given ``--disable_tta``.
``nnUNet_cl_finetune_schedule`` / ``nnUNet_cl_finetune_peak_lr``: optimiser and lr curve
(:mod:`nnunet_cl.trainers.finetune_schedules`; unset: nnU-Net's).
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cl.atomic import atomic_torch_save, atomic_write_json, remove_stale_temps
from nnunet_cl.errors import NnunetClError
from nnunet_cl.label_subsets import check_label_fraction, labeled_subset
from nnunet_cl.trainers.finetune_schedules import SCHEDULE_ENV, FinetuneChoice, FinetuneSchedule, parameters_under
from nnunet_cl.splits import check_fold_exists
from nnunet_cl.validation import positive_int_env

BUDGET_VARIABLES = {
    "nnUNet_cl_num_epochs": "num_epochs",
    "nnUNet_cl_num_iterations_per_epoch": "num_iterations_per_epoch",
    "nnUNet_cl_num_val_iterations_per_epoch": "num_val_iterations_per_epoch",
    # checkpoint_latest.pth every N epochs (nnU-Net: 50), so an interrupted short run resumes with --c
    "nnUNet_cl_save_every": "save_every",
}


def unwrap_network(network):
    """The plain nn.Module behind DDP / torch.compile wrappers."""
    if hasattr(network, "module"):
        network = network.module
    return getattr(network, "_orig_mod", network)


class nnUNetTrainerCL(nnUNetTrainer):
    """Common base of every nnunet-cl trainer (100 % labels, nnU-Net init)."""

    label_fraction = 1.0
    pretraining_method: str = ""   # the registered method whose checkpoint the trainer loads ("": none)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # Checked before nnU-Net's __init__ creates the fold folder and its log file.
        settings = self.read_settings(plans, fold)
        finetune_choice = FinetuneChoice()
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.settings = settings
        for variable, attribute in BUDGET_VARIABLES.items():
            if settings[variable] is not None:
                setattr(self, attribute, settings[variable])
        self.validation_mirroring = settings["nnUNet_cl_val_mirroring"]
        self.plot_every = settings["nnUNet_cl_plot_every"] or 1
        if settings["nnUNet_cl_num_threads"] is not None:
            torch.set_num_threads(settings["nnUNet_cl_num_threads"])
        self.finetune_schedule = self.make_finetune_schedule(finetune_choice)
        if self.is_ddp and self.finetune_schedule.decoder_only(0):
            raise NnunetClError(f"{SCHEDULE_ENV}={self.finetune_schedule.name} freezes part of the network, which "
                                "DistributedDataParallel does not allow mid-run; train on one GPU or choose another "
                                "schedule")
        self.initial_lr = self.finetune_schedule.peak_lr
        self.decoder_only_phase = None    # unknown until the first epoch starts

    def make_finetune_schedule(self, choice: FinetuneChoice) -> FinetuneSchedule:
        """The run's optimiser and lr curve (default: the one ``nnUNet_cl_finetune_schedule`` names; a variant
        trainer may return a fixed one). Pre-trained starts (a ``pretraining_method``) get the schedules'
        pre-trained defaults, e.g. a lower peak lr."""
        return choice.schedule(self.num_epochs, pretrained=bool(self.pretraining_method), nnunet_lr=self.initial_lr)

    def decoder_phase_frozen_prefixes(self) -> tuple:
        """State-dict prefixes that a decoder-only phase freezes (Init trainers: the part they loaded)."""
        return ("encoder.",)

    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()    # nnU-Net's SGD + poly at self.initial_lr
        optimizer = self.finetune_schedule.make_optimizer(optimizer, self.network.parameters())
        return optimizer, self.finetune_schedule.make_lr_scheduler(optimizer, lr_scheduler)

    def set_decoder_only(self, decoder_only: bool) -> None:
        """Freeze (``requires_grad=False``) or release the decoder phase's frozen part. A frozen parameter gets no
        gradient, and SGD / Adam skip parameters without one: neither momentum nor weight decay moves it."""
        if decoder_only == self.decoder_only_phase:
            return
        prefixes = self.decoder_phase_frozen_prefixes()
        frozen = parameters_under(unwrap_network(self.network), prefixes)
        for parameter in frozen:
            parameter.requires_grad_(not decoder_only)
        if decoder_only:
            self.print_to_log_file(f"{self.finetune_schedule.name}: decoder-only phase, {len(frozen)} parameter "
                                   f"tensors under {list(prefixes)} frozen")
        elif self.decoder_only_phase is not None:
            self.print_to_log_file(f"{self.finetune_schedule.name}: whole network trains from epoch "
                                   f"{self.current_epoch}")
        self.decoder_only_phase = decoder_only

    def on_train_start(self):
        if self.local_rank == 0 and os.path.isdir(self.output_folder):
            for name in remove_stale_temps(self.output_folder):
                self.print_to_log_file(f"removed {name}, left by an interrupted checkpoint write")
        super().on_train_start()
        self.print_to_log_file(f"fine-tuning schedule {self.finetune_schedule.name} ({SCHEDULE_ENV}): "
                               f"{self.finetune_schedule.describe()}")

    def on_train_epoch_start(self):
        self.set_decoder_only(self.finetune_schedule.decoder_only(self.current_epoch))
        super().on_train_epoch_start()

    @classmethod
    def training_recipe(cls) -> str:
        """How the trainer trains, for ``nnunet_cl trainers``."""
        return "nnU-Net"

    @classmethod
    def initialisation(cls) -> str:
        """What the trainer loads before training, for ``nnunet_cl trainers``."""
        return "nothing (nnU-Net's initialisation)"

    @classmethod
    def read_settings(cls, plans: dict, fold) -> dict:
        """The class's label fraction, the fold and every ``nnUNet_cl_*`` variable the trainer reads, each
        parsed and checked here (the one place for them): ``{variable: value or None when unset}``.
        Subclasses add their variables through ``super()``."""
        from nnunetv2.paths import nnUNet_preprocessed
        check_label_fraction(cls.label_fraction)
        if nnUNet_preprocessed:
            check_fold_exists(os.path.join(nnUNet_preprocessed, plans["dataset_name"]), fold)
        settings = {variable: positive_int_env(variable) for variable in
                    (*BUDGET_VARIABLES, "nnUNet_cl_batch_size", "nnUNet_cl_num_threads", "nnUNet_cl_plot_every")}
        mirroring = os.environ.get("nnUNet_cl_val_mirroring", "1")
        if mirroring not in ("0", "1"):
            raise NnunetClError(f"nnUNet_cl_val_mirroring={mirroring!r} must be 0 (no mirroring in the final "
                                f"validation) or 1 (nnU-Net's default)")
        settings["nnUNet_cl_val_mirroring"] = mirroring
        return settings

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if self.settings["nnUNet_cl_batch_size"] is not None:
            self.batch_size = self.settings["nnUNet_cl_batch_size"]

    def all_training_cases(self) -> list:
        """The fold's training cases before the label fraction is applied."""
        return list(super().do_split()[0])

    def do_split(self):
        train, val = super().do_split()
        if self.label_fraction >= 1.0:
            labeled = sorted(train)
        else:
            labeled = labeled_subset(train, self.label_fraction, self.fold)
        self.print_to_log_file(f"Label-limited ({self.label_fraction:.0%}): using {len(labeled)}/{len(train)} "
                               f"training cases: {labeled}")
        if self.local_rank == 0:
            atomic_write_json({"label_fraction": self.label_fraction, "fold": self.fold,
                               "num_training_cases_in_fold": len(train), "labeled_cases": labeled,
                               "unlabeled_cases": sorted(set(train) - set(labeled))},
                              os.path.join(self.output_folder, "labeled_cases.json"))
        return labeled, val

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.validation_mirroring == "1":
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("Final validation without test-time mirroring (nnUNet_cl_val_mirroring=0)")
        mirror_axes = self.inference_allowed_mirroring_axes
        self.inference_allowed_mirroring_axes = None
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = mirror_axes

    def draws_progress_plot(self, epoch: int) -> bool:
        """Whether progress.png is redrawn at the end of ``epoch`` (0-based): every ``plot_every``-th and the last."""
        return (epoch + 1) % self.plot_every == 0 or epoch >= self.num_epochs - 1

    def on_epoch_end(self):
        if self.draws_progress_plot(self.current_epoch):
            return super().on_epoch_end()
        # nnU-Net draws unconditionally inside on_epoch_end; skip that one call, keep everything else it does.
        self.logger.plot_progress_png = lambda output_folder: None
        try:
            return super().on_epoch_end()
        finally:
            del self.logger.plot_progress_png

    def checkpoint_contents(self) -> dict:
        """What ``nnUNetTrainer.save_checkpoint`` (nnunetv2 2.8) writes, plus ``checkpoint_extras``."""
        return dict({
            "network_weights": unwrap_network(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }, **self.checkpoint_extras())

    def checkpoint_extras(self) -> dict:
        """State a subclass keeps outside the network (e.g. a contrastive head), saved with nnU-Net's keys."""
        return {}

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net writes in place, so a crash mid-write would leave a truncated file: write once, atomically.
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        atomic_torch_save(self.checkpoint_contents(), filename)
