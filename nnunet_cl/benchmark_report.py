"""The benchmark's outputs: ``results.csv`` (one row per case x class x run), ``results.md`` (a table
shaped like the SuperCL paper's Tables I/II) and ``results.png`` (DSC by method and fraction).

Aggregation (documented in results.md too): a run's score is the mean over its cases and foreground
classes (DSC and JC over all pairs; HD95 and ASD over the pairs where they are defined, see
``nnunet_cl.metrics``); the table shows mean +- sample standard deviation of the run scores over folds
(no +- with one fold). DSC and JC are in %, HD95 and ASD in the images' spacing unit (mm for MSD).
"""

from __future__ import annotations

import csv
import math
from collections import OrderedDict

import numpy as np

from nnunet_cl.atomic import _atomic_target
from nnunet_cl.benchmark_plan import fraction_label

COLUMNS = ["dataset", "method", "trainer", "fraction", "fold", "split", "case", "class", "class_id",
           "dsc", "jc", "hd95", "asd", "n_ref", "n_pred", "distance_undefined"]
METRICS = (("dsc", "DSC (%)", 100.0), ("jc", "JC (%)", 100.0), ("hd95", "HD95 (mm)", 1.0), ("asd", "ASD (mm)", 1.0))


def write_rows(rows: list, path: str) -> None:
    with _atomic_target(path) as tmp:
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
    return rows


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


# ---------------------------------------------------------------------------------------------- markdown
def markdown(rows: list, header_lines: list) -> str:
    lines = list(header_lines)
    cells = table_cells(rows)
    per_class = class_scores(rows)
    for split in dict.fromkeys(k[0] for k in cells):
        title = "validation cases of each fold" if split == "val" else "the separate test folder"
        lines += ["", f"### {title.capitalize()}", "",
                  "| Labeled | Method | " + " | ".join(label for _, label, _ in METRICS) + " | folds | undef. |",
                  "|---|---|" + "---|" * (len(METRICS) + 2)]
        previous_fraction = None
        for (s, fraction, method), cell in cells.items():
            if s != split:
                continue
            labeled = fraction_label(fraction) if fraction != previous_fraction else ""
            previous_fraction = fraction
            values = [format_mean_sd([sc[m] for sc in cell["scores"]], scale, 2 if scale == 1.0 else 1)
                      for m, _, scale in METRICS]
            undefined = sum(sc["undefined"] for sc in cell["scores"])
            lines.append(f"| {labeled} | {method} | " + " | ".join(values) +
                         f" | {','.join(map(str, cell['folds']))} | {undefined} |")
        classes = list(dict.fromkeys(c for k, v in per_class.items() if k[0] == split for c in v))
        lines += ["", f"DSC (%) per class ({title}):", "",
                  "| Labeled | Method | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
        previous_fraction = None
        for (s, fraction, method), by_class in per_class.items():
            if s != split:
                continue
            labeled = fraction_label(fraction) if fraction != previous_fraction else ""
            previous_fraction = fraction
            lines.append(f"| {labeled} | {method} | " +
                         " | ".join(format_mean_sd(by_class.get(c, []), 100.0, 1) for c in classes) + " |")
    lines += ["", "Each run's score is the mean over its cases and foreground classes; the table shows mean ± "
              "sample standard deviation over folds (no ± with one fold). HD95 and ASD leave out case/class pairs "
              "where exactly one of prediction and reference is empty (distance undefined); \"undef.\" counts them "
              "(summed over folds). Both empty counts as DSC = JC = 100 %, HD95 = ASD = 0."]
    return "\n".join(lines) + "\n"


def write_text(text: str, path: str) -> None:
    with _atomic_target(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


# ---------------------------------------------------------------------------------------------- plot
def plot_dsc(rows: list, path: str, title: str) -> None:
    """Grouped bars: DSC (%) per method at each fraction (validation), error bars = sd over folds;
    a 100 % row (scratch's upper bound) is drawn as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {k: v for k, v in table_cells(rows).items() if k[0] == "val"}
    fractions = sorted({k[1] for k in cells if k[1] < 1.0})
    methods = list(dict.fromkeys(k[2] for k in cells if k[1] < 1.0))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 + 0.45 * len(methods) * max(1, len(fractions))), 4.5))
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
    for k, (key, cell) in enumerate((k, v) for k, v in cells.items() if k[1] >= 1.0):
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
    fig.tight_layout()
    with _atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
