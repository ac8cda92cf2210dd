"""Paired comparison of fine-tuning runs kept in different ``nnunet_cl benchmark`` output folders.

One benchmark output holds one setting of the fine-tuning levers (``nnUNet_cl_finetune_schedule``, ...), so
comparing levers means comparing runs across outputs. Each argument names one start as
``LABEL=OUTPUT:TRAINER`` (the trainer's per-case validation metrics in ``OUTPUT/metrics/TRAINER``); the
first is the reference. Per start: mean validation DSC per fold, and against the reference the paired
effect with both 95 % intervals of :mod:`nnunet_cl.tools.paired_stats` (cases, stratified by fold; folds).

    python scripts/compare_benchmarks.py scratch=../bench/scratch:nnUNetTrainerScratch_10pct \
        pcl_warmup=../bench/pcl_warmup:nnUNetTrainerPCLInit_10pct -o comparison.md
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

from nnunet_cl.errors import NnunetClError


def parse_start(text: str) -> tuple:
    label, sep, rest = text.partition("=")
    output, sep2, trainer = rest.rpartition(":")
    if not (sep and sep2 and label and output and trainer):
        raise NnunetClError(f"{text!r} is not LABEL=OUTPUT:TRAINER (e.g. scratch=../bench/scratch:"
                            "nnUNetTrainerScratch_10pct)")
    return label, output, trainer


def load_start(output: str, trainer: str) -> dict:
    """``{fold: {case: DSC in %}}`` of one trainer's validation runs in a benchmark output."""
    from nnunet_cl.tools.benchmark_report import case_scores, read_rows
    paths = sorted(glob.glob(os.path.join(output, "metrics", trainer, "fold_*_val.csv")))
    if not paths:
        raise NnunetClError(f"no validation metrics of {trainer} in {output}/metrics; finish its benchmark runs "
                            "first (nnunet_cl benchmark ... -o OUTPUT)")
    rows = [row for path in paths for row in read_rows(path)]
    (scores,) = case_scores(rows).values()
    return dict(scores)


def comparison_table(starts: list) -> str:
    from nnunet_cl.tools.benchmark_report import format_difference
    from nnunet_cl.tools.paired_stats import compare
    reference_label, reference = starts[0]
    folds = sorted({fold for _, scores in starts for fold in scores}, key=str)
    lines = [f"| start | {' | '.join(f'fold {f}' for f in folds)} | mean | Δ vs {reference_label} | "
             "95 % CI (cases) | 95 % CI (folds) |",
             "|---" * (len(folds) + 5) + "|"]
    for label, scores in starts:
        per_fold = [f"{np.mean(list(scores[f].values())):.2f}" if f in scores else "—" for f in folds]
        mean = np.mean([np.mean(list(cases.values())) for cases in scores.values()])
        if label == reference_label:
            lines.append(f"| {label} | {' | '.join(per_fold)} | {mean:.2f} | reference | | |")
            continue
        difference = format_difference(compare(scores, reference), list(scores), digits=2)
        lines.append(f"| {label} | {' | '.join(per_fold)} | {mean:.2f} | {' | '.join(difference)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("starts", nargs="+", metavar="LABEL=OUTPUT:TRAINER",
                        help="the first is the reference")
    parser.add_argument("-o", "--output", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    try:
        if len(args.starts) < 2:
            raise NnunetClError("give at least two starts: the reference and one to compare with it")
        parsed = [parse_start(text) for text in args.starts]
        labels = [label for label, _, _ in parsed]
        if len(set(labels)) != len(labels):
            raise NnunetClError(f"labels must differ: {', '.join(labels)}")
        starts = [(label, load_start(output, trainer)) for label, output, trainer in parsed]
        table = comparison_table(starts)
    except NnunetClError as error:
        print(f"compare_benchmarks: {error.message}", file=sys.stderr)
        sys.exit(1)
    print(table, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
