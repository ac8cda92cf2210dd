"""Fine-tuning schedules: the optimiser and learning-rate curve of every nnunet-cl trainer.

Selected with ``nnUNet_cl_finetune_schedule=<name>`` (unset: ``stock``, until a measurement picks a
winner); ``nnUNet_cl_finetune_peak_lr`` overrides the schedule's peak learning rate. The lr is a closed
formula of the epoch, applied by nnU-Net's own call ``lr_scheduler.step(current_epoch)`` at every epoch
start, so a resumed run (``--c``) continues on the same curve. One optimiser serves the whole run (momentum
buffers are kept across phases). Everything else stays nnU-Net's: deep supervision, gradient clipping at 12,
loss, augmentation.

``stock``          nnU-Net: SGD lr 1e-2, momentum 0.99 Nesterov, weight decay 3e-5, poly (exponent 0.9).
``warmup``         nnssl's ``PretrainedTrainer``: nnU-Net's SGD, whole network, lr rising linearly to the peak
                   over the first 5 % of the epochs, ``lr = peak * (epoch + 1) / W``, then poly from the peak to
                   0 over the rest. Peak 1e-3 for pre-trained starts, nnU-Net's 1e-2 for random ones (as
                   nnssl; for scratch this is upstream nnU-Net's ``nnUNetTrainer_warmup`` shape). nnssl turns
                   deep supervision off and its 150-epoch variant warms up for 10 %; here neither.
``decoder_first``  nnssl's ``PretrainedTrainer_sawtooth``: only the parts the trainer did not load train (Init
                   trainers freeze what they loaded; scratch freezes the encoder) with a linear warm-up over
                   2.5 % of the epochs and a poly decay over the next 2.5 %, then the whole network warms up
                   linearly over 5 %, then poly. Same peaks as ``warmup``.
``adam``           the seed papers' fine-tuning codes (SuperCL, MACL; PCL's use lower lrs): Adam (betas 0.9,
                   0.999, eps 1e-8), weight decay 1e-5, lr 5e-4 annealed per epoch by a cosine to 1 % of it
                   (5e-6) at the end of the run; the same for pre-trained and random starts.
``frozen``         a probe of the start's features, not a recipe: nnU-Net's SGD and poly, and the parts the
                   trainer loaded (scratch: its random encoder) stay frozen for the whole run, so only the
                   rest learns on top of them (the frozen-feature evaluation of self-supervised learning).

Phase lengths are ``max(1, round(fraction * num_epochs))`` epochs.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
from torch.optim.lr_scheduler import _LRScheduler

from nnunet_cl.errors import NnunetClError

SCHEDULE_ENV = "nnUNet_cl_finetune_schedule"
PEAK_LR_ENV = "nnUNet_cl_finetune_peak_lr"
DEFAULT_SCHEDULE = "stock"

POLY_EXPONENT = 0.9                 # nnU-Net's PolyLRScheduler
PRETRAINED_PEAK_LR = 1e-3           # nnssl's PretrainedTrainer with pre-trained weights
WARMUP_FRACTION = 0.05              # nnssl: 50 of 1000 epochs
DECODER_WARMUP_FRACTION = 0.025     # nnssl sawtooth: 25 of 1000 epochs decoder warm-up ...
DECODER_DECAY_FRACTION = 0.025      # ... and 25 decoder poly decay
ADAM_PEAK_LR = 5e-4                 # SuperCL / MACL fine-tuning
ADAM_FINAL_LR_FRACTION = 0.01       # 5e-4 -> 5e-6
ADAM_WEIGHT_DECAY = 1e-5


def phase_length(fraction: float, num_epochs: int) -> int:
    return max(1, round(fraction * num_epochs))


def poly(peak: float, step: int, length: int) -> float:
    """nnU-Net's poly decay: ``peak`` at step 0, towards 0 at ``length``."""
    return peak * (1 - step / length) ** POLY_EXPONENT


def linear_warmup(peak: float, step: int, length: int) -> float:
    """nnU-Net's / nnssl's linear warm-up: ``peak / length`` at step 0, ``peak`` at step ``length - 1``."""
    return peak * (step + 1) / length


class FinetuneSchedule:
    """One schedule for a run of ``num_epochs`` epochs.

    Hooks: ``lr(epoch)``, ``decoder_only(epoch)``, ``make_optimizer`` (default: keep nnU-Net's SGD),
    ``make_lr_scheduler`` (default: this schedule's formula), ``min_epochs`` and ``default_peak_lr``."""

    name = ""
    min_epochs = 1

    def __init__(self, num_epochs: int, peak_lr: float):
        self.num_epochs = num_epochs
        self.peak_lr = peak_lr

    @classmethod
    def default_peak_lr(cls, pretrained: bool, nnunet_lr: float) -> float:
        return nnunet_lr

    def lr(self, epoch: int) -> float:
        raise NotImplementedError

    def decoder_only(self, epoch: int) -> bool:
        return False

    def make_optimizer(self, nnunet_optimizer, parameters):
        return nnunet_optimizer

    def make_lr_scheduler(self, optimizer, nnunet_lr_scheduler):
        return EpochLRScheduler(optimizer, self.lr)

    def describe(self) -> str:
        raise NotImplementedError


class StockSchedule(FinetuneSchedule):
    name = "stock"

    def lr(self, epoch: int) -> float:
        return poly(self.peak_lr, epoch, self.num_epochs)

    def make_lr_scheduler(self, optimizer, nnunet_lr_scheduler):
        return nnunet_lr_scheduler       # nnU-Net's PolyLRScheduler itself

    def describe(self) -> str:
        return f"nnU-Net's SGD (momentum 0.99, Nesterov), poly from lr {self.peak_lr:g} over {self.num_epochs} epochs"


class WarmupSchedule(FinetuneSchedule):
    name = "warmup"
    min_epochs = 2

    def __init__(self, num_epochs: int, peak_lr: float):
        super().__init__(num_epochs, peak_lr)
        self.warmup_epochs = phase_length(WARMUP_FRACTION, num_epochs)

    @classmethod
    def default_peak_lr(cls, pretrained: bool, nnunet_lr: float) -> float:
        return PRETRAINED_PEAK_LR if pretrained else nnunet_lr

    def lr(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return linear_warmup(self.peak_lr, epoch, self.warmup_epochs)
        return poly(self.peak_lr, epoch - self.warmup_epochs, self.num_epochs - self.warmup_epochs)

    def describe(self) -> str:
        return (f"nnU-Net's SGD, whole network; linear warm-up to lr {self.peak_lr:g} over epochs "
                f"0-{self.warmup_epochs - 1}, then poly to epoch {self.num_epochs}")


class DecoderFirstSchedule(WarmupSchedule):
    name = "decoder_first"
    min_epochs = 4

    def __init__(self, num_epochs: int, peak_lr: float):
        super().__init__(num_epochs, peak_lr)
        self.decoder_warmup_epochs = phase_length(DECODER_WARMUP_FRACTION, num_epochs)
        self.decoder_epochs = self.decoder_warmup_epochs + phase_length(DECODER_DECAY_FRACTION, num_epochs)

    def decoder_only(self, epoch: int) -> bool:
        return epoch < self.decoder_epochs

    def lr(self, epoch: int) -> float:
        if epoch < self.decoder_warmup_epochs:
            return linear_warmup(self.peak_lr, epoch, self.decoder_warmup_epochs)
        if epoch < self.decoder_epochs:
            return poly(self.peak_lr, epoch - self.decoder_warmup_epochs,
                        self.decoder_epochs - self.decoder_warmup_epochs)
        whole_start = self.decoder_epochs + self.warmup_epochs
        if epoch < whole_start:
            return linear_warmup(self.peak_lr, epoch - self.decoder_epochs, self.warmup_epochs)
        return poly(self.peak_lr, epoch - whole_start, self.num_epochs - whole_start)

    def describe(self) -> str:
        whole_start = self.decoder_epochs + self.warmup_epochs
        return (f"nnU-Net's SGD; decoder only (pre-trained part frozen): linear warm-up to lr {self.peak_lr:g} over "
                f"epochs 0-{self.decoder_warmup_epochs - 1}, poly decay over epochs {self.decoder_warmup_epochs}-"
                f"{self.decoder_epochs - 1}; whole network: linear warm-up over epochs {self.decoder_epochs}-"
                f"{whole_start - 1}, then poly to epoch {self.num_epochs}")


class FrozenStartSchedule(StockSchedule):
    name = "frozen"

    def decoder_only(self, epoch: int) -> bool:
        return True

    def describe(self) -> str:
        return f"{super().describe()}; the loaded part (scratch: the encoder) frozen for the whole run (a probe)"


class AdamCosineSchedule(FinetuneSchedule):
    name = "adam"

    @classmethod
    def default_peak_lr(cls, pretrained: bool, nnunet_lr: float) -> float:
        return ADAM_PEAK_LR

    def lr(self, epoch: int) -> float:
        final = self.peak_lr * ADAM_FINAL_LR_FRACTION
        return final + (self.peak_lr - final) * (1 + math.cos(math.pi * epoch / self.num_epochs)) / 2

    def make_optimizer(self, nnunet_optimizer, parameters):
        return torch.optim.Adam(parameters, lr=self.peak_lr, weight_decay=ADAM_WEIGHT_DECAY)

    def describe(self) -> str:
        return (f"Adam (weight decay {ADAM_WEIGHT_DECAY:g}), cosine from lr {self.peak_lr:g} to "
                f"{self.peak_lr * ADAM_FINAL_LR_FRACTION:g} over {self.num_epochs} epochs")


SCHEDULES = {cls.name: cls for cls in (StockSchedule, WarmupSchedule, DecoderFirstSchedule, AdamCosineSchedule,
                                       FrozenStartSchedule)}


class EpochLRScheduler(_LRScheduler):
    """Sets every parameter group's lr to ``lr_of_epoch(epoch)``; nnU-Net calls ``step(current_epoch)`` at
    every epoch start (as for its PolyLRScheduler)."""

    def __init__(self, optimizer, lr_of_epoch: Callable[[int], float]):
        self.lr_of_epoch = lr_of_epoch
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step: Optional[int] = None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_of_epoch(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr


def peak_lr_from_env() -> Optional[float]:
    """``nnUNet_cl_finetune_peak_lr`` as a positive number, or None when unset."""
    value = os.environ.get(PEAK_LR_ENV)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (math.isfinite(number) and number > 0):
        raise NnunetClError(f"{PEAK_LR_ENV}={value!r} must be a positive number, e.g. 1e-3 "
                            f"(or unset for the schedule's default)")
    return number


def schedule_class_from_env() -> type:
    """The schedule class named by ``nnUNet_cl_finetune_schedule`` (unset: ``stock``)."""
    name = os.environ.get(SCHEDULE_ENV) or DEFAULT_SCHEDULE
    if name not in SCHEDULES:
        raise NnunetClError(f"{SCHEDULE_ENV}={name!r} is not a fine-tuning schedule; use one of "
                            f"{', '.join(SCHEDULES)} (unset: {DEFAULT_SCHEDULE})")
    return SCHEDULES[name]


class FinetuneChoice:
    """The user's choice from the environment (schedule class, peak lr or None), checked on creation, so that a
    trainer can check it before nnU-Net creates its output folder and build the schedule once the run's length
    is known."""

    def __init__(self):
        self.schedule_class = schedule_class_from_env()
        self.peak_lr = peak_lr_from_env()

    def check_length(self, num_epochs: int, length_setting: str = "nnUNet_cl_num_epochs") -> None:
        """The schedule fits a run of ``num_epochs`` (``length_setting``: what the user raises if not)."""
        cls = self.schedule_class
        if num_epochs < cls.min_epochs:
            raise NnunetClError(f"{SCHEDULE_ENV}={cls.name} needs at least {cls.min_epochs} epochs (one per phase), "
                                f"this run has {num_epochs}; raise {length_setting} or choose another schedule")

    def schedule(self, num_epochs: int, pretrained: bool, nnunet_lr: float) -> FinetuneSchedule:
        cls = self.schedule_class
        self.check_length(num_epochs)
        peak = self.peak_lr if self.peak_lr is not None else cls.default_peak_lr(pretrained, nnunet_lr)
        return cls(num_epochs, peak)


def parameters_under(network: torch.nn.Module, prefixes) -> list:
    """Every parameter reachable under one of the state-dict ``prefixes`` (by identity: nnU-Net's decoder also
    holds the encoder as ``decoder.encoder``, so a parameter can have several names)."""
    prefixes = tuple(prefixes)
    found = {}
    for name, parameter in network.named_parameters(remove_duplicate=False):
        if name.startswith(prefixes):
            found[id(parameter)] = parameter
    return list(found.values())
