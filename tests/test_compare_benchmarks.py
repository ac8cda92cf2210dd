"""scripts/compare_benchmarks.py: paired Δ between runs kept in different benchmark outputs."""

import importlib.util
import os
import subprocess
import sys

import pytest

from nnunet_cl.tools.benchmark_report import write_rows

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "compare_benchmarks.py")


def write_start(output, trainer, method, dsc_per_fold):
    """Per-case metrics of one start as the benchmark writes them: two classes, DSC given per fold and case."""
    for fold, cases in dsc_per_fold.items():
        rows = [dict(dataset="Dataset004_Hippocampus", method=method, trainer=trainer, fraction=0.1, fold=fold,
                     split="val", case=case, **{"class": name}, class_id=class_id, dsc=dsc, jc=dsc, hd95=1.0,
                     asd=1.0, n_ref=10, n_pred=10, distance_undefined=False)
                for case, dsc in cases.items() for class_id, name in ((1, "a"), (2, "b"))]
        write_rows(rows, os.path.join(output, "metrics", trainer, f"fold_{fold}_val.csv"))


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_effect_and_intervals_against_the_reference(tmp_path):
    reference = {0: {"c1": 0.70, "c2": 0.80}, 1: {"c3": 0.60, "c4": 0.90}, 2: {"c5": 0.75}}
    # +2 points on folds 0 and 2, +4 on fold 1: effect (2 + 4 + 2) / 3
    better = {0: {"c1": 0.72, "c2": 0.82}, 1: {"c3": 0.64, "c4": 0.94}, 2: {"c5": 0.77}}
    write_start(tmp_path / "a", "nnUNetTrainerScratch_10pct", "scratch", reference)
    write_start(tmp_path / "b", "nnUNetTrainerPCLInit_10pct", "pcl", better)
    out = tmp_path / "table.md"
    proc = run(f"scratch={tmp_path / 'a'}:nnUNetTrainerScratch_10pct",
               f"warm={tmp_path / 'b'}:nnUNetTrainerPCLInit_10pct", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    header, _, scratch_line, warm_line = proc.stdout.splitlines()
    assert header.startswith("| start | fold 0 | fold 1 | fold 2 | mean | Δ vs scratch |")
    assert scratch_line.startswith("| scratch | 75.00 | 75.00 | 75.00 | 75.00 | reference")
    assert warm_line.startswith("| warm | 77.00 | 79.00 | 77.00 | 77.67 | +2.67 |")
    # cases interval: fold 1's two cases differ by 4 each and the others by 2, so every resample gives 8/3
    assert "[+2.67, +2.67]" in warm_line
    assert out.read_text() == proc.stdout


def test_one_shared_fold_has_no_fold_interval_and_names_the_shared_folds(tmp_path):
    write_start(tmp_path / "a", "nnUNetTrainerScratch_10pct", "scratch", {0: {"c1": 0.7}, 1: {"c2": 0.8}})
    write_start(tmp_path / "b", "nnUNetTrainerPCLInit_10pct", "pcl", {0: {"c1": 0.6}})
    proc = run(f"scratch={tmp_path / 'a'}:nnUNetTrainerScratch_10pct", f"pcl={tmp_path / 'b'}:nnUNetTrainerPCLInit_10pct")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[3] == "| pcl | 60.00 | — | 60.00 | -10.00 | [-10.00, -10.00] | – |"


def test_pooled_starts_pair_part_by_part_and_count_each_part_and_fold_as_one_fold(tmp_path):
    # two methods, stock and a lever: +1 point on method 1 (both folds), +3 on method 2's only fold; the
    # output folders' names hold "+" and ":", which must not split a start
    s1, s2, l1, l2 = (tmp_path / name for name in ("s1+stock", "s2:stock", "l1+lever:a", "l2"))
    write_start(s1, "nnUNetTrainerPCLInit_10pct", "pcl", {0: {"c1": 0.70}, 1: {"c2": 0.80}})
    write_start(s2, "nnUNetTrainerWCLInit_10pct", "wcl", {0: {"c1": 0.60}})
    write_start(l1, "nnUNetTrainerPCLInit_10pct", "pcl", {0: {"c1": 0.71}, 1: {"c2": 0.81}})
    write_start(l2, "nnUNetTrainerWCLInit_10pct", "wcl", {0: {"c1": 0.63}})
    pcl, wcl = "nnUNetTrainerPCLInit_10pct", "nnUNetTrainerWCLInit_10pct"
    proc = run(f"stock={s1}:{pcl}+{s2}:{wcl}", f"lever={l1}:{pcl}+{l2}:{wcl}")
    assert proc.returncode == 0, proc.stderr
    header, _, stock_line, lever_line = proc.stdout.splitlines()
    assert header.startswith("| start | fold 1/0 | fold 1/1 | fold 2/0 | mean | Δ vs stock |")
    assert stock_line.startswith("| stock | 70.00 | 80.00 | 60.00 | 70.00 | reference")
    # effect (1 + 1 + 3) / 3 with no spread inside any (part, fold); the t interval over the three is finite
    assert lever_line.startswith("| lever | 71.00 | 81.00 | 63.00 | 71.67 | +1.67 | [+1.67, +1.67] | [")
    assert "–" not in lever_line.split("|")[-2]


@pytest.mark.parametrize("args, message", [
    (["x={a}:nnUNetTrainerScratch_10pct+{a}:nnUNetTrainerScratch_10pct", "y={a}:nnUNetTrainerScratch_10pct"],
     "give every start as many"),
    (["scratch=somewhere"], "is not LABEL=OUTPUT:TRAINER"),
    (["x={a}:nnUNetTrainerScratch_10pct+"], "is not LABEL=OUTPUT:TRAINER"),
    (["x={a}:nnUNetTrainerScratch_10pct", "y={a}:nnUNetTrainerPCLInit_10pct"], "no validation metrics of "
                                                                                "nnUNetTrainerPCLInit_10pct"),
    (["x={a}:nnUNetTrainerScratch_10pct", "x={a}:nnUNetTrainerScratch_10pct"], "labels must differ"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    write_start(tmp_path / "a", "nnUNetTrainerScratch_10pct", "scratch", {0: {"c1": 0.7}})
    proc = run(*[a.format(a=tmp_path / "a") for a in args], *([] if len(args) > 1 else ["y=b:c"]))
    assert proc.returncode == 1
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_curve_draws_each_series_against_its_setting(tmp_path):
    reference = {0: {"c1": 0.70, "c2": 0.80}, 1: {"c3": 0.60}}
    write_start(tmp_path / "ref", "nnUNetTrainerScratch_10pct", "scratch", reference)
    shifted = {}
    for steps, shift in ((250, 0.01), (1000, 0.03), (4000, -0.02)):
        shifted[steps] = {f: {c: v + shift for c, v in cases.items()} for f, cases in reference.items()}
        write_start(tmp_path / f"s{steps}", "nnUNetTrainerSuperCLInit_10pct", "supercl", shifted[steps])
    png = tmp_path / "curve.png"
    # the starts are given out of order: the curve sorts each series by its setting
    proc = run(f"scratch={tmp_path / 'ref'}:nnUNetTrainerScratch_10pct",
               *(f"supercl@{s}={tmp_path / f's{s}'}:nnUNetTrainerSuperCLInit_10pct" for s in (4000, 250, 1000)),
               "--curve", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spec = importlib.util.spec_from_file_location("compare_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    starts = [("scratch", module.load_start(str(tmp_path / "ref"), "nnUNetTrainerScratch_10pct"))]
    starts += [(f"supercl@{s}", module.load_start(str(tmp_path / f"s{s}"), "nnUNetTrainerSuperCLInit_10pct"))
               for s in (4000, 250, 1000)]
    (name, points), = module.curve_points(starts).items()
    assert name == "supercl"
    assert [p[0] for p in points] == [250.0, 1000.0, 4000.0]
    # every case shifted alike: the effect is the shift and the cases interval has no width
    for (_, effect, low, high), shift in zip(points, (1.0, 3.0, -2.0)):
        assert effect == pytest.approx(shift) and low == pytest.approx(shift) and high == pytest.approx(shift)


def test_curve_refuses_a_label_without_its_setting_before_drawing(tmp_path):
    write_start(tmp_path / "a", "nnUNetTrainerScratch_10pct", "scratch", {0: {"c1": 0.7}})
    write_start(tmp_path / "b", "nnUNetTrainerPCLInit_10pct", "pcl", {0: {"c1": 0.6}})
    png = tmp_path / "curve.png"
    proc = run(f"scratch={tmp_path / 'a'}:nnUNetTrainerScratch_10pct", f"pcl@many={tmp_path / 'b'}:"
               "nnUNetTrainerPCLInit_10pct", "--curve", str(png))
    assert proc.returncode == 1 and not png.exists()
    assert "labelled SERIES@X" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
