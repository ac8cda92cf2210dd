"""Base class of pre-training methods: the whole contract a method meets, each part with its default.

A method is an ``nn.Module`` that owns its projection heads (never the U-Net: the network is passed
in, so the U-Net's state dict stays stock nnU-Net). A new method is one module that subclasses this
class, overrides what differs and is imported by the registry (``pretraining/methods/__init__.py``);
the engine, the Init trainers, ``nnunet_cl benchmark`` and ``nnunet_cl speed`` read only what is
declared here.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from nnunet_cl.errors import NnunetClError
from nnunet_cl.validation import positive_finite_float

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class PretrainingMethod(nn.Module):
    # ------------------------------------------------------------------ identity
    name = "base"                     # -m NAME of nnunet_cl pretrain, the benchmark's row name
    trainer_name = "Base"             # -> nnUNetTrainer<trainer_name>Init[_10pct|_25pct]
    # ------------------------------------------------------------------ what the checkpoint holds
    pretrained_prefixes = ("encoder.",)   # U-Net state-dict prefixes the Init trainers load
    # ------------------------------------------------------------------ training defaults
    default_lr = 0.1
    default_options: dict = {"temperature": 0.1}   # typed defaults, overridden by -o key=value
    # True when compute_loss sees the global batch under torchrun (it gathers through nnunet_cl.distributed).
    # Every registered class states it in its own body (the registry checks): a subclass that changes the
    # loss must not inherit its parent's promise.
    supports_distributed = False
    # ------------------------------------------------------------------ fine-tuning trainers
    has_init_trainers = True          # False: no nnUNetTrainer<trainer_name>Init* classes are generated
    label_fractions: Optional[tuple] = None   # fractions that get an Init trainer; None: every one (1, 0.1, 0.25)
    # Base class of the Init trainers: a class or a "module:Class" string (a method module must not import
    # nnunet_cl.trainers, which imports the registry); None: nnUNetTrainerPretrainedInit.
    init_trainer_base = None
    # ------------------------------------------------------------------ superpixels (timed by nnunet_cl speed)
    slic_parameters = None            # the SLIC parameters of the superpixel cache the method reads, if any
    uses_fixed_views = False          # True when make_batch reads that cache

    def __init__(self, network, context, options: dict | None = None):
        super().__init__()
        self.options = self.resolve_options(options or {})
        self.patch_size = tuple(context.patch_size)
        self.encoder_channels = list(network.encoder.output_channels)

    # ------------------------------------------------------------------ options
    @classmethod
    def resolve_options(cls, overrides: dict) -> dict:
        """``default_options`` with ``overrides`` converted to the defaults' types, then ``check_options``."""
        options = dict(cls.default_options)
        for key, value in overrides.items():
            if key not in options:
                raise NnunetClError(f"method {cls.name!r} has no option {key!r}; its options are: "
                                    f"{', '.join(f'{k}={v}' for k, v in options.items())}")
            default = options[key]
            try:
                if isinstance(default, bool):
                    value = cls.parse_bool(value)
                elif default is not None:
                    value = type(default)(value)
            except (TypeError, ValueError):
                kind = "true/false (1/0, yes/no, on/off)" if isinstance(default, bool) else type(default).__name__
                raise NnunetClError(f"option {key}={value!r} of method {cls.name!r} must be a {kind}")
            options[key] = value
        cls.check_options(options)
        return options

    @staticmethod
    def parse_bool(value) -> bool:
        if not isinstance(value, str):
            return bool(value)
        if value.lower() not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(value)
        return value.lower() in TRUE_WORDS

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Validate the resolved options: raise ``NnunetClError`` (what is wrong, how to fix it) before any
        work starts. May put a value in its canonical form in place (e.g. a fold ``"00"`` -> ``"0"``).
        Checks that need the network (e.g. a decoder depth) stay in ``__init__``. Subclasses extend it
        through ``super()``; the base checks the temperature every method's loss divides by."""
        positive_finite_float(options["temperature"], f"{cls.name} option temperature")

    @classmethod
    def check_schedule(cls, options: dict, epochs: int, iters_per_epoch: int) -> None:
        """Refuse a budget the method cannot run (e.g. a two-stage method in one epoch); called by the engine
        before any file is written."""

    @classmethod
    def is_label_aware(cls) -> bool:
        """Pre-trained on the labelled subset of one fold: its options include ``fraction`` and ``fold``
        (``nnunet_cl pretrain --fraction/--fold``), so it has one checkpoint per fraction and fold."""
        return {"fraction", "fold"} <= set(cls.default_options)

    @classmethod
    def folder_name(cls, options: dict) -> str:
        """Name of the results sub-folder; label-aware methods add their fraction and fold."""
        return cls.name

    # ------------------------------------------------------------------ engine hooks
    def case_ids(self, context) -> Optional[list]:
        """The preprocessed cases the engine samples from; None: every case (labels are never read)."""
        return None

    def begin_iteration(self, iteration: int, epochs: int, iters_per_epoch: int) -> None:
        """Called before each ``make_batch``: multi-stage methods switch stage here."""

    def lr_cycle(self, iteration: int, epochs: int, iters_per_epoch: int) -> tuple:
        """``(first iteration, length)`` of the cosine cycle ``iteration`` is in; one cycle over the whole run
        by default, one per stage for multi-stage methods."""
        return 0, epochs * iters_per_epoch

    def epoch_statistics(self) -> dict:
        """Extra numbers for the epoch's log line and loss curves (e.g. SuperCL's component counts)."""
        return {}

    def make_batch(self, slices, batch_size: int, rng: np.random.Generator) -> dict:
        """A dict of CPU tensors (views, positions, maps ...) for ``compute_loss``."""
        raise NotImplementedError

    def compute_loss(self, network, batch: dict) -> tuple[torch.Tensor, dict]:
        """``(total loss, {term name: float})``."""
        raise NotImplementedError
