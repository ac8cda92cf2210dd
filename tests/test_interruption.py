"""kill -9 during pre-training, resume with --c; corrupt latest falls back; NaN stops cleanly; determinism."""

import glob
import math
import os
import random
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import console_script

pytestmark = pytest.mark.integration

EPOCHS, ITERS = 12, 2


def folder(env, method):
    return env.pretraining_folder(method)


def pretrain_args(method, *extra):
    return [console_script("nnunet_cl"), "pretrain", "-d", "990", "-m", method, "--epochs", str(EPOCHS),
            "--iters-per-epoch", str(ITERS), "--batch-size", "4", "-device", "cpu", "--seed", "5", *extra]


def start(env, args):
    return subprocess.Popen(args, env=env.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_sigkill_and_resume(synthetic_env):
    method_args = ["-o", "position_threshold=0.2"]
    env_root = synthetic_env
    latest = os.path.join(folder(env_root, "pcl"), "checkpoint_latest.pth")

    # 1) killed right after the first checkpoint appears
    proc = start(env_root, pretrain_args("pcl", *method_args))
    deadline = time.time() + 600
    while not os.path.isfile(latest) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = load(latest)
    assert 1 <= first["current_epoch"] < EPOCHS

    # 2) resumed, then killed at a random later moment
    proc = start(env_root, pretrain_args("pcl", "--c", *method_args))
    time.sleep(random.uniform(4, 12))
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # 3) resumed to the end
    result = subprocess.run(pretrain_args("pcl", "--c", *method_args), env=env_root.env(), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from" in result.stdout
    final = load(os.path.join(folder(env_root, "pcl"), "checkpoint_final.pth"))
    assert final["current_epoch"] == EPOCHS and final["iteration"] == EPOCHS * ITERS
    assert final["logging"]["epoch"] == list(range(1, EPOCHS + 1))  # no epoch lost or logged twice
    assert len(final["logging"]["iteration_loss"]) == EPOCHS * ITERS
    # The cosine schedule continued from the restored iteration (lr of each epoch's last iteration).
    expected_lr = [0.5 * 0.1 * (1 + math.cos(math.pi * (e * ITERS - 1) / (EPOCHS * ITERS))) for e in
                   range(1, EPOCHS + 1)]
    assert final["logging"]["lr"] == pytest.approx(expected_lr)
    assert final["optimizer_state"]["state"]  # momentum buffers restored and saved
    log = open(os.path.join(folder(env_root, "pcl"), "pretrain_log.txt")).read()
    assert f"at epoch {first['current_epoch']}" in log
    # No truncated or temporary file is left, and every checkpoint loads.
    assert not glob.glob(os.path.join(folder(env_root, "pcl"), ".*.tmp"))
    for path in glob.glob(os.path.join(folder(env_root, "pcl"), "*.pth")):
        load(path)


def test_corrupt_latest_falls_back_to_previous(synthetic_env):
    args = pretrain_args("simclr")
    args[args.index("--epochs") + 1] = "3"
    subprocess.run(args, env=synthetic_env.env(), check=True, capture_output=True, timeout=900)
    out = folder(synthetic_env, "simclr")
    previous_epoch = load(os.path.join(out, "checkpoint_previous.pth"))["current_epoch"]
    with open(os.path.join(out, "checkpoint_latest.pth"), "wb") as f:
        f.write(b"garbage")
    args[args.index("--epochs") + 1] = "4"
    result = subprocess.run(args + ["--c"], env=synthetic_env.env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WARNING" in result.stdout and "corrupt" in result.stdout and "falling back" in result.stdout
    assert f"checkpoint_previous.pth at epoch {previous_epoch}" in result.stdout
    assert load(os.path.join(out, "checkpoint_final.pth"))["current_epoch"] == 4


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(synthetic_env):
    args = [console_script("nnunet_cl"), "pretrain", "-d", "990", "-m", "pcl", "--epochs", "5",
            "--iters-per-epoch", "1", "--batch-size", "4", "-device", "cpu", "--lr", "1e30", "--seed", "1",
            "-o", "temperature=0.1"]
    result = subprocess.run(args, env=synthetic_env.env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nnunet_cl: error: loss became nan") and "iteration" in last
    latest = load(os.path.join(folder(synthetic_env, "pcl"), "checkpoint_latest.pth"))
    assert all(torch.isfinite(v).all() for v in latest["network_weights"].values() if v.is_floating_point())
    assert not os.path.isfile(os.path.join(folder(synthetic_env, "pcl"), "checkpoint_final.pth"))


def test_same_seed_same_first_ten_losses(synthetic_env):
    losses = []
    for _ in range(2):
        args = [console_script("nnunet_cl"), "pretrain", "-d", "990", "-m", "simclr", "--epochs", "1",
                "--iters-per-epoch", "10", "--batch-size", "4", "-device", "cpu", "--seed", "11"]
        subprocess.run(args, env=synthetic_env.env(), check=True, capture_output=True, timeout=900)
        losses.append(load(os.path.join(folder(synthetic_env, "simclr"), "checkpoint_final.pth"))["logging"]
                      ["iteration_loss"][:10])
    assert len(losses[0]) == 10
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_sigkill_and_resume_pseudo_label_finetuning(synthetic_env):
    """The fine-tuning trainer with extra state (contrastive head, pseudo-label rounds): killed right after a
    checkpoint that holds a pseudo-label round and again at a random moment, then resumed with nnU-Net's --c."""
    import json
    trainer, epochs = "nnUNetTrainerPseudoLabelCL_10pct", 6
    fold_folder = synthetic_env.fold_folder(trainer, fold=1)
    latest = os.path.join(fold_folder, "checkpoint_latest.pth")
    extra = dict(synthetic_env.ext_trainer(), nnUNet_cl_num_epochs=epochs, nnUNet_cl_save_every=1,
                 nnUNet_cl_pseudo_phase1_iterations=1, nnUNet_cl_pseudo_label_every=3, nnUNet_cl_num_threads=1)
    args = [console_script("nnUNetv2_train"), "990", "2d", "1", "-tr", trainer, "-device", "cpu"]

    def launch(*more):
        return subprocess.Popen(args + list(more), env=synthetic_env.env(**extra), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def kill(proc):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    # 1) killed right after the first checkpoint that carries a pseudo-label round
    proc = launch()
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(latest) and load(latest).get("pseudo_label_state", {}).get("round"):
            break
        time.sleep(0.2)
    kill(proc)
    first = load(latest)
    assert first["pseudo_label_state"]["round"] >= 1 and first["current_epoch"] < epochs, first["current_epoch"]
    assert "contrastive_head" in first

    # 2) resumed, killed at a random later moment; 3) resumed to the end
    proc = launch("--c")
    time.sleep(random.uniform(5, 20))
    kill(proc)
    # what a kill during a checkpoint write leaves behind (atomic temps of nnunet_cl.atomic)
    for stale in (".checkpoint_latest.pth.abc123.tmp", ".checkpoint_final.pth.def456.tmp"):
        open(os.path.join(fold_folder, stale), "wb").write(b"truncated")
    result = subprocess.run(args + ["--c"], env=synthetic_env.env(**extra), capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    final = load(os.path.join(fold_folder, "checkpoint_final.pth"))
    assert final["current_epoch"] == epochs
    assert len(final["logging"]["train_losses"]) == epochs          # no epoch lost or logged twice
    # 2 iterations per epoch (TINY_BUDGET): phase 1 = iteration 0, then a round every 3 iterations
    rounds = json.load(open(os.path.join(fold_folder, "pseudo_labels", "rounds.json")))
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    assert [r["iteration"] for r in rounds] == [1 + 3 * i for i in range(len(rounds))]
    assert final["pseudo_label_state"] == {"round": rounds[-1]["round"], "estimated_at": rounds[-1]["iteration"]}
    assert final["contrastive_head"].keys() == first["contrastive_head"].keys()
    # nothing truncated or temporary is left; every checkpoint loads
    leftovers = [f for _, _, files in os.walk(fold_folder) for f in files if f.endswith(".tmp")]
    assert not leftovers, leftovers
    for path in glob.glob(os.path.join(fold_folder, "*.pth")):
        load(path)
