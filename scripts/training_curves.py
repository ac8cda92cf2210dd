"""Compare how fast starts learn: nnU-Net's per-epoch pseudo Dice and losses, averaged over folds, from run logs.

The final table says where runs end; this says how they got there (does a pre-trained start lead early and
scratch catch up?). Reads the logs of the finished runs of a benchmark (``OUTPUT/logs/<trainer>_fold<X>.log``, also
kept by ``scripts/benchmark_records.py save``), which hold nnU-Net's epoch lines; a resumed run's repeated
epochs count once (the last). Pseudo Dice is nnU-Net's: the foreground Dice over the few validation
batches of an epoch (noisy), averaged here over classes, then over folds, then over blocks of epochs.

    python scripts/training_curves.py scratch=OUT_A:nnUNetTrainerScratch_10pct \\
        supercl=OUT_B:nnUNetTrainerSuperCLInit_10pct --block 14 --png curves.png

Prints a markdown table (one row per block of epochs; per start the mean pseudo Dice in %, and each start's
difference to the first one on the folds both have).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from compare_benchmarks import parse_start  # the LABEL=OUTPUT:TRAINER format has one home
from nnunet_cl.errors import NnunetClError
from nnunet_cl.tools.benchmark_children import NNUNET_EPOCH_LINE, plain_numbers  # nnU-Net's log format: one home
from nnunet_cl.tools.benchmark_plan import runs_in, training_done  # where the runs and logs are: one home
VALUE = re.compile(r": (train_loss|val_loss) (-?[\d.]+(?:e-?\d+)?)\s*$")
PSEUDO_DICE = re.compile(r": Pseudo dice \[(.*)\]\s*$")


def parse_log(path: str) -> dict[int, dict[str, float]]:
    """Per epoch: train_loss, val_loss and the class-mean pseudo Dice (0..1) of one nnU-Net run log.

    Args:
        path: a log with nnU-Net's epoch lines; epochs repeated by a resume are taken from their last
            occurrence.
    Returns:
        {epoch: {"train_loss", "val_loss", "pseudo_dice"}} for every epoch whose pseudo Dice was logged.
    """
    epochs: dict[int, dict[str, float]] = {}
    current: dict[str, float] | None = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = NNUNET_EPOCH_LINE.search(line)
            if match:
                current = {}
                epochs[int(match.group(1))] = current
                continue
            if current is None:
                continue
            match = VALUE.search(line)
            if match:
                current[match.group(1)] = float(match.group(2))
                continue
            match = PSEUDO_DICE.search(line)
            if match:
                values = plain_numbers(match.group(1)).split(",")
                current["pseudo_dice"] = float(np.mean([float(v) for v in values]))
    return {epoch: values for epoch, values in epochs.items() if "pseudo_dice" in values}


def load_start(spec: str) -> tuple[str, dict[int, dict[int, dict[str, float]]]]:
    """``LABEL=OUTPUT:TRAINER`` -> (label, {fold: parse_log(...)}) from the logs of TRAINER's finished runs in OUTPUT
    (a run still going would truncate every curve to its length)."""
    label, parts = parse_start(spec)
    if len(parts) != 1:
        raise NnunetClError(f"{spec!r}: give one OUTPUT:TRAINER per start (pooling runs is compare_benchmarks.py's)")
    (output, trainer), = parts
    logs = {run.fold: layout.log_file(run.log_name) for layout, run in runs_in(output)
            if run.trainer == trainer and isinstance(run.fold, int) and training_done(layout, run)}
    if not logs:
        raise NnunetClError(f"{output} has no finished run of {trainer}; "
                            f"give a benchmark output (or saved records) that ran it")
    for path in logs.values():
        if not os.path.isfile(path):
            raise NnunetClError(f"{path} is missing; restore the output's logs (benchmark_records.py restore)")
    return label, {fold: parse_log(path) for fold, path in sorted(logs.items())}


def block_means(runs: dict[int, dict[int, dict[str, float]]], folds: list[int], key: str,
                block: int, n_epochs: int) -> list[float]:
    """Mean of ``key`` over the given folds and each block of ``block`` epochs (NaN where an epoch is missing)."""
    per_fold = np.array([[runs[fold].get(epoch, {}).get(key, np.nan) for epoch in range(n_epochs)]
                         for fold in folds])
    return [float(np.mean(per_fold[:, start:start + block])) for start in range(0, n_epochs, block)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("starts", nargs="+", help="LABEL=OUTPUT:TRAINER; the first is the reference")
    parser.add_argument("--block", type=int, default=14, help="epochs per table row (default 14)")
    parser.add_argument("--png", help="also draw the per-epoch curves (mean over folds) to this PNG")
    args = parser.parse_args(argv)
    try:
        if args.block < 1:
            raise NnunetClError(f"--block {args.block}: give at least 1 epoch per row")
        loaded = [load_start(spec) for spec in args.starts]
        labels = [label for label, _ in loaded]
        if len(set(labels)) != len(labels):
            raise NnunetClError(f"labels must differ: {', '.join(labels)}")
    except NnunetClError as error:
        print(f"training_curves: {error.message}", file=sys.stderr)
        return 1
    starts = dict(loaded)
    reference = labels[0]
    n_epochs = min(max(run) + 1 for runs in starts.values() for run in runs.values() if run)
    rows = {label: block_means(runs, sorted(runs), "pseudo_dice", args.block, n_epochs)
            for label, runs in starts.items()}
    deltas = {}
    for label in labels[1:]:
        folds = sorted(set(starts[label]) & set(starts[reference]))
        deltas[label] = np.subtract(block_means(starts[label], folds, "pseudo_dice", args.block, n_epochs),
                                    block_means(starts[reference], folds, "pseudo_dice", args.block, n_epochs))
    header = ["epochs"] + [f"{label} (folds {','.join(map(str, sorted(starts[label])))})" for label in labels]
    header += [f"{label} − {reference}" for label in labels[1:]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for i, start in enumerate(range(0, n_epochs, args.block)):
        cells = [f"{start}–{min(start + args.block, n_epochs) - 1}"]
        cells += [f"{100 * rows[label][i]:.1f}" for label in labels]
        cells += [f"{100 * deltas[label][i]:+.1f}" for label in labels[1:]]
        print("| " + " | ".join(cells) + " |")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label, runs in starts.items():
            folds = sorted(runs)
            axes[0].plot(range(n_epochs), [100 * v for v in block_means(runs, folds, "pseudo_dice", 1, n_epochs)],
                         label=label, lw=1)
            axes[1].plot(range(n_epochs), block_means(runs, folds, "train_loss", 1, n_epochs), label=label, lw=1)
        axes[0].set(xlabel="epoch", ylabel="pseudo Dice (%), mean over folds", ylim=(0, 100))
        axes[1].set(xlabel="epoch", ylabel="train loss (nnU-Net's Dice + CE), mean over folds")
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"curves: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
