"""results.md / results.csv / results.png: the paired difference to scratch, its layout and its special cases."""

import csv
import math

import pytest

from nnunet_cl.tools.benchmark_report import markdown, plot_dsc, read_rows, write_rows
from nnunet_cl.errors import NnunetClError


def rows_for(method, fraction, fold, dscs, split="val", classes=("left", "right")):
    """One row per case and class; case i has DSC dscs[i] in every class."""
    return [{"dataset": "D", "method": method, "trainer": f"T_{method}", "fraction": fraction, "fold": fold,
             "split": split, "case": f"c{i}", "class": name, "class_id": str(k + 1), "dsc": d, "jc": d / (2 - d),
             "hd95": 1.0, "asd": 0.5, "n_ref": 10, "n_pred": 10, "distance_undefined": False}
            for i, d in enumerate(dscs) for k, name in enumerate(classes)]


def table_row(text, prefix):
    line = next(l for l in text.splitlines() if l.startswith(prefix))
    return [c.strip() for c in line.split("|")[1:-1]]


def header_cells(text):
    line = next(l for l in text.splitlines() if l.startswith("| Labeled | Method | DSC"))
    return [c.strip() for c in line.split("|")[1:-1]]


@pytest.fixture
def three_fold_rows(tmp_path):
    rows = []
    for fold in (0, 1, 2):
        rows += rows_for("scratch", 0.1, fold, [0.70, 0.80])
        rows += rows_for("pcl", 0.1, fold, [0.70 + 0.01 * (fold + 1), 0.80 + 0.01 * (fold + 1)])   # +1, +2, +3 points
    rows += rows_for("supercl", 0.1, 0, [0.75, 0.85])                                                # fold 0 only
    rows += rows_for("jcl", 0.25, 0, [0.5, 0.5])                                                     # no scratch at 25 %
    path = str(tmp_path / "results.csv")
    write_rows(rows, path)
    return path


def test_results_md_layout_and_paired_columns(three_fold_rows):
    text = markdown(read_rows(three_fold_rows), ["## header"])
    assert header_cells(text) == ["Labeled", "Method", "DSC (%)", "JC (%)", "HD95 (mm)", "ASD (mm)", "folds", "undef.",
                                  "Δ DSC vs scratch", "95 % CI (cases)", "95 % CI (folds)"]
    scratch = table_row(text, "| 10 % | scratch")
    assert scratch[2] == "75.0 ± 0.0" and scratch[6] == "0,1,2"
    assert scratch[8:] == ["+0.0", "[+0.0, +0.0]", "[+0.0, +0.0]"]            # against itself: 0 by construction
    pcl = table_row(text, "|  | pcl")
    # per-fold effects 1, 2, 3 -> +2.0; every case of a fold moves the same, so the case bootstrap has zero width
    # within folds and the interval is [2, 2]; fold t interval 2 -+ 4.3027 * 1 / sqrt(3) = [-0.5, +4.5]
    assert pcl[8:] == ["+2.0", "[+2.0, +2.0]", "[-0.5, +4.5]"]
    supercl = table_row(text, "|  | supercl")
    assert supercl[6] == "0" and supercl[8:] == ["+5.0", "[+5.0, +5.0]", "–"]      # one fold: no fold interval
    jcl = table_row(text, "| 25 % | jcl")
    assert jcl[8:] == ["no scratch run", "–", "–"]
    assert "resampling unit = case, stratified by fold, 10000 resamples" in text


def test_partial_scratch_folds_are_named(tmp_path):
    rows = rows_for("scratch", 0.1, 0, [0.7, 0.8]) + rows_for("pcl", 0.1, 0, [0.8, 0.9]) \
        + rows_for("pcl", 0.1, 1, [0.1, 0.1])
    text = markdown(rows, [])
    assert table_row(text, "|  | pcl")[8] == "+10.0 (folds 0)"


def test_results_csv_carries_the_row_difference(three_fold_rows):
    with open(three_fold_rows, newline="") as f:
        rows = list(csv.DictReader(f))
    by = {(r["method"], r["fraction"], r["fold"], r["case"], r["class"]): r["dsc_minus_scratch"] for r in rows}
    assert float(by[("scratch", "0.1", "1", "c0", "left")]) == 0.0
    assert float(by[("pcl", "0.1", "2", "c1", "right")]) == pytest.approx(0.03)
    assert by[("jcl", "0.25", "0", "c0", "left")] == ""
    assert "dsc_minus_scratch" not in read_rows(three_fold_rows)[0]            # derived, recomputed when written


def test_test_folder_is_paired_separately(tmp_path):
    rows = (rows_for("scratch", 0.1, 0, [0.7, 0.8]) + rows_for("pcl", 0.1, 0, [0.8, 0.9])
            + rows_for("scratch", 0.1, 0, [0.5, 0.5], split="test") + rows_for("pcl", 0.1, 0, [0.4, 0.5], split="test"))
    text = markdown(rows, [])
    validation, test = text.split("### The separate test folder")
    assert table_row(validation, "|  | pcl")[8] == "+10.0"
    assert table_row(test, "|  | pcl")[8] == "-5.0"


def test_mismatched_case_sets_are_one_clear_error():
    rows = rows_for("scratch", 0.1, 0, [0.7, 0.8]) + rows_for("pcl", 0.1, 0, [0.8, 0.9, 0.9])
    with pytest.raises(NnunetClError, match=r"cannot pair fold 0: the case sets differ \(1 cases only in"):
        markdown(rows, [])


def test_plot_has_the_difference_panels(three_fold_rows, tmp_path):
    import matplotlib.image
    path = str(tmp_path / "r.png")
    ten_percent = [r for r in read_rows(three_fold_rows) if r["fraction"] == 0.1]
    plot_dsc(ten_percent, path, "title")
    one_fraction = matplotlib.image.imread(path)
    plot_dsc(read_rows(three_fold_rows), path, "title")
    two_fractions = matplotlib.image.imread(path)
    assert two_fractions.shape[1] > one_fraction.shape[1]                      # one Δ panel per fraction
    assert not math.isnan(float(one_fraction.mean()))
