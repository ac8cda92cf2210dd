"""Base class of pre-training methods.

A method is an ``nn.Module`` that owns its projection heads (never the U-Net: the network is passed
in, so the U-Net's state dict stays stock nnU-Net). Hooks:

* ``make_batch(slices, batch_size, rng)`` -> dict of CPU tensors (views, positions, maps ...)
* ``compute_loss(network, batch)`` -> (total loss, {term name: float})
* ``pretrained_prefixes`` -> state-dict prefixes of the U-Net that this method trains
* ``options`` -> typed defaults, overridable with ``nnunet_cl pretrain -o key=value``
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnunet_cl.errors import NnunetClError


class PretrainingMethod(nn.Module):
    name = "base"
    trainer_name = "Base"           # -> nnUNetTrainer<trainer_name>Init
    pretrained_prefixes = ("encoder.",)
    default_lr = 0.1
    default_options: dict = {"temperature": 0.1}
    # True when compute_loss gathers embeddings across ranks (nnunet_cl.distributed) under torchrun.
    supports_distributed = False

    def __init__(self, network, context, options: dict | None = None):
        super().__init__()
        self.options = self.resolve_options(options or {})
        self.patch_size = tuple(context.patch_size)
        self.encoder_channels = list(network.encoder.output_channels)

    @classmethod
    def resolve_options(cls, overrides: dict) -> dict:
        options = dict(cls.default_options)
        for key, value in overrides.items():
            if key not in options:
                raise NnunetClError(f"method {cls.name!r} has no option {key!r}; its options are: "
                                    f"{', '.join(f'{k}={v}' for k, v in options.items())}")
            default = options[key]
            try:
                if isinstance(default, bool):
                    value = str(value).lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
                elif default is not None:
                    value = type(default)(value)
            except (TypeError, ValueError):
                raise NnunetClError(f"option {key}={value!r} of method {cls.name!r} must be a "
                                    f"{type(default).__name__}")
            options[key] = value
        return options

    @classmethod
    def folder_name(cls, options: dict) -> str:
        """Name of the results sub-folder; label-aware methods add their fraction and fold."""
        return cls.name

    def make_batch(self, slices, batch_size: int, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def compute_loss(self, network, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError
