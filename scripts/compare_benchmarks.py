"""Paired comparison of fine-tuning runs kept in different ``nnunet_cl benchmark`` output folders.

One benchmark output holds one setting of the fine-tuning levers (``nnUNet_cl_finetune_schedule``, ...), so
comparing levers means comparing runs across outputs. Each argument names one start as
``LABEL=OUTPUT:TRAINER`` (the trainer's per-case validation metrics in ``OUTPUT/metrics/TRAINER``); the
first is the reference. Per start: mean validation DSC per fold, and against the reference the paired
effect with both 95 % intervals of :mod:`nnunet_cl.tools.paired_stats` (cases, stratified by fold; folds).

    python scripts/compare_benchmarks.py scratch=../bench/scratch:nnUNetTrainerScratch_10pct \
        pcl_warmup=../bench/pcl_warmup:nnUNetTrainerPCLInit_10pct -o comparison.md

A start may pool several runs, ``LABEL=OUTPUT:TRAINER+OUTPUT:TRAINER...``, to judge one lever over several
methods: then every start has as many parts, the i-th part of each start is paired with the i-th part of
the reference, and each (part, fold) counts as one fold of the paired statistics (columns ``fold 1/0`` for
part 1, fold 0, ...). A part ends at ``:TRAINER`` followed by ``+`` or the end, so an OUTPUT may itself hold
``+`` or ``:``:

    python scripts/compare_benchmarks.py \
        stock=../bench/pcl:nnUNetTrainerPCLInit_10pct+../bench/wcl:nnUNetTrainerWCLInit_10pct \
        reset=../bench/pcl_reset:nnUNetTrainerPCLInit_10pct+../bench/wcl_reset:nnUNetTrainerWCLInit_10pct

``--curve PNG`` also draws the effects as curves over a numeric setting (e.g. pre-training steps): every
start but the reference is then labelled ``SERIES@X`` (``supercl@250=...``), one line per series, the cases
interval as error bars, the reference at 0.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys

import numpy as np

from nnunet_cl.errors import NnunetClError


# A trainer is a Python class name, so a part ends at ":IDENTIFIER" followed by "+" or the end; OUTPUT may hold "+" or ":".
PART = r"(.+?):([A-Za-z_]\w*)"


def parse_start(text: str) -> tuple:
    """``LABEL=OUTPUT:TRAINER[+OUTPUT:TRAINER...]`` -> ``(label, [(output, trainer), ...])``."""
    label, sep, rest = text.partition("=")
    parts = re.findall(rf"{PART}(?:\+|\Z)", rest)
    # findall skips what no part matches: the parts must give back the whole text
    if not (sep and label and parts and "+".join(f"{output}:{trainer}" for output, trainer in parts) == rest):
        raise NnunetClError(f"{text!r} is not LABEL=OUTPUT:TRAINER (e.g. scratch=../bench/scratch:"
                            "nnUNetTrainerScratch_10pct; pooled: LABEL=OUTPUT:TRAINER+OUTPUT:TRAINER)")
    return label, parts


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


def load_pooled(parts: list) -> dict:
    """One part: ``load_start``'s ``{fold: cases}``; several: ``{"<part>/<fold>": cases}`` over the parts."""
    if len(parts) == 1:
        return load_start(*parts[0])
    return {f"{i}/{fold}": cases for i, part in enumerate(parts, 1) for fold, cases in load_start(*part).items()}


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


def curve_points(starts: list) -> dict:
    """``{series: [(x, effect, cases low, cases high), ...]}`` (sorted by x) of the starts after the reference,
    whose labels are ``SERIES@X``."""
    from nnunet_cl.tools.paired_stats import compare
    _, reference = starts[0]
    series = {}
    for label, scores in starts[1:]:
        name, sep, x_text = label.rpartition("@")
        try:
            x = float(x_text)
        except ValueError:
            x = None
        if not (sep and name) or x is None:
            raise NnunetClError(f"--curve needs every start but the reference labelled SERIES@X with a number X "
                                f"(e.g. supercl@250=OUTPUT:TRAINER), not {label!r}")
        result = compare(scores, reference)
        series.setdefault(name, []).append((x, result.effect, result.bootstrap_low, result.bootstrap_high))
    return {name: sorted(points) for name, points in series.items()}


def draw_curve(points: dict, reference_label: str, x_label: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nnunet_cl.atomic import atomic_target
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(0.0, color="grey", linewidth=1, label=reference_label)
    for name, rows in points.items():
        x, effect, low, high = (np.array(column) for column in zip(*rows))
        ax.errorbar(x, effect, yerr=[effect - low, high - effect], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    settings = sorted({row[0] for rows in points.values() for row in rows})
    ax.set_xticks(settings, [f"{x:g}" for x in settings])
    ax.minorticks_off()
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"Δ validation DSC vs {reference_label} (points)")
    ax.set_title("paired Δ, 95 % interval over cases", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("starts", nargs="+", metavar="LABEL=OUTPUT:TRAINER",
                        help="the first is the reference")
    parser.add_argument("-o", "--output", help="also write the table to this markdown file")
    parser.add_argument("--curve", metavar="PNG", help="also draw Δ against X of the labels SERIES@X (see above)")
    parser.add_argument("--curve-x", default="pre-training steps", help="x axis title of --curve")
    args = parser.parse_args(argv)
    try:
        if len(args.starts) < 2:
            raise NnunetClError("give at least two starts: the reference and one to compare with it")
        parsed = [parse_start(text) for text in args.starts]
        labels = [label for label, _ in parsed]
        if len(set(labels)) != len(labels):
            raise NnunetClError(f"labels must differ: {', '.join(labels)}")
        if len({len(parts) for _, parts in parsed}) > 1:
            raise NnunetClError("pooled starts pair their parts in order: give every start as many "
                                "OUTPUT:TRAINER parts (joined by +)")
        starts = [(label, load_pooled(parts)) for label, parts in parsed]
        table = comparison_table(starts)
        points = curve_points(starts) if args.curve else None
    except NnunetClError as error:
        print(f"compare_benchmarks: {error.message}", file=sys.stderr)
        sys.exit(1)
    print(table, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)
    if points is not None:
        draw_curve(points, labels[0], args.curve_x, args.curve)


if __name__ == "__main__":
    main()
