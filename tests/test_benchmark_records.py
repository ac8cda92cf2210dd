"""scripts/benchmark_records.py: results of a benchmark output kept without checkpoints, restored, verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "benchmark_records.py")
# Paths as a real benchmark output has them (nnunet_cl benchmark -d 4 -m supercl, 2026-12-04);
# test_paths_are_the_benchmark_layout ties them to BenchmarkLayout.
PRETRAINED = "nnUNet_results/Dataset004_Hippocampus/nnunet_cl/supercl__nnUNetPlans__2d/checkpoint_final.pth"
RUN = "nnUNet_results/Dataset004_Hippocampus/nnUNetTrainerSuperCLInit_10pct__nnUNetPlans__2d/fold_0"
RECORDED = ["budget.json", "logs/pretrain_supercl.log", "logs/nnUNetTrainerSuperCLInit_10pct_fold0.log",
            "metrics/nnUNetTrainerSuperCLInit_10pct/fold_0_val.csv", f"{RUN}/validation/summary.json",
            "results.csv", "results.md"]
UNFINISHED = "nnUNet_results/Dataset004_Hippocampus/nnUNetTrainerSuperCLInit_10pct__nnUNetPlans__2d/fold_1"
NOT_RECORDED = [PRETRAINED, f"{RUN}/checkpoint_final.pth", f"{RUN}/validation/hippocampus_001.nii.gz",
                f"{RUN}/training_log.txt", f"{UNFINISHED}/checkpoint_latest.pth",
                "logs/nnUNetTrainerSuperCLInit_10pct_fold1.log"]  # a run still going: its log is no curve yet


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def save_weights(path, scale=1.0):
    torch.manual_seed(0)
    weights = {"conv.weight": torch.randn(4, 2, 3, 3) * scale, "conv.bias": torch.zeros(4),
               "norm.num_batches_tracked": torch.tensor(0)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"network_weights": weights, "method": "supercl"}, path)


@pytest.fixture()
def output(tmp_path):
    """A benchmark output as the benchmark leaves it: records beside checkpoints and predictions."""
    folder = tmp_path / "output"
    for relative in RECORDED + NOT_RECORDED:
        if relative.endswith(".pth"):
            save_weights(str(folder / relative))
        else:
            write(str(folder / relative), f"content of {relative}\n")
    return folder


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


def test_paths_are_the_benchmark_layout():
    from nnunet_cl.tools.benchmark_plan import BenchmarkLayout, discover_families, plan_runs

    (run_,), _ = plan_runs(discover_families(), methods=["supercl"], fractions=[0.1], folds=(0,))
    layout = BenchmarkLayout("out", "Dataset004_Hippocampus")
    assert os.path.relpath(layout.checkpoint(run_.pretrain), "out") == PRETRAINED
    assert os.path.relpath(layout.summary_file(run_), "out") == f"{RUN}/validation/summary.json"
    assert os.path.relpath(layout.metrics_file(run_, "val"), "out") in RECORDED
    assert os.path.relpath(layout.log_file(run_.log_name), "out") in RECORDED
    assert os.path.relpath(layout.log_file(run_.pretrain.log_name), "out") in RECORDED


def test_save_keeps_records_and_weight_digests_only(output, tmp_path):
    records = tmp_path / "records"
    result = run("save", output, records)
    assert result.returncode == 0, result.stderr
    assert files_under(records) == sorted(RECORDED + ["pretrained_weights.json"])
    for relative in RECORDED:
        assert (records / relative).read_text() == f"content of {relative}\n"
    digests = json.loads((records / "pretrained_weights.json").read_text())
    assert list(digests) == [PRETRAINED]  # fine-tuned checkpoints are not pre-trainings
    assert len(digests[PRETRAINED]) == 64


def test_save_again_keeps_recorded_digests_and_refuses_other_weights(output, tmp_path):
    records = tmp_path / "records"
    assert run("save", output, records).returncode == 0
    recorded = (records / "pretrained_weights.json").read_text()
    os.remove(output / PRETRAINED)                       # as in an output restored on another machine
    again = run("save", output, records)
    assert again.returncode == 0, again.stderr
    assert (records / "pretrained_weights.json").read_text() == recorded
    save_weights(str(output / PRETRAINED), scale=2.0)    # another pre-training in the same output
    write(str(output / "results.md"), "a newer table\n")
    before = {relative: (records / relative).read_bytes() for relative in files_under(records)}
    refused = run("save", output, records)
    assert refused.returncode == 1 and "has other weights" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert {relative: (records / relative).read_bytes() for relative in files_under(records)} == before


def test_restore_into_empty_output_then_again_is_a_no_op(output, tmp_path):
    records, restored = tmp_path / "records", tmp_path / "restored"
    assert run("save", output, records).returncode == 0
    result = run("restore", records, restored)
    assert result.returncode == 0, result.stderr
    assert files_under(restored) == sorted(RECORDED)
    for relative in RECORDED:
        assert (restored / relative).read_text() == (output / relative).read_text()
    again = run("restore", records, restored)
    assert again.returncode == 0 and again.stdout.startswith("0 records restored")


def test_restore_refuses_a_conflict_before_writing(output, tmp_path):
    records, restored = tmp_path / "records", tmp_path / "restored"
    assert run("save", output, records).returncode == 0
    write(str(restored / "results.md"), "a user's own table\n")
    result = run("restore", records, restored)
    assert result.returncode == 1
    assert "results.md exists with other content" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert files_under(restored) == ["results.md"]
    assert (restored / "results.md").read_text() == "a user's own table\n"


def test_check_same_missing_and_a_changed_weight(output, tmp_path):
    records, remade = tmp_path / "records", tmp_path / "remade"
    assert run("save", output, records).returncode == 0
    missing = run("check", records, remade)
    assert missing.returncode == 1 and missing.stdout.split() == ["missing", PRETRAINED]
    save_weights(str(remade / PRETRAINED))
    same = run("check", records, remade)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.split() == ["same", PRETRAINED]
    save_weights(str(remade / PRETRAINED), scale=1.0 + 1e-6)
    differs = run("check", records, remade)
    assert differs.returncode == 1 and differs.stdout.split() == ["differs", PRETRAINED]


@pytest.mark.parametrize("action", ["save", "restore", "check", "merge"])
def test_wrong_folder_is_one_line(action, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(action, tmp_path / "empty", tmp_path / "target")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "target").exists()


# ------------------------------------------------------------------------------------------ merge
FOLD2 = RUN.replace("fold_0", "fold_2")
OTHER_RUN = [f"{FOLD2}/validation/summary.json", f"{FOLD2}/checkpoint_final.pth", f"{FOLD2}/validation/case.nii.gz",
             "metrics/nnUNetTrainerSuperCLInit_10pct/fold_2_val.csv", "logs/nnUNetTrainerSuperCLInit_10pct_fold2.log"]
# a label-aware pre-training (semi_local pre-trains per fraction and fold) that only OTHER made
OTHER_PRETRAINING = "nnUNet_results/Dataset004_Hippocampus/nnunet_cl/semi_local_frac10_fold2__nnUNetPlans__2d"
OTHER_ONLY_PRETRAINING = [f"{OTHER_PRETRAINING}/checkpoint_final.pth", f"{OTHER_PRETRAINING}/loss_curve.png",
                          "logs/pretrain_semi_local_frac10_fold2.log"]
OTHER_UNFINISHED = [f"{UNFINISHED.replace('fold_1', 'fold_3')}/checkpoint_latest.pth",
                    "logs/nnUNetTrainerSuperCLInit_10pct_fold3.log"]


@pytest.fixture()
def other(tmp_path):
    """A second output of the same benchmark command: fold 2 finished, fold 3 still going, the same pre-training
    and one that only it made."""
    folder = tmp_path / "other"
    for relative in ["budget.json", "results.md", PRETRAINED] + OTHER_RUN + OTHER_UNFINISHED + OTHER_ONLY_PRETRAINING:
        if relative.endswith(".pth"):
            save_weights(str(folder / relative))
        else:
            content = "content of budget.json\n" if relative == "budget.json" else f"other's {relative}\n"
            write(str(folder / relative), content)
    return folder


def test_merge_copies_the_finished_runs_only(output, other):
    before = {relative: (output / relative).read_bytes() for relative in files_under(output)}
    result = run("merge", other, output)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 finished runs merged") and "(nnUNetTrainerSuperCLInit_10pct_fold2)" in result.stdout
    assert files_under(output) == sorted(list(before) + OTHER_RUN + OTHER_ONLY_PRETRAINING)
    for relative in OTHER_RUN + OTHER_ONLY_PRETRAINING:
        assert (output / relative).read_bytes() == (other / relative).read_bytes()
    for relative, content in before.items():             # the output's own report and runs stay as they were
        assert (output / relative).read_bytes() == content
    again = run("merge", other, output)                  # the run is now in both: refused, nothing written
    assert again.returncode == 1 and "exists already" in again.stderr
    assert files_under(output) == sorted(list(before) + OTHER_RUN + OTHER_ONLY_PRETRAINING)


def differing_budget(output, other):
    write(str(other / "budget.json"), "another budget\n")
    return "budget.json of"


def other_pretraining(output, other):
    save_weights(str(other / PRETRAINED), scale=2.0)
    return "has other weights"


def same_run(output, other):
    write(str(other / RUN / "validation" / "summary.json"), "a second fold 0\n")
    return "exists already"


def unfinished_pretraining_in_output(output, other):
    save_weights(str(output / OTHER_PRETRAINING / "checkpoint_latest.pth"))   # OTHER finished it, OUTPUT did not
    return "holds that run or pre-training too (finished or not)"


def locked_output(output, other):
    return "is in use by another run"   # the test holds OUTPUT's lock during the merge


@pytest.mark.parametrize("spoil", [differing_budget, other_pretraining, same_run, unfinished_pretraining_in_output,
                                   locked_output])
def test_merge_refusals_write_nothing(output, other, spoil):
    from nnunet_cl.folder_lock import FolderLock
    expected = spoil(output, other)
    before = {relative: (output / relative).read_bytes() for relative in files_under(output)}
    if spoil is locked_output:
        with FolderLock(str(output), "nnunet_cl benchmark"):
            result = run("merge", other, output)
    else:
        result = run("merge", other, output)
    assert result.returncode == 1
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert {relative: (output / relative).read_bytes() for relative in files_under(output)} == before
