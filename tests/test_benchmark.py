"""The benchmark's planning (which runs, which are finished), its reports, and one tiny end-to-end run."""

import csv
import json
import math
import os
import types

import pytest

from nnunet_cl.tools.benchmark import Benchmark
from nnunet_cl.tools.benchmark_children import ChildProcesses, progress_line
from nnunet_cl.tools.benchmark_dataset import check_test_folder, msd_dataset_name, preprocessing_state
from nnunet_cl.tools.benchmark_evaluation import BenchmarkEvaluation
from nnunet_cl.tools.benchmark_plan import (BenchmarkLayout, discover_families, make_budget, plan_runs,
                                      FinetuneRun, run_state, runs_in)
from nnunet_cl.tools.benchmark_report import markdown, plot_dsc, read_rows, write_rows
from nnunet_cl.errors import NnunetClError
from nnunet_cl.pretraining.methods import METHODS
from tests.conftest import SYNTH_ID


def fake_trainer_module():
    """Three tagged families; a subclass of a tagged class must not become a cell of its own."""
    class Base:            # the attributes nnUNetTrainerCL declares
        label_fraction = 1.0
        pretraining_method = ""

    def make(name, fraction, tag=None, base=Base, **attrs):
        body = dict(attrs, label_fraction=fraction)
        if tag:
            body["benchmark_name"] = tag
        return type(name, (base,), body)

    classes = [make("Scratch", 1.0, "scratch"), make("Scratch_10pct", 0.1, "scratch"),
               make("Scratch_25pct", 0.25, "scratch"),
               make("Semi_10pct", 0.1, "semi"), make("Semi_25pct", 0.25, "semi")]
    classes.append(make("Untagged_10pct", 0.1, base=classes[1]))      # inherits the tag -> ignored
    module = types.SimpleNamespace(**{c.__name__: c for c in classes})
    module.__all__ = [c.__name__ for c in classes]
    return module


def test_families_come_from_own_class_attributes():
    families = discover_families(fake_trainer_module())
    assert families.names == ["scratch", "semi"]
    assert families.trainer("semi", 0.1).__name__ == "Semi_10pct"
    assert families.trainer("semi", 1.0) is None


def test_duplicate_cells_are_refused():
    module = fake_trainer_module()
    module.Other = type("Other", (), {"benchmark_name": "semi", "label_fraction": 0.1})
    module.__all__.append("Other")
    with pytest.raises(NnunetClError, match="two trainers claim"):
        discover_families(module)


def test_plan_order_upper_bound_and_missing_cells():
    families = discover_families(fake_trainer_module())
    runs, missing = plan_runs(families, None, (0.25, 0.1), folds=(0, 1))
    labels = [(r.method, r.fraction, r.fold) for r in runs]
    assert labels[:5] == [("scratch", 0.1, 0), ("semi", 0.1, 0), ("scratch", 0.25, 0), ("semi", 0.25, 0),
                          ("scratch", 1.0, 0)]
    assert labels[5:] == [(m, f, 1) for m, f, _ in labels[:5]]
    assert missing == []
    runs, missing = plan_runs(families, ["semi"], (0.1, 1.0), folds=(0,))
    assert [(r.method, r.fraction) for r in runs] == [("semi", 0.1)] and missing == [("semi", 1.0)]
    runs, _ = plan_runs(families, ["scratch"], (0.1,), folds=(0,), upper_bound=False)
    assert [r.fraction for r in runs] == [0.1]
    with pytest.raises(NnunetClError, match="unknown benchmark method"):
        plan_runs(families, ["nope"], (0.1,))
    with pytest.raises(NnunetClError, match="label fraction 0.5"):
        plan_runs(families, None, (0.5,))


def test_real_registry_covers_every_method_with_init_trainers():
    families = discover_families()
    expected = ["scratch"] + [m.name for m in METHODS.values() if getattr(m, "has_init_trainers", True)]
    assert set(expected) <= set(families.names)
    runs, _ = plan_runs(families, None, (0.1, 0.25), folds=(0, 1))
    assert {r.method for r in runs} == set(families.names)
    for run in runs:
        method = METHODS.get(run.method)
        if run.method == "scratch" or method is None:
            continue
        assert run.pretrain is not None and run.pretrain.method == run.method
    # One checkpoint per method, except label-aware ones: one per fraction and fold.
    for name, method in METHODS.items():
        jobs = {r.pretrain for r in runs if r.pretrain is not None and r.pretrain.method == name}
        if not jobs:
            continue
        if method.is_label_aware():
            assert len(jobs) == 4 and len({j.folder for j in jobs}) == 4
            assert all(dict(j.options).keys() == {"fraction", "fold"} for j in jobs)
        else:
            assert len(jobs) == 1 and next(iter(jobs)).options == ()


def test_run_states_follow_the_files(tmp_path):
    families = discover_families(fake_trainer_module())
    run = plan_runs(families, ["scratch"], (0.1,), folds=(0,), upper_bound=False)[0][0]
    layout = BenchmarkLayout(str(tmp_path), "Dataset990_Synth")
    assert run_state(layout, run) == "pending"
    folder = layout.fold_folder(run)
    os.makedirs(os.path.join(folder, "validation"))
    open(os.path.join(folder, "checkpoint_latest.pth"), "w").close()
    assert run_state(layout, run) == "resume"
    open(os.path.join(folder, "validation", "summary.json"), "w").close()
    assert run_state(layout, run) == "evaluate"
    os.makedirs(os.path.dirname(layout.metrics_file(run, "val")))
    open(layout.metrics_file(run, "val"), "w").close()
    assert run_state(layout, run) == "done"
    assert run_state(layout, run, with_test=True) == "evaluate"


def test_runs_are_read_back_from_their_fold_folders(tmp_path):
    """runs_in inverts fold_folder for every planned run (fold "all" and a trainer name with "__" too) and skips
    folders that are not a run's (a pre-trained checkpoint's folder; fold_01, which fold_folder never writes)."""
    output = str(tmp_path / "out [1]")  # glob characters in the user's path
    runs, _ = plan_runs(discover_families(), fractions=(0.1, 0.25), folds=(0, 1, "all"))
    odd = FinetuneRun(method="", trainer="nnUNetTrainer__Odd", fraction=0.0, fold=2)
    layouts = {run.trainer: BenchmarkLayout(output, "Dataset004_Hippocampus", "nnUNetResEncUNetMPlans")
               for run in runs}
    layouts[odd.trainer] = BenchmarkLayout(output, "Dataset004_Hippocampus")
    for run in runs + [odd]:
        os.makedirs(layouts[run.trainer].fold_folder(run))
        if run.pretrain:
            os.makedirs(os.path.dirname(layouts[run.trainer].checkpoint(run.pretrain)), exist_ok=True)
    os.makedirs(os.path.join(output, "nnUNet_results", "Dataset004_Hippocampus", "T__nnUNetPlans__2d", "fold_01"))
    found = [(layout, run.trainer, run.fold) for layout, run in runs_in(output)]
    assert sorted(found, key=str) == sorted({(layouts[run.trainer], run.trainer, run.fold) for run in runs + [odd]},
                                            key=str)
    assert runs_in(str(tmp_path / "nothing")) == []


def test_budget_overrides_and_pinning(tmp_path):
    budget = make_budget("cpu", finetune_epochs=3, device=None)
    assert budget.finetune_epochs == 3 and budget.pretrain_epochs == make_budget("cpu").pretrain_epochs
    assert make_budget("paper").finetune_env()["nnUNet_cl_num_epochs"] is None
    # messages name the benchmark's own flags (--epochs is the fine-tuning epochs here)
    with pytest.raises(NnunetClError, match="^--epochs 0 must be an integer >= 1$"):
        make_budget("cpu", finetune_epochs=0)
    with pytest.raises(NnunetClError, match=r"^--pretrain-batch 1 must be an integer >= 2"):
        make_budget("cpu", pretrain_batch_size=1)
    with pytest.raises(NnunetClError, match="unknown preset"):
        make_budget("fast")
    bench = Benchmark(types.SimpleNamespace(processes=2, verbose=False), make_budget("tiny"))
    bench.place(str(tmp_path), "Dataset990_Synth", "nnUNetPlans")
    bench.pin_budget()
    bench.pin_budget()                                    # same budget: fine
    bench = Benchmark(types.SimpleNamespace(processes=2, verbose=False), make_budget("tiny", finetune_epochs=2))
    bench.place(str(tmp_path), "Dataset990_Synth", "nnUNetPlans")
    with pytest.raises(NnunetClError, match="finetune_epochs"):
        bench.pin_budget()


def test_fine_tuning_levers_are_pinned_with_the_budget(tmp_path, monkeypatch):
    for variable in ("nnUNet_cl_finetune_schedule", "nnUNet_cl_finetune_peak_lr", "nnUNet_cl_pretrained_parts",
                     "nnUNet_cl_weight_norm_reset"):
        monkeypatch.delenv(variable, raising=False)

    def pin(output=tmp_path):
        """A benchmark started with the environment as it is now (the levers are read once, at its start)."""
        bench = Benchmark(types.SimpleNamespace(processes=2, verbose=False), make_budget("tiny", finetune_epochs=2))
        bench.place(str(output), "Dataset990_Synth", "nnUNetPlans")
        bench.pin_budget()
        return bench

    monkeypatch.setenv("nnUNet_cl_finetune_schedule", "nosuch")
    with pytest.raises(NnunetClError, match="not a fine-tuning schedule"):
        pin()
    assert not (tmp_path / "budget.json").exists()        # checked before anything is written
    monkeypatch.setenv("nnUNet_cl_finetune_schedule", "warmup")
    bench = pin()
    pinned = json.loads((tmp_path / "budget.json").read_text())["budget"]
    assert pinned["finetune_levers"] == {"nnUNet_cl_finetune_schedule": "warmup"}
    monkeypatch.delenv("nnUNet_cl_finetune_schedule")     # changed after the start: the benchmark keeps its own
    bench.pin_budget()
    monkeypatch.setenv("nnUNet_cl_finetune_schedule", "warmup")
    pin()                                                 # the same levers: fine
    monkeypatch.setenv("nnUNet_cl_weight_norm_reset", "1")
    with pytest.raises(NnunetClError, match=r"differs in: nnUNet_cl_weight_norm_reset \(0 there, 1 now\)\)"):
        pin()
    monkeypatch.delenv("nnUNet_cl_weight_norm_reset")
    monkeypatch.delenv("nnUNet_cl_finetune_schedule")     # no lever set against a folder made with one
    with pytest.raises(NnunetClError, match=r"nnUNet_cl_finetune_schedule \(warmup there, stock now\)"):
        pin()
    monkeypatch.setenv("nnUNet_cl_finetune_schedule", "decoder_first")    # 4 phases; this budget has 2 epochs
    with pytest.raises(NnunetClError, match="decoder_first needs at least 4 epochs .* 2; raise --epochs of the benchmark"):
        pin(tmp_path / "never")
    assert not (tmp_path / "never").exists()
    monkeypatch.delenv("nnUNet_cl_finetune_schedule")
    unpinned = tmp_path / "plain"
    unpinned.mkdir()
    pin(unpinned)
    pinned = json.loads((unpinned / "budget.json").read_text())["budget"]
    assert "finetune_levers" not in pinned
    assert pinned["finetune_defaults"]["nnUNet_cl_finetune_schedule"] == "stock"
    monkeypatch.setenv("nnUNet_cl_pretrained_parts", "encoder")   # a lever set to the default it was made under
    pin(unpinned)
    assert json.loads((unpinned / "budget.json").read_text())["budget"] == pinned     # kept as it was


def test_an_output_made_under_other_lever_defaults_is_not_continued_with_the_new_ones(tmp_path, monkeypatch):
    """A changed trainer default (encoder-only loading; budget.json files written before the defaults were
    pinned were made loading everything) must not mix runs made under both in one output; setting the old
    value explicitly continues it."""
    for variable in ("nnUNet_cl_finetune_schedule", "nnUNet_cl_finetune_peak_lr", "nnUNet_cl_pretrained_parts",
                     "nnUNet_cl_weight_norm_reset"):
        monkeypatch.delenv(variable, raising=False)

    def pin(output):
        bench = Benchmark(types.SimpleNamespace(processes=2, verbose=False), make_budget("tiny", finetune_epochs=2))
        bench.place(str(output), "Dataset990_Synth", "nnUNetPlans")
        bench.pin_budget()

    today = tmp_path / "today"
    today.mkdir()
    pin(today)
    pin(today)                                            # made under today's defaults: continues
    legacy = json.loads((today / "budget.json").read_text())
    assert legacy["budget"]["finetune_defaults"]["nnUNet_cl_pretrained_parts"] == "encoder"
    del legacy["budget"]["finetune_defaults"]            # as written before the defaults were pinned
    (tmp_path / "budget.json").write_text(json.dumps(legacy))
    with pytest.raises(NnunetClError, match=r"differs in: nnUNet_cl_pretrained_parts \(all there, encoder now\)"):
        pin(tmp_path)
    monkeypatch.setenv("nnUNet_cl_pretrained_parts", "all")
    pin(tmp_path)
    assert json.loads((tmp_path / "budget.json").read_text()) == legacy


def test_the_report_names_the_levers_the_benchmark_pinned_not_the_environment_of_the_moment(tmp_path, monkeypatch):
    for variable in ("nnUNet_cl_finetune_peak_lr", "nnUNet_cl_pretrained_parts", "nnUNet_cl_weight_norm_reset"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("nnUNet_cl_finetune_schedule", "warmup")
    bench = Benchmark(types.SimpleNamespace(processes=2, verbose=False), make_budget("tiny", finetune_epochs=2))
    monkeypatch.setenv("nnUNet_cl_finetune_schedule", "adam")
    evaluation = BenchmarkEvaluation(None, bench.budget, BenchmarkLayout(str(tmp_path), "Dataset990_Synth"), SYNTH_ID,
                                     {}, bench.children, budget_fingerprint=bench.fingerprint)
    (line,) = [h for h in evaluation.report_header([]) if h.startswith("- fine-tuning levers")]
    assert line == ("- fine-tuning levers: nnUNet_cl_finetune_schedule=warmup; defaults: nnUNet_cl_finetune_peak_lr "
                    "the schedule's, nnUNet_cl_pretrained_parts encoder, nnUNet_cl_weight_norm_reset 0")
    legacy = {k: v for k, v in bench.fingerprint.items() if k not in ("finetune_levers", "finetune_defaults")}
    plain = BenchmarkEvaluation(None, bench.budget, evaluation.layout, SYNTH_ID, {}, bench.children,
                                budget_fingerprint=legacy)     # a budget.json from before levers were pinned
    assert ("- fine-tuning levers: none set; defaults: nnUNet_cl_finetune_schedule stock, nnUNet_cl_finetune_peak_lr "
            "the schedule's, nnUNet_cl_pretrained_parts all, nnUNet_cl_weight_norm_reset 0") in plain.report_header([])


def test_dataset_helpers(tmp_path):
    task = tmp_path / "Task04_Hippocampus"
    task.mkdir()
    with pytest.raises(NnunetClError, match="not an MSD task folder"):
        msd_dataset_name(str(task))
    (task / "dataset.json").write_text("{}")
    assert msd_dataset_name(str(task)) == (4, "Dataset004_Hippocampus")
    assert preprocessing_state(str(tmp_path), str(tmp_path), "Dataset004_Hippocampus", "nnUNetPlans") == "plan"
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir(), labels.mkdir()
    (images / "a_0000.nii.gz").write_text(""), (images / "b_0000.nii.gz").write_text("")
    (labels / "a.nii.gz").write_text("")
    with pytest.raises(NnunetClError, match="no label"):
        check_test_folder(str(images), str(labels), ".nii.gz")
    (labels / "b.nii.gz").write_text("")
    assert check_test_folder(str(images), str(labels), ".nii.gz") == ["a", "b"]
    assert progress_line("2026-01-01 10:00:00.123: Epoch 4", 20, 0).startswith("epoch 5/20")
    assert (progress_line("2026-01-01 10:00:00.123: Pseudo dice [np.float32(0.8249), np.float32(0.7632)]", 20, 0)
            == "Pseudo dice [0.8249, 0.7632]")


def rows_for(method, fraction, fold, dscs, hd95s):
    return [{"dataset": "D", "method": method, "trainer": "T", "fraction": fraction, "fold": fold, "split": "val",
             "case": f"c{i}", "class": "organ", "class_id": "1", "dsc": d, "jc": d / (2 - d), "hd95": h, "asd": h / 2,
             "n_ref": 10, "n_pred": 10, "distance_undefined": math.isnan(h)} for i, (d, h) in enumerate(zip(dscs, hd95s))]


def test_report_mean_sd_over_folds_and_undefined_counts(tmp_path):
    rows = (rows_for("scratch", 0.1, 0, [0.8, 0.8], [2.0, 4.0]) + rows_for("scratch", 0.1, 1, [0.9, 0.9], [1.0, math.nan])
            + rows_for("scratch", 1.0, 0, [0.95, 0.95], [1.0, 1.0]))
    path = str(tmp_path / "r.csv")
    write_rows(rows, path)
    rows = read_rows(path)
    assert len(rows) == 6 and rows[3]["distance_undefined"] and math.isnan(rows[3]["hd95"])
    text = markdown(rows, ["# header"])
    line = next(l for l in text.splitlines() if l.startswith("| 10 % | scratch"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # DSC: fold means 80 and 90 -> 85.0 +- 7.1 (sample sd); HD95: fold means 3.0 and 1.0 (NaN left out) -> 2.00 +- 1.41
    assert cells[2] == "85.0 ± 7.1"
    assert cells[4] == "2.00 ± 1.41"
    assert cells[6:8] == ["0,1", "1"]
    assert any(l.startswith("| 100 % | scratch | 95.0 |") for l in text.splitlines())
    plot_dsc(rows, str(tmp_path / "r.png"), "title")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_tiny_benchmark_end_to_end_and_resume(synthetic_env, tmp_path):
    method = "pcl" if "pcl" in METHODS else next(iter(METHODS))
    out = str(tmp_path / "bench")
    command = ["nnunet_cl", "benchmark", "-d", SYNTH_ID, "--preset", "tiny", "-m", "scratch", method,
               "--fractions", "0.25", "--no-upper-bound", "-f", "0", "-o", out, "-np", "1"]
    first = synthetic_env.run(command, timeout=900)
    assert "nnUNetv2_train" in first.stdout and "pretrain" in first.stdout
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    splits = json.load(open(os.path.join(synthetic_env.preprocessed, "Dataset990_Synth", "splits_final.json")))
    n_val = len(splits[0]["val"])
    assert len(rows) == 2 * n_val * 2                                # 2 runs x val cases x 2 classes
    assert {r["method"] for r in rows} == {"scratch", method} and {r["class"] for r in rows} == {"left", "right"}
    # Every row holds what nnU-Net's own evaluation of the same validation prediction says for that case and class.
    labels = json.load(open(os.path.join(synthetic_env.raw, "Dataset990_Synth", "dataset.json")))["labels"]
    for row in rows:
        trainer_folder = os.path.join(out, "nnUNet_results", "Dataset990_Synth", f"{row['trainer']}__nnUNetPlans__2d")
        summary = json.load(open(os.path.join(trainer_folder, "fold_0", "validation", "summary.json")))
        nnunet = next(c["metrics"][str(labels[row["class"]])] for c in summary["metric_per_case"]
                      if os.path.basename(c["reference_file"]) == row["case"] + ".nii.gz")
        assert (int(row["n_ref"]), int(row["n_pred"])) == (nnunet["n_ref"], nnunet["n_pred"]), row
        assert int(row["n_ref"]) > 0 and float(row["dsc"]) == pytest.approx(nnunet["Dice"], abs=1e-9), row
    text = open(os.path.join(out, "results.md")).read()
    assert "| 25 % | scratch |" in text and f"| {method} |" in text and "HD95 (mm)" in text
    assert open(os.path.join(out, "results.png"), "rb").read(4) == b"\x89PNG"

    second = synthetic_env.run(command, timeout=300)
    assert "$ nnUNetv2_train" not in second.stdout and "$ nnunet_cl pretrain" not in second.stdout
    assert "cached" in second.stdout and second.stdout.count(": done (") == 2

    # --report-only over a wider selection (the 10 % runs are pending): the report is rewritten, nothing starts.
    os.remove(os.path.join(out, "results.md"))
    before = sorted(os.listdir(os.path.join(out, "nnUNet_results", "Dataset990_Synth")))
    wider = command[:command.index("--fractions") + 1] + ["0.1", "0.25"] + command[command.index("--fractions") + 2:]
    report = synthetic_env.run(wider + ["--report-only"], training=False)
    assert "$ nnUNetv2_train" not in report.stdout and "$ nnunet_cl pretrain" not in report.stdout
    assert "2 of 4 runs" in report.stdout and report.stdout.count("not in the report (pending)") == 2
    assert sorted(os.listdir(os.path.join(out, "nnUNet_results", "Dataset990_Synth"))) == before
    text = open(os.path.join(out, "results.md")).read()
    assert "runs finished: 2/4" in text and "| 25 % | scratch |" in text and "| 10 % |" not in text

    # Another output (another fine-tuning lever) takes the finished pre-training instead of pre-training again.
    other = str(tmp_path / "bench_warmup")
    lever = dict(nnUNet_cl_finetune_schedule="adam")
    adopt = ["nnunet_cl", "benchmark", "-d", SYNTH_ID, "--preset", "tiny", "-m", method, "--fractions", "0.25",
             "--no-upper-bound", "-f", "0", "-o", other, "-np", "1", "--pretrained-from", out]
    listed = synthetic_env.run(adopt + ["--list"], training=False, **lever)
    assert f"taken from {out}" in listed.stdout and not os.path.exists(other)
    folder = lambda root: os.path.join(root, "nnUNet_results", "Dataset990_Synth", "nnunet_cl")
    (pretraining,) = [name for name in os.listdir(folder(out)) if not name.startswith(".")]
    stale = os.path.join(folder(other), f".{pretraining}.k1ll3d.tmp")      # an adoption killed mid-copy
    os.makedirs(stale)
    open(os.path.join(stale, "checkpoint_final.pth"), "w").close()
    third = synthetic_env.run(adopt, timeout=900, **lever)
    assert "$ nnunet_cl pretrain" not in third.stdout and "taken from" in third.stdout
    assert "$ nnUNetv2_train" in third.stdout
    source_files = sorted(os.listdir(os.path.join(folder(out), os.listdir(folder(out))[0])))
    (adopted,) = os.listdir(folder(other))            # the stale copy is gone
    assert sorted(os.listdir(os.path.join(folder(other), adopted))) == [f for f in source_files
                                                                           if f != ".nnunet_cl.lock"]
    checkpoint = lambda root: open(os.path.join(folder(root), adopted, "checkpoint_final.pth"), "rb").read()
    assert checkpoint(other) == checkpoint(out)
    rows = list(csv.DictReader(open(os.path.join(other, "results.csv"))))
    assert {r["method"] for r in rows} == {method}


def test_child_environment_carries_exactly_the_budget(monkeypatch):
    from nnunet_cl.ext_trainer import SHIM_DIR
    monkeypatch.setenv("nnUNet_cl_num_epochs", "7")                    # a leftover in the user's shell
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_cl_plot_every", "3")
    paper = ChildProcesses(make_budget("paper"), processes=2).env(training=True)
    assert not {"nnUNet_cl_num_epochs", "nnUNet_cl_save_every", "nnUNet_cl_plot_every"} & set(paper)
    cpu_budget = make_budget("cpu")
    children = ChildProcesses(cpu_budget, processes=2)
    env = children.env(training=True)
    assert env["nnUNet_cl_num_epochs"] == str(cpu_budget.finetune_epochs)
    assert env["nnUNet_cl_batch_size"] == str(cpu_budget.finetune_batch_size)
    assert int(env["nnUNet_cl_save_every"]) < cpu_budget.finetune_epochs     # interrupted runs can resume
    assert 1 < int(env["nnUNet_cl_plot_every"]) < cpu_budget.finetune_epochs
    assert env["nnUNet_n_proc_DA"] == "0" and env["nnUNet_extTrainer"].split(os.pathsep)[0] == SHIM_DIR
    assert "nnUNet_n_proc_DA" not in children.env(training=False)       # 0 would break nnU-Net's planner


def test_plateau_preset_runs_three_folds_per_cell(synthetic_env):
    proc = synthetic_env.run(["nnunet_cl", "benchmark", "-d", SYNTH_ID, "--preset", "cpu-plateau", "-m", "scratch",
                              "--fractions", "0.1", "0.25", "--no-upper-bound", "--list"], training=False)
    cells = [l.split()[1:5] for l in proc.stdout.splitlines() if l.strip().startswith("finetune")]
    assert sorted(cells) == sorted([["scratch", f, "%", "fold"] for f in ("10", "25") for _ in range(3)])
    folds = [l.split()[5] for l in proc.stdout.splitlines() if l.strip().startswith("finetune")]
    assert sorted(folds) == ["0", "0", "1", "1", "2", "2"]


def mismatched_test_folder(tmp_path):
    images, labels = tmp_path / "imagesTs", tmp_path / "labelsTs"
    images.mkdir()
    labels.mkdir()
    for case in ("a", "b"):
        (images / f"{case}_0000.nii.gz").write_bytes(b"x")
        (labels / f"{case}.nii.gz").write_bytes(b"x")
    (labels / "c.nii.gz").write_bytes(b"x")                               # a label without its image
    return ["--test-images", str(images), "--test-labels", str(labels)]


def pinned_output(tmp_path, preset, dataset="Dataset990_Synth", **overrides):
    """An earlier benchmark output: only its budget.json, as the benchmark pins it."""
    other = tmp_path / "other"
    bench = Benchmark(types.SimpleNamespace(processes=2, verbose=False), make_budget(preset, **overrides))
    bench.place(str(other), dataset, "nnUNetPlans")
    bench.pin_budget()
    return str(other)


BENCHMARK_BAD_INPUT = [
    ("fold that does not exist", lambda t: ["-f", "9"], ("fold 9 does not exist", "folds (0-")),
    ("unknown preset", lambda t: ["--preset", "gpu-fast"], ("unknown preset 'gpu-fast'", "cpu-plateau")),
    ("test labels without images", mismatched_test_folder, ("1 labels in", "have no test image", "c.nii.gz")),
    ("test images not a folder", lambda t: ["--test-images", str(t / "nowhere"), "--test-labels", str(t)],
     ("--test-images", "nowhere is not a folder")),
    ("fine-tuning epochs 0", lambda t: ["--epochs", "0"], ("--epochs 0 must be an integer >= 1",)),
    ("pre-training batch 1", lambda t: ["--pretrain-batch", "1"], ("--pretrain-batch 1 must be an integer >= 2",)),
    ("processes 0", lambda t: ["-np", "0"], ("-np 0 must be an integer >= 1",)),
    ("plans that do not exist", lambda t: ["-p", "nnUNetResEncPlans"], ("has no plans 'nnUNetResEncPlans'",)),
    ("budget flag not a number", lambda t: ["--iters", "many"], ("--iters", "invalid int value: 'many'")),
    ("pretrained-from not a benchmark output", lambda t: ["--pretrained-from", str(t)],
     ("--pretrained-from", "is not a benchmark output")),
    ("pretrained-from another pre-training budget", lambda t: ["--pretrained-from", pinned_output(t, "tiny",
                                                                                                  pretrain_epochs=9)],
     ("--pretrained-from", "another budget (differs in: pretrain_epochs)")),
    ("report-only without an output", lambda t: ["--report-only"], ("holds no benchmark runs", "--report-only")),
    ("pretrained-from another dataset", lambda t: ["--pretrained-from", pinned_output(t, "tiny",
                                                                                      dataset="Dataset004_Hippocampus")],
     ("--pretrained-from", "holds runs of Dataset004_Hippocampus, not of Dataset990_Synth")),
]


@pytest.mark.integration
@pytest.mark.parametrize("name, extra, fragments", BENCHMARK_BAD_INPUT, ids=[c[0] for c in BENCHMARK_BAD_INPUT])
def test_benchmark_bad_input_is_one_line_and_writes_nothing(synthetic_env, tmp_path, name, extra, fragments):
    out = tmp_path / "bench"
    proc = synthetic_env.run(["nnunet_cl", "benchmark", "-d", SYNTH_ID, "--preset", "tiny", "-m", "scratch",
                              "--fractions", "0.1", "-o", str(out), *extra(tmp_path)], check=False, training=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet_cl: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()                                # no budget.json, nothing converted or trained


def test_quick_preset_selects_one_method_and_scratch_at_10_percent_on_fold_0(synthetic_env):
    proc = synthetic_env.run(["nnunet_cl", "benchmark", "-d", SYNTH_ID, "--preset", "quick", "--list"], training=False)
    lines = [l.split() for l in proc.stdout.splitlines() if l.strip().startswith(("finetune", "pretrain"))]
    assert [l[:2] for l in lines] == [["finetune", "scratch"], ["pretrain", "pcl"], ["finetune", "pcl"]], proc.stdout
    assert [l[-1] for l in lines if l[0] == "finetune"] == ["nnUNetTrainerScratch_10pct", "nnUNetTrainerPCLInit_10pct"]
    assert all(l[2:5] == ["10", "%", "fold"] and l[5] == "0" for l in lines if l[0] == "finetune")
    assert make_budget("quick").fingerprint() == make_budget("cpu").fingerprint()   # the cpu budget, fewer runs


@pytest.mark.integration
def test_quick_preset_without_a_dataset_generates_one_and_prints_both_dice_scores(tmp_path):
    """No -d and no nnU-Net variables: the generated dataset below OUTPUT, then the two runs' DSC and folders
    (budget shrunk to seconds through the preset overrides)."""
    import subprocess
    from tests.conftest import console_script

    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_compile="false", nnUNet_n_proc_DA="0")
    out = tmp_path / "quick"
    tiny = ["--pretrain-epochs", "1", "--pretrain-iters", "2", "--pretrain-batch", "4", "--epochs", "1",
            "--iters", "2", "--batch", "2", "--val-iters", "1"]
    proc = subprocess.run([console_script("nnunet_cl"), "benchmark", "--preset", "quick", "-o", str(out), "-np", "1",
                           *tiny], env=env, capture_output=True, text=True, timeout=2400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no dataset given (-d): generating Dataset990_Synth (40 cases" in proc.stdout
    assert (out / "nnUNet_raw" / "Dataset990_Synth" / "dataset.json").is_file()
    summary = proc.stdout[proc.stdout.index("validation DSC"):].splitlines()
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for trainer in ("nnUNetTrainerScratch_10pct", "nnUNetTrainerPCLInit_10pct"):
        (line,) = [l for l in summary if f" {trainer} " in l]
        dsc = [float(r["dsc"]) for r in rows if r["trainer"] == trainer]
        assert f"DSC {100 * sum(dsc) / len(dsc):.1f} %" in line, line     # the number of results.csv / results.md
        folder = line.split()[-1]
        assert folder.endswith(os.path.join(f"{trainer}__nnUNetPlans__2d", "fold_0"))
        assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))
    (checkpoint_line,) = [l for l in summary if "pre-trained checkpoint:" in l]
    assert os.path.isfile(checkpoint_line.split()[-1]) and "pcl__nnUNetPlans__2d" in checkpoint_line
    assert not [l for l in summary if "nnUNetTrainerScratch " in l]               # no 100 % upper bound


@pytest.mark.integration
def test_refused_benchmark_leaves_an_earlier_output_byte_identical(synthetic_env, tmp_path):
    out = tmp_path / "bench"
    bench = Benchmark(types.SimpleNamespace(processes=2, verbose=False), make_budget("tiny"))
    bench.place(str(out), "Dataset990_Synth", "nnUNetPlans")
    bench.pin_budget()
    (out / "nnUNet_results").mkdir()
    (out / "nnUNet_results" / "checkpoint_final.pth").write_bytes(b"an earlier run's checkpoint")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for extra in (["-f", "9"], ["--epochs", "2"]):            # a bad fold; then a budget other than the pinned one
        proc = synthetic_env.run(["nnunet_cl", "benchmark", "-d", SYNTH_ID, "--preset", "tiny", "-m", "scratch",
                                  "--fractions", "0.1", "-o", str(out), *extra], check=False, training=False)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
