"""How far fine-tuning moved each pre-trained conv from its start (markdown table).

    python scripts/weight_drift.py -d 4 PRETRAINED LABEL=FINETUNED [LABEL=FINETUNED ...]

PRETRAINED is a checkpoint of ``nnunet_cl pretrain``; each FINETUNED is a ``checkpoint_final.pth`` that
``nnUNetv2_train`` wrote for an Init trainer started from it. Per conv the checkpoint pre-trained, a cell is the
cosine similarity between the fine-tuned and the pre-trained weight (1: the direction is kept, near 0: as
unrelated as two random initialisations; InstanceNorm after every conv makes the direction, not the norm, what
a conv computes) and, in brackets, the fine-tuned norm / the pre-trained norm. A weight-norm reset
(``nnUNet_cl_weight_norm_reset=1``) rescales the start, so its norm ratio is not the drift; its cosine is.
"""

from __future__ import annotations

import argparse
import os

import torch

from nnunet_cl.checkpoint import load_checkpoint, load_pretrained_part
from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import add_dataset_arguments, load_dataset_context
from nnunet_cl.trainers.weight_norm import convolutions_of_keys


def parse_finetuned(text: str) -> tuple:
    label, sep, path = text.partition("=")
    if not (sep and label and path):
        raise NnunetClError(f"{text!r} is not LABEL=FINETUNED_CHECKPOINT (e.g. pcl_fold0=.../fold_0/"
                            "checkpoint_final.pth)")
    return label, path


def pretrained_convs(network, checkpoint: dict, path: str) -> dict:
    """``{conv name: pre-trained weight}`` for the convs under the checkpoint's prefixes (loaded as an Init trainer
    loads them, with its checks of the architecture)."""
    loaded = load_pretrained_part(network, checkpoint, path)
    return {name: conv.weight.detach().clone() for name, conv in convolutions_of_keys(network, loaded).items()}


def finetuned_state(path: str) -> dict:
    """The network weights of an ``nnUNetv2_train`` checkpoint."""
    if not os.path.isfile(path):
        raise NnunetClError(f"{path} does not exist; give a checkpoint_final.pth of an nnUNetv2_train run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:   # torch raises many types for truncated / foreign files
        raise NnunetClError(f"{path} is corrupt or not a torch file ({type(error).__name__}); give a "
                            "checkpoint_final.pth of an nnUNetv2_train run") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise NnunetClError(f"{path} is not an nnUNetv2_train checkpoint (it has no network_weights)")
    return checkpoint["network_weights"]


def drift(network, start: dict, state: dict, path: str) -> dict:
    """``{conv name: (cosine similarity, norm ratio)}`` of the fine-tuned weights in ``state`` to ``start``."""
    try:
        network.load_state_dict(state)
    except RuntimeError:
        raise NnunetClError(f"{path} does not fit the plans' network; pass the dataset and plans it was trained "
                            "with") from None
    convs = dict(network.named_modules())
    result = {}
    for name, weight in start.items():
        final = convs[name].weight.detach().double().flatten()
        initial = weight.double().flatten()
        cosine = torch.dot(final, initial) / (final.norm() * initial.norm())
        result[name] = (float(cosine), float(final.norm() / initial.norm()))
    return result


def markdown_table(columns: list) -> str:
    names = list(columns[0][1])
    lines = ["| layer | " + " | ".join(label for label, _ in columns) + " |", "|" + "---|" * (1 + len(columns))]
    for name in names:
        cells = [f"{values[name][0]:.3f} ({values[name][1]:.2f})" for _, values in columns]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser, "dataset id or name (its plans build the network)")
    parser.add_argument("pretrained", metavar="PRETRAINED")
    parser.add_argument("finetuned", nargs="+", metavar="LABEL=FINETUNED")
    args = parser.parse_args(argv)
    finetuned = [parse_finetuned(text) for text in args.finetuned]
    context = load_dataset_context(args.dataset, args.plans, args.configuration)
    network = context.build_network()
    checkpoint = load_checkpoint(args.pretrained)
    start = pretrained_convs(network, checkpoint, args.pretrained)
    columns = [(label, drift(network, start, finetuned_state(path), path)) for label, path in finetuned]
    print(f"{checkpoint['method']} start: {os.path.abspath(args.pretrained)}")
    for label, path in finetuned:
        print(f"{label}: {os.path.abspath(path)}")
    print()
    print(markdown_table(columns))


if __name__ == "__main__":
    main()
