"""All nnunet-cl trainers, generated from the method registry and the label fractions.

For every registered method M: ``nnUNetTrainer<M>Init``, ``..._10pct``, ``..._25pct``; plus the scratch
baselines ``nnUNetTrainerScratch``, ``_10pct``, ``_25pct`` (nnU-Net's default init, same subsets).
A method may restrict its fractions (``label_fractions``, e.g. semi_local: 10 % and 25 %), name its
Init base class (``init_trainer_base``, e.g. as a ``"module:Class"`` string) or have no Init trainers
(``has_init_trainers``): see ``PretrainingMethod``. Chaitanya et al.'s pseudo-label trainers: ``nnUNetTrainerPseudoLabelCL[Intra]_10pct``,
``_25pct`` and, per method M, ``nnUNetTrainerPseudoLabelCL<M>Init_10pct``, ``_25pct``.
A class attribute ``benchmark_name`` (set on the class itself, e.g. through ``fraction_variants``) makes a
trainer one cell of ``nnunet_cl benchmark`` (see ``nnunet_cl/tools/benchmark_plan.py``).
"""

from __future__ import annotations

from nnunet_cl.pretraining.methods import METHODS
from nnunet_cl.trainers.base import nnUNetTrainerCL
from nnunet_cl.trainers.pretrained_init import nnUNetTrainerPretrainedInit

LABEL_FRACTIONS = {"": 1.0, "_10pct": 0.1, "_25pct": 0.25}

__all__ = ["nnUNetTrainerCL", "nnUNetTrainerPretrainedInit", "LABEL_FRACTIONS", "fraction_variants",
           "GENERATED_TRAINERS"]
GENERATED_TRAINERS: list = []   # every class made by fraction_variants, in generation order (nnunet_cl trainers)


def _publish(cls):
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    __all__.append(cls.__name__)
    GENERATED_TRAINERS.append(cls)
    return cls


def fraction_variants(base, stem: str, fractions=None, **attributes) -> list:
    """``stem``, ``stem_10pct``, ``stem_25pct`` subclasses of ``base`` (published in this module);
    ``fractions`` (e.g. ``(0.1, 0.25)``) keeps only those label fractions."""
    unknown = set(fractions or ()) - set(LABEL_FRACTIONS.values())
    if unknown:
        raise ValueError(f"label fractions {sorted(unknown)} have no trainer suffix; known: {LABEL_FRACTIONS}")
    return [_publish(type(stem + suffix, (base,), dict(attributes, label_fraction=fraction)))
            for suffix, fraction in LABEL_FRACTIONS.items() if fractions is None or fraction in fractions]


def init_trainer_base(method):
    """The Init base class of a method: its ``init_trainer_base`` (a class or "module:Class") or the default."""
    base = method.init_trainer_base or nnUNetTrainerPretrainedInit
    if isinstance(base, str):
        import importlib
        module, _, name = base.partition(":")
        base = getattr(importlib.import_module(module), name)
    return base


fraction_variants(nnUNetTrainerCL, "nnUNetTrainerScratch", benchmark_name="scratch")
for _method in METHODS.values():
    if _method.has_init_trainers:
        fraction_variants(init_trainer_base(_method), f"nnUNetTrainer{_method.trainer_name}Init",
                          fractions=_method.label_fractions, pretraining_method=_method.name,
                          benchmark_name=_method.name)

from nnunet_cl.trainers.pseudo_label import nnUNetTrainerPseudoLabelCL  # noqa: E402

PSEUDO_LABEL_FRACTIONS = (0.1, 0.25)   # the method needs unlabelled cases: no 100 % variant
fraction_variants(nnUNetTrainerPseudoLabelCL, "nnUNetTrainerPseudoLabelCL", fractions=PSEUDO_LABEL_FRACTIONS,
                  benchmark_name="pseudo_label")
fraction_variants(nnUNetTrainerPseudoLabelCL, "nnUNetTrainerPseudoLabelCLIntra", fractions=PSEUDO_LABEL_FRACTIONS,
                  contrast_mode="intra")
for _method in METHODS.values():
    if _method.has_init_trainers:
        _fractions = [f for f in PSEUDO_LABEL_FRACTIONS if f in (_method.label_fractions or PSEUDO_LABEL_FRACTIONS)]
        _base = type(f"nnUNetTrainerPseudoLabelCL{_method.trainer_name}InitBase",
                     (nnUNetTrainerPseudoLabelCL, init_trainer_base(_method)), {})
        fraction_variants(_base, f"nnUNetTrainerPseudoLabelCL{_method.trainer_name}Init", fractions=_fractions,
                          pretraining_method=_method.name)
