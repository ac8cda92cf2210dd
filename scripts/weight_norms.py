"""Per-layer conv weight norms of pre-training checkpoints relative to nnU-Net's initialisation (markdown table).

    python scripts/weight_norms.py -d 4 CHECKPOINT [CHECKPOINT ...]

The reference norm of a layer is the root mean square of its weight norm over ``--init-samples`` networks of
the same plans, freshly built and initialised by nnU-Net (seeds 0, 1, ...): an estimate of the expected norm
of nnU-Net's initialisation, whose single-sample spread is about 1/sqrt(2 x weights) (4 % for the first conv
of the Hippocampus plans, below 1 % for the others). A cell is the checkpoint's norm / the reference norm, for
the layers the checkpoint's method pre-trained ("-" for the others, which stayed at a random initialisation).
The effective fine-tuning step of a conv followed by a normalisation scales with 1 / ratio^2.
"""

from __future__ import annotations

import argparse
import os

import torch

from nnunet_cl.checkpoint import load_checkpoint
from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import add_dataset_arguments, architecture_fingerprint, load_dataset_context
from nnunet_cl.trainers.weight_norm import conv_weight_norms, convolutions_of_keys


def reference_norms(context, samples: int) -> dict:
    """Root mean square over ``samples`` freshly initialised networks of each conv's weight norm."""
    state = torch.random.get_rng_state()
    squares = {}
    try:
        for seed in range(samples):
            torch.manual_seed(seed)
            for name, norm in conv_weight_norms(context.build_network()).items():
                squares[name] = squares.get(name, 0.0) + norm ** 2
    finally:
        torch.random.set_rng_state(state)
    return {name: (total / samples) ** 0.5 for name, total in squares.items()}


def checkpoint_ratios(network, checkpoint: dict, reference: dict) -> dict:
    """``{conv name: norm in the checkpoint / reference}`` for the convs under the checkpoint's prefixes."""
    prefixes = tuple(checkpoint["pretrained_prefixes"])
    weights = {k: v for k, v in checkpoint["network_weights"].items() if k.startswith(prefixes)}
    network.load_state_dict(weights, strict=False)
    keys = list(weights)
    return {name: float(conv.weight.detach().norm()) / reference[name]
            for name, conv in convolutions_of_keys(network, keys).items()}


def column_title(path: str, checkpoint: dict) -> str:
    config = checkpoint.get("config") or {}
    steps = checkpoint.get("iteration")
    batch = config.get("batch_size")
    detail = ", ".join(x for x in (f"{steps} steps" if steps is not None else "",
                                   f"batch {batch}" if batch is not None else "") if x)
    return f"{checkpoint['method']} ({detail})" if detail else checkpoint["method"]


def markdown_table(reference: dict, columns: list) -> str:
    header = "| layer | init norm | " + " | ".join(title for title, _ in columns) + " |"
    lines = [header, "|" + "---|" * (2 + len(columns))]
    for name, norm in reference.items():
        cells = [f"{ratios[name]:.2f}" if name in ratios else "-" for _, ratios in columns]
        lines.append(f"| `{name}` | {norm:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser, "dataset id or name (its plans build the network)")
    parser.add_argument("--init-samples", type=int, default=10,
                        help="freshly initialised networks averaged for the reference norm (default 10)")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    args = parser.parse_args(argv)
    if args.init_samples < 1:
        raise NnunetClError(f"--init-samples {args.init_samples} must be at least 1")
    context = load_dataset_context(args.dataset, args.plans, args.configuration)
    network = context.build_network()
    reference = reference_norms(context, args.init_samples)
    fingerprint = architecture_fingerprint(network)
    columns = []
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path)
        if checkpoint["architecture_fingerprint"] != fingerprint:
            raise NnunetClError(f"{path} was pre-trained for another architecture than {context.dataset_name}'s "
                                f"plans {args.plans!r}; pass the dataset and plans it was pre-trained with")
        columns.append((column_title(path, checkpoint), checkpoint_ratios(network, checkpoint, reference)))
        print(f"{columns[-1][0]}: {os.path.abspath(path)}")
    print()
    print(markdown_table(reference, columns))


if __name__ == "__main__":
    main()
