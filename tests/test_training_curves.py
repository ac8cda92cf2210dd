"""scripts/training_curves.py: per-epoch pseudo Dice of starts, from the benchmark's run logs."""

import os
import subprocess
import sys

from nnunet_cl.tools.benchmark_plan import BenchmarkLayout, FinetuneRun

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "training_curves.py")


def epoch_lines(epoch, dice, train_loss=-0.5):
    """nnU-Net's log lines of one epoch (the format of nnunetv2 2.x, with numpy scalar reprs)."""
    stamp = "2026-12-04 10:16:14.032133"
    return [f"{stamp}: Epoch {epoch}", f"{stamp}: Current learning rate: 0.01",
            f"{stamp}: train_loss {train_loss}", f"{stamp}: val_loss -0.4",
            f"{stamp}: Pseudo dice [np.float32({dice[0]}), np.float32({dice[1]})]",
            f"{stamp}: Epoch time: 22.91 s", f"{stamp}: "]


def write_log(output, trainer, fold, lines, finished=True):
    """The run's log and fold folder as the benchmark leaves them; a finished run has nnU-Net's final summary."""
    layout = BenchmarkLayout(str(output), "Dataset004_Hippocampus")
    run_ = FinetuneRun(method="", trainer=trainer, fraction=0.0, fold=fold)
    os.makedirs(os.path.dirname(layout.summary_file(run_)), exist_ok=True)
    if finished:
        with open(layout.summary_file(run_), "w") as f:
            f.write("{}")
    os.makedirs(layout.logs, exist_ok=True)
    with open(layout.log_file(run_.log_name), "w") as f:
        f.write("\n".join(lines) + "\n")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


def test_block_means_and_differences_with_a_resumed_run(tmp_path):
    scratch, warm = tmp_path / "a", tmp_path / "b"
    # scratch: class-mean Dice per epoch fold 0: 0.2, 0.4, 0.6, 0.8; fold 1: 0.4, 0.6, 0.8, 1.0
    write_log(scratch, "nnUNetTrainerScratch_10pct", 0,
              sum((epoch_lines(e, (d, d)) for e, d in enumerate((0.2, 0.4, 0.6, 0.8))), []))
    write_log(scratch, "nnUNetTrainerScratch_10pct", 1,
              sum((epoch_lines(e, (d - 0.1, d + 0.1)) for e, d in enumerate((0.4, 0.6, 0.8, 1.0))), []))
    # warm, fold 0: killed during epoch 2 (no Dice logged), resumed at epoch 1 with other values; the last counts
    killed = epoch_lines(0, (0.5, 0.5)) + epoch_lines(1, (0.0, 0.0)) + epoch_lines(2, (0.9, 0.9))[:2]
    resumed = ["===== resumed with --c"] + sum((epoch_lines(e, (d, d)) for e, d in ((1, 0.7), (2, 0.7), (3, 0.9))), [])
    write_log(warm, "nnUNetTrainerPCLInit_10pct", 0, killed + resumed)
    # warm, fold 1: still going; its one epoch would cut every curve to one epoch
    write_log(warm, "nnUNetTrainerPCLInit_10pct", 1, epoch_lines(0, (0.1, 0.1)), finished=False)
    proc = run(f"scratch={scratch}:nnUNetTrainerScratch_10pct", f"warm={warm}:nnUNetTrainerPCLInit_10pct",
               "--block", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "| epochs | scratch (folds 0,1) | warm (folds 0) | warm − scratch |"
    # epochs 0-1: scratch (0.2 + 0.4 + 0.4 + 0.6) / 4 = 40.0; warm (0.5 + 0.7) / 2 = 60.0; Δ on fold 0: 60 - 30
    assert lines[2] == "| 0–1 | 40.0 | 60.0 | +30.0 |"
    # epochs 2-3: scratch (0.6 + 0.8 + 0.8 + 1.0) / 4 = 80.0; warm (0.7 + 0.9) / 2 = 80.0; Δ on fold 0: 80 - 70
    assert lines[3] == "| 2–3 | 80.0 | 80.0 | +10.0 |"


def test_png_is_drawn(tmp_path):
    write_log(tmp_path, "T", 0, sum((epoch_lines(e, (0.5, 0.5)) for e in range(3)), []))
    png = tmp_path / "c.png"
    proc = run(f"a={tmp_path}:T", "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_one_line(tmp_path):
    write_log(tmp_path, "T", 0, epoch_lines(0, (0.5, 0.5)))
    for args, expected in (([f"nolabel{tmp_path}"], "is not LABEL=OUTPUT:TRAINER"),
                           ([f"a={tmp_path}:nnUNetTrainerMissing"], "has no finished run of nnUNetTrainerMissing"),
                           ([f"a={tmp_path}:T", f"a={tmp_path}:T"], "labels must differ"),
                           ([f"a={tmp_path}:T+{tmp_path}:T"], "give one OUTPUT:TRAINER per start"),
                           ([f"a={tmp_path}:T", "--block", "0"], "give at least 1 epoch per row")):
        proc = run(*args)
        assert proc.returncode == 1
        assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr, proc.stderr
