"""``nnunet_cl trainers``: every generated trainer class, one line each, since generated names cannot be grepped.

Columns: trainer name (what ``nnUNetv2_train -tr`` takes), pre-training method (``-`` for none), label
fraction, how it trains, what it loads before training. Each trainer describes itself through the hooks
``training_recipe`` and ``initialisation`` of ``nnUNetTrainerCL``.
"""

from __future__ import annotations


def add_trainers_parser(subparsers) -> None:
    p = subparsers.add_parser("trainers", help="list every nnunet-cl trainer: method, label fraction, what it loads",
                              description="Every trainer nnunet-cl generates, for nnUNetv2_train -tr NAME.")
    p.set_defaults(func=run_trainers)


def trainer_lines() -> list:
    from nnunet_cl.trainers import GENERATED_TRAINERS

    width = max(len(cls.__name__) for cls in GENERATED_TRAINERS)
    method_width = max(len(cls.pretraining_method or "-") for cls in GENERATED_TRAINERS)
    recipe_width = max(len(cls.training_recipe()) for cls in GENERATED_TRAINERS)
    return [f"{cls.__name__:<{width}}  {cls.pretraining_method or '-':<{method_width}}  "
            f"{cls.label_fraction * 100:>3g} %  {cls.training_recipe():<{recipe_width}}  loads {cls.initialisation()}"
            for cls in GENERATED_TRAINERS]


def run_trainers(args) -> None:
    lines = trainer_lines()
    print("\n".join(lines))
    print(f"({len(lines)} trainers. Columns: nnUNetv2_train -tr NAME, pre-training method, label fraction, training "
          "recipe, what is loaded before training: the state-dict prefixes the checkpoint lists as pre-trained, from "
          "below $nnUNet_results/<Dataset>/ (<plans>: the -p of nnUNetv2_train; "
          "nnUNet_cl_pretrained_checkpoint=FILE reads FILE instead))")
