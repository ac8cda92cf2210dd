"""The benchmark's outputs: ``results.csv`` (one row per case x class x run), ``results.md`` (a table
shaped like the SuperCL paper's Tables I/II, with the paired difference to scratch) and ``results.png``
(DSC by method and fraction, and the paired difference to scratch with its intervals, one panel per fraction).

Aggregation (documented in results.md too): a run's score is the mean over its cases and foreground
classes (DSC and JC over all pairs; HD95 and ASD over the pairs where they are defined, see
``nnunet_cl.tools.metrics``); the table shows mean +- sample standard deviation of the run scores over folds
(no +- with one fold). DSC and JC are in %, HD95 and ASD in the images' spacing unit (mm for MSD).

Paired difference (``nnunet_cl.tools.paired_stats``): a case's DSC is its mean over foreground classes; every
method x fraction is compared with scratch at the same fraction on the folds both have, case by case,
separately for the validation cases and a test folder. ``results.csv`` carries the per-row difference
(``dsc_minus_scratch``: this row's DSC minus scratch's for the same fold, case and class).
"""

from __future__ import annotations

import csv
import math
from collections import OrderedDict

import numpy as np

from nnunet_cl.atomic import atomic_target
from nnunet_cl.tools.benchmark_plan import REFERENCE_METHOD, fraction_label
from nnunet_cl.tools.paired_stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, compare

COLUMNS = ["dataset", "method", "trainer", "fraction", "fold", "split", "case", "class", "class_id",
           "dsc", "jc", "hd95", "asd", "n_ref", "n_pred", "distance_undefined", "dsc_minus_scratch"]
METRICS = (("dsc", "DSC (%)", 100.0), ("jc", "JC (%)", 100.0), ("hd95", "HD95 (mm)", 1.0), ("asd", "ASD (mm)", 1.0))


def write_rows(rows: list, path: str) -> None:
    rows = with_row_differences(rows)
    with atomic_target(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def read_rows(path: str) -> list:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("dsc", "jc", "hd95", "asd", "fraction"):
            row[key] = float(row[key])
        row["distance_undefined"] = row["distance_undefined"] in ("True", "true", "1")
        row.pop("dsc_minus_scratch", None)        # derived: recomputed from the rows written together
    return rows


def with_row_differences(rows: list) -> list:
    """Each row with ``dsc_minus_scratch`` (blank where scratch has no row for that fold, case and class)."""
    def key(row, method):
        return row["split"], float(row["fraction"]), method, str(row["fold"]), row["case"], row["class"]
    reference = {key(r, r["method"]): float(r["dsc"]) for r in rows if r["method"] == REFERENCE_METHOD}
    out = []
    for row in rows:
        partner = reference.get(key(row, REFERENCE_METHOD))
        out.append(dict(row, dsc_minus_scratch="" if partner is None else float(row["dsc"]) - partner))
    return out


# ---------------------------------------------------------------------------------------------- aggregation
def run_scores(rows: list) -> "OrderedDict":
    """(split, fraction, method, fold) -> {metric: run mean, "undefined": count, "cases": n} in row order."""
    grouped: OrderedDict = OrderedDict()
    for row in rows:
        grouped.setdefault((row["split"], row["fraction"], row["method"], row["fold"]), []).append(row)
    scores = OrderedDict()
    for key, group in grouped.items():
        score = {}
        for metric, _, _ in METRICS:
            values = np.array([r[metric] for r in group], float)
            score[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        score["undefined"] = sum(r["distance_undefined"] for r in group)
        score["cases"] = len({r["case"] for r in group})
        scores[key] = score
    return scores


def class_scores(rows: list) -> "OrderedDict":
    """(split, fraction, method) -> {class: [per-fold mean DSC]}."""
    per_fold: OrderedDict = OrderedDict()
    for row in rows:
        per_fold.setdefault((row["split"], row["fraction"], row["method"]), OrderedDict()) \
            .setdefault(row["class"], OrderedDict()).setdefault(row["fold"], []).append(row["dsc"])
    return OrderedDict((key, OrderedDict((c, [float(np.mean(v)) for v in folds.values()]) for c, folds in classes.items()))
                       for key, classes in per_fold.items())


def mean_sd(values, scale: float = 1.0) -> tuple:
    values = np.array([v for v in values if not math.isnan(v)], float) * scale
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def format_mean_sd(values, scale: float, digits: int) -> str:
    mean, sd = mean_sd(values, scale)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


def table_cells(rows: list) -> "OrderedDict":
    """(split, fraction, method) -> {"scores": [run scores per fold], "folds": [...]} in table order."""
    cells: OrderedDict = OrderedDict()
    for (split, fraction, method, fold), score in run_scores(rows).items():
        cell = cells.setdefault((split, fraction, method), {"scores": [], "folds": []})
        cell["scores"].append(score)
        cell["folds"].append(fold)
    order = sorted(cells, key=lambda k: (k[0] != "val", k[1]))   # stable: methods keep registry order
    return OrderedDict((k, cells[k]) for k in order)


def case_scores(rows: list) -> "OrderedDict":
    """(split, fraction, method) -> {fold: {case: DSC in %, mean over foreground classes}}."""
    per_case: OrderedDict = OrderedDict()
    for row in rows:
        per_case.setdefault((row["split"], row["fraction"], row["method"]), OrderedDict()) \
            .setdefault(row["fold"], {}).setdefault(row["case"], []).append(row["dsc"])
    return OrderedDict((key, OrderedDict((fold, {case: 100.0 * float(np.mean(v)) for case, v in cases.items()})
                                         for fold, cases in folds.items()))
                       for key, folds in per_case.items())


def paired_to_reference(rows: list) -> "OrderedDict":
    """(split, fraction, method) -> PairedDifference against scratch, or None when scratch has no shared fold."""
    scores = case_scores(rows)
    paired = OrderedDict()
    for (split, fraction, method), folds in scores.items():
        reference = scores.get((split, fraction, REFERENCE_METHOD), {})
        result = compare(folds, reference)
        paired[(split, fraction, method)] = result if result.folds else None
    return paired


def format_difference(result, folds_of_cell: list, digits: int = 1) -> list:
    """The three paired cells of a table row: Δ, bootstrap interval, fold interval (``digits`` decimals)."""
    if result is None:
        return [f"no {REFERENCE_METHOD} run", "–", "–"]
    partial = "" if len(result.folds) == len(folds_of_cell) else f" (folds {','.join(map(str, result.folds))})"
    fold_interval = ("–" if math.isnan(result.fold_low)
                     else f"[{result.fold_low:+.{digits}f}, {result.fold_high:+.{digits}f}]")
    return [f"{result.effect:+.{digits}f}{partial}",
            f"[{result.bootstrap_low:+.{digits}f}, {result.bootstrap_high:+.{digits}f}]", fold_interval]


# ---------------------------------------------------------------------------------------------- markdown
def split_rows(table: "OrderedDict", split: str):
    """``(Labeled cell, fraction, method, value)`` of one split's entries of a ``(split, fraction, method) ->
    value`` table, in its order; the Labeled cell is blank where the fraction repeats the row above."""
    previous_fraction = None
    for (s, fraction, method), value in table.items():
        if s != split:
            continue
        yield (fraction_label(fraction) if fraction != previous_fraction else ""), fraction, method, value
        previous_fraction = fraction


def markdown(rows: list, header_lines: list) -> str:
    lines = list(header_lines)
    cells = table_cells(rows)
    per_class = class_scores(rows)
    paired = paired_to_reference(rows)
    for split in dict.fromkeys(k[0] for k in cells):
        title = "validation cases of each fold" if split == "val" else "the separate test folder"
        lines += ["", f"### {title.capitalize()}", "",
                  "| Labeled | Method | " + " | ".join(label for _, label, _ in METRICS) + " | folds | undef. | "
                  f"Δ DSC vs {REFERENCE_METHOD} | 95 % CI (cases) | 95 % CI (folds) |",
                  "|---|---|" + "---|" * (len(METRICS) + 5)]
        for labeled, fraction, method, cell in split_rows(cells, split):
            values = [format_mean_sd([sc[m] for sc in cell["scores"]], scale, 2 if scale == 1.0 else 1)
                      for m, _, scale in METRICS]
            undefined = sum(sc["undefined"] for sc in cell["scores"])
            difference = format_difference(paired[(split, fraction, method)], cell["folds"])
            lines.append(f"| {labeled} | {method} | " + " | ".join(values) +
                         f" | {','.join(map(str, cell['folds']))} | {undefined} | " + " | ".join(difference) + " |")
        classes = list(dict.fromkeys(c for k, v in per_class.items() if k[0] == split for c in v))
        lines += ["", f"DSC (%) per class ({title}):", "",
                  "| Labeled | Method | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
        for labeled, _, method, by_class in split_rows(per_class, split):
            lines.append(f"| {labeled} | {method} | " +
                         " | ".join(format_mean_sd(by_class.get(c, []), 100.0, 1) for c in classes) + " |")
    lines += ["", "Each run's score is the mean over its cases and foreground classes; the table shows mean ± "
              "sample standard deviation over folds (no ± with one fold). HD95 and ASD leave out case/class pairs "
              "where exactly one of prediction and reference is empty (distance undefined); \"undef.\" counts them "
              "(summed over folds). Both empty counts as DSC = JC = 100 %, HD95 = ASD = 0.",
              "",
              f"Δ DSC vs {REFERENCE_METHOD}: paired difference in DSC points to {REFERENCE_METHOD} at the same label "
              "fraction, on the folds both have (listed when fewer than the method's) and the same cases: the mean "
              "over folds of the per-fold mean per-case difference (a case's DSC is its mean over foreground "
              f"classes; {REFERENCE_METHOD}'s own rows are 0 by construction). 95 % CI (cases): percentile "
              f"bootstrap, resampling unit = case, stratified by fold, {BOOTSTRAP_RESAMPLES} resamples, seed "
              f"{BOOTSTRAP_SEED}; it covers the choice of evaluation cases for these trained networks only. "
              "95 % CI (folds): t interval over the per-fold differences (df = folds − 1); each fold trains both "
              "starts anew, so it includes run-to-run variation (– with one fold). Claim a difference only when "
              "the fold interval excludes 0."]
    return "\n".join(lines) + "\n"


def write_text(text: str, path: str) -> None:
    with atomic_target(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


# ---------------------------------------------------------------------------------------------- plot
def plot_dsc(rows: list, path: str, title: str) -> None:
    """Left: grouped bars of DSC (%) per method at each fraction (validation), error bars = sd over folds, a
    100 % row (scratch's upper bound) as a dashed line. Right: one panel per fraction with each method's
    paired Δ DSC vs scratch (dot), its case-bootstrap interval (thick) and its fold t interval (thin)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {k: v for k, v in table_cells(rows).items() if k[0] == "val"}
    paired = {k: v for k, v in paired_to_reference(rows).items() if k[0] == "val"}
    fractions = sorted({k[1] for k in cells if k[1] < 1.0})
    methods = list(dict.fromkeys(k[2] for k in cells if k[1] < 1.0))
    bar_width = max(6, 1.2 + 0.45 * len(methods) * max(1, len(fractions)))
    fig, axes = plt.subplots(1, 1 + len(fractions), figsize=(bar_width + 3.2 * len(fractions), 4.8),
                             gridspec_kw={"width_ratios": [bar_width] + [3.2] * len(fractions)}, squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(methods))
    colours = plt.get_cmap("tab10")
    for i, method in enumerate(methods):
        means, sds, xs = [], [], []
        for j, fraction in enumerate(fractions):
            cell = cells.get(("val", fraction, method))
            if cell is None:
                continue
            mean, sd = mean_sd([sc["dsc"] for sc in cell["scores"]], 100.0)
            xs.append(j + (i - (len(methods) - 1) / 2) * width)
            means.append(mean)
            sds.append(0.0 if math.isnan(sd) else sd)
        ax.bar(xs, means, width, yerr=sds, capsize=3, label=method, color=colours(i % 10))
    for key, cell in ((k, v) for k, v in cells.items() if k[1] >= 1.0):
        mean, _ = mean_sd([sc["dsc"] for sc in cell["scores"]], 100.0)
        ax.axhline(mean, color="k", linestyle="--", linewidth=1, label=f"{key[2]} at 100 % labels")
    ax.set_xticks(range(len(fractions)))
    ax.set_xticklabels([f"{fraction_label(f)} labels" for f in fractions])
    ax.set_ylabel("DSC (%), mean over cases and classes")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    all_means = [mean_sd([sc["dsc"] for sc in c["scores"]], 100.0)[0] for c in cells.values()]
    finite = [m for m in all_means if not math.isnan(m)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 15.0), min(100.0, max(finite) + 5.0))
    for j, fraction in enumerate(fractions):
        ax = axes[0][1 + j]
        ax.axvline(0.0, color="k", linewidth=1)
        shown = []
        for i, method in enumerate(methods):
            result = paired.get(("val", fraction, method))
            if result is None or method == REFERENCE_METHOD:
                continue
            y = len(shown)
            shown.append(method)
            if not math.isnan(result.fold_low):
                ax.plot([result.fold_low, result.fold_high], [y + 0.2, y + 0.2], color=colours(i % 10), linewidth=1,
                        marker="|", markersize=8)
            ax.plot([result.bootstrap_low, result.bootstrap_high], [y, y], color=colours(i % 10), linewidth=4,
                    solid_capstyle="butt")
            ax.plot([result.effect], [y], "o", color="k", markersize=4)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels(shown, fontsize=8)
        ax.set_ylim(-0.7, max(0.7, len(shown) - 0.3))
        ax.invert_yaxis()
        ax.set_xlabel(f"Δ DSC vs {REFERENCE_METHOD} (points)")
        ax.set_title(f"{fraction_label(fraction)} labels\n95 % CI: cases (thick), folds (thin)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
