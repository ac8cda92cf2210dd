"""All nnunet-cl trainers, generated from the method registry and the label fractions.

For every registered method M: ``nnUNetTrainer<M>Init``, ``..._10pct``, ``..._25pct``; plus the scratch
baselines ``nnUNetTrainerScratch``, ``_10pct``, ``_25pct`` (nnU-Net's default init, same subsets).
"""

from __future__ import annotations

from nnunet_cl.pretraining.methods import METHODS
from nnunet_cl.trainers.base import nnUNetTrainerCL
from nnunet_cl.trainers.pretrained_init import nnUNetTrainerPretrainedInit

LABEL_FRACTIONS = {"": 1.0, "_10pct": 0.1, "_25pct": 0.25}

__all__ = ["nnUNetTrainerCL", "nnUNetTrainerPretrainedInit", "LABEL_FRACTIONS", "fraction_variants"]


def _publish(cls):
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    __all__.append(cls.__name__)
    return cls


def fraction_variants(base, stem: str, **attributes) -> list:
    """``stem``, ``stem_10pct``, ``stem_25pct`` subclasses of ``base`` (published in this module)."""
    return [_publish(type(stem + suffix, (base,), dict(attributes, label_fraction=fraction)))
            for suffix, fraction in LABEL_FRACTIONS.items()]


fraction_variants(nnUNetTrainerCL, "nnUNetTrainerScratch")
for _method in METHODS.values():
    if getattr(_method, "has_init_trainers", True):
        fraction_variants(getattr(_method, "init_trainer_base", None) or nnUNetTrainerPretrainedInit,
                          f"nnUNetTrainer{_method.trainer_name}Init", pretraining_method=_method.name)
