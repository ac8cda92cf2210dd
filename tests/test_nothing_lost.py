"""Nothing lost: a fresh run keeps an earlier run's files until its own first checkpoint, one run per folder
(a second is refused, a stale lock is taken over), Ctrl-C says which checkpoint to resume from and how, and
every written file follows the umask. (The bad-input matrix with byte-identical earlier files is in
test_bad_input.py.)"""

import glob
import hashlib
import os
import re
import shlex
import signal
import socket
import stat
import subprocess

import pytest
import torch

from nnunet_cl.atomic import atomic_target, atomic_torch_save, atomic_write_json
from nnunet_cl.errors import NnunetClError
from nnunet_cl.folder_lock import LOCK_NAME, FolderLock
from tests.conftest import console_script, sigint_as_in_a_terminal, synthetic_pretraining_folder


def pretrain(method, epochs, iters=2, *extra):
    return [console_script("nnunet_cl"), "pretrain", "-d", "990", "-m", method, "--epochs", str(epochs),
            "--iters-per-epoch", str(iters), "--batch-size", "4", "-device", "cpu", *extra]


def digests(path) -> dict:
    return {name: hashlib.sha256(open(os.path.join(path, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, name))}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def start(env, args, results, **popen):
    return subprocess.Popen(args, env=env.env(nnUNet_results=results), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal, **popen)


def wait_for_line(proc, fragment: str) -> None:
    for line in proc.stdout:
        if fragment in line:
            return
    raise AssertionError(f"the run ended before printing {fragment!r}: {proc.stderr.read()[-2000:]}")


# ------------------------------------------------------------------------------------------ unit level
def test_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path, capsys):
    with FolderLock(str(tmp_path), "first run"):
        line = (tmp_path / LOCK_NAME).read_text()
        assert line.count("\n") == 1 and f"pid {os.getpid()} on host {socket.gethostname()}" in line
        with pytest.raises(NnunetClError, match=rf"in use by another run \(pid {os.getpid()} on host .*first run\)"):
            FolderLock(str(tmp_path), "second run").acquire()
    assert not (tmp_path / LOCK_NAME).exists()             # released and removed
    # a holder killed with SIGKILL leaves its file, but the kernel dropped its flock
    (tmp_path / LOCK_NAME).write_text("pid 4194303 on host elsewhere, since 2026-01-01 00:00:00: killed run\n")
    with FolderLock(str(tmp_path), "third run"):
        assert "third run" in (tmp_path / LOCK_NAME).read_text()
    err = capsys.readouterr().err
    assert "WARNING: taking over the stale lock" in err and "pid 4194303 on host elsewhere" in err


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_json({"a": 1}, str(tmp_path / "config.json"))
        atomic_torch_save({"w": torch.zeros(2)}, str(tmp_path / "checkpoint.pth"))
        with atomic_target(str(tmp_path / "progress.png")) as tmp:
            open(tmp, "wb").write(b"png")
        FolderLock(str(tmp_path / "locked"), "a run").acquire()   # the lock file too
    finally:
        os.umask(old)
    for name in ("config.json", "checkpoint.pth", "progress.png", os.path.join("locked", LOCK_NAME)):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask, name


# ------------------------------------------------------------------------------------------ integration
@pytest.mark.integration
def test_fresh_run_keeps_the_earlier_run_until_its_first_checkpoint(synthetic_env, tmp_path):
    results = str(tmp_path / "results")
    out = synthetic_pretraining_folder(results, "pcl")
    synthetic_env.run(pretrain("pcl", 2, 2, "--seed", "3"), nnUNet_results=results)
    earlier = digests(out)
    assert {"checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_previous.pth", "config.json"} <= set(earlier)

    # A fresh run that diverges in its first epoch (before any checkpoint of its own): the earlier run is intact.
    proc = synthetic_env.run(pretrain("pcl", 3, 4, "--lr", "1e30"), check=False, nnUNet_results=results)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet_cl: error: "), proc.stderr     # no torch warning
    assert "this run saved no checkpoint yet; the earlier run's files" in lines[0] and "untouched" in lines[0]
    assert digests(out) == earlier

    # A fresh run that succeeds starts over: only its own files are left (nothing of the earlier run).
    synthetic_env.run(pretrain("pcl", 1, 2, "--seed", "4"), nnUNet_results=results)
    assert load(os.path.join(out, "checkpoint_final.pth"))["config"]["epochs"] == 1
    assert not os.path.isfile(os.path.join(out, "checkpoint_previous.pth"))   # the earlier run's is gone
    log = open(os.path.join(out, "pretrain_log.txt")).read()
    assert "2 epochs" not in log and "lr 1e+30" not in log and "1 epochs" in log
    assert '"epochs": 1' in open(os.path.join(out, "config.json")).read()


@pytest.mark.integration
def test_second_run_into_the_same_folder_is_refused_and_ctrl_c_says_how_to_resume(synthetic_env, tmp_path):
    results = str(tmp_path / "results")
    out = synthetic_pretraining_folder(results, "simclr")
    first = start(synthetic_env, pretrain("simclr", 1000, 4, "--seed", "7"), results)   # runs until stopped
    wait_for_line(first, "epoch 1/1000")                   # running, holding the lock

    second = synthetic_env.run(pretrain("simclr", 2, 2), check=False, nnUNet_results=results)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is in use by another run (pid {first.pid} on host {socket.gethostname()}" in lines[0]

    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 130, err[-2000:]
    message = err.strip().splitlines()[-1]
    match = re.fullmatch(r"nnunet_cl: interrupted \(SIGINT\) at epoch \d+, iteration \d+: (\S+) holds epoch "
                         r"(\d+)/1000; resume with: (.+ --c)", message)
    assert match, message
    # The first run's files are intact and its own: its config, one run's lines in the log, no lock left.
    assert match.group(1) == os.path.join(out, "checkpoint_latest.pth")
    latest = load(match.group(1))
    assert latest["current_epoch"] == int(match.group(2)) >= 1 and latest["config"]["epochs"] == 1000
    assert '"epochs": 1000' in open(os.path.join(out, "config.json")).read()
    assert open(os.path.join(out, "pretrain_log.txt")).read().count("pre-training simclr") == 1
    assert not os.path.exists(os.path.join(out, LOCK_NAME))

    # The printed command resumes from that checkpoint (then it is stopped again).
    command = shlex.split(match.group(3))
    assert command[:2] == ["nnunet_cl", "pretrain"]
    resumed = start(synthetic_env, [console_script("nnunet_cl")] + command[1:], results)
    wait_for_line(resumed, f"resumed from {match.group(1)} at epoch {match.group(2)}, iteration "
                           f"{latest['iteration']}")
    wait_for_line(resumed, f"epoch {int(match.group(2)) + 1}/1000")
    resumed.send_signal(signal.SIGINT)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 130 and "resume with:" in err.strip().splitlines()[-1], err[-2000:]


@pytest.mark.integration
def test_stale_lock_of_a_killed_run_is_taken_over(synthetic_env, tmp_path):
    results = str(tmp_path / "results")
    run = start(synthetic_env, pretrain("pcl", 1000, 4), results)
    wait_for_line(run, "epoch 1/1000")
    run.send_signal(signal.SIGKILL)
    run.wait()
    lock = os.path.join(synthetic_pretraining_folder(results, "pcl"), LOCK_NAME)
    assert f"pid {run.pid} " in open(lock).read()
    proc = synthetic_env.run(pretrain("pcl", 1, 1), nnUNet_results=results)
    assert "WARNING: taking over the stale lock" in proc.stderr and f"pid {run.pid} " in proc.stderr
    assert not os.path.exists(lock)


@pytest.mark.integration
def test_benchmark_output_is_locked(synthetic_env, tmp_path):
    out = tmp_path / "bench"
    with FolderLock(str(out), "another benchmark"):
        proc = synthetic_env.run(["nnunet_cl", "benchmark", "-d", "990", "--preset", "tiny", "-m", "scratch",
                                  "--fractions", "0.1", "-o", str(out)], check=False, training=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is in use by another run (pid {os.getpid()}" in lines[0], proc.stderr
    assert sorted(os.listdir(out)) == []                   # no budget.json, nothing converted or trained


@pytest.mark.integration
def test_written_files_follow_umask_022(synthetic_env, tmp_path):
    results = str(tmp_path / "results")
    png = tmp_path / "grid.png"
    umask = dict(preexec_fn=lambda: os.umask(0o022))
    for args in (pretrain("pcl", 1, 2), [console_script("nnunet_cl"), "show-superpixels", "-d", "990", "-o",
                                         str(png), "--num-slices", "2", "--option", "compactness=0.0625"]):
        proc = subprocess.run(args, env=synthetic_env.env(nnUNet_results=results), capture_output=True, text=True,
                              timeout=900, **umask)
        assert proc.returncode == 0, proc.stderr[-3000:]
    cache = [c for c in glob.glob(os.path.join(synthetic_env.preprocessed, "Dataset990_Synth", "*_superpixels_*"))
             if '"compactness": 0.0625' in open(os.path.join(c, "params.json")).read()]
    assert len(cache) == 1
    written = [str(png)] + [os.path.join(d, f) for root in (results, cache[0]) for d, _, files in os.walk(root)
                            for f in files]
    assert any(w.endswith("checkpoint_final.pth") for w in written) and any(w.endswith(".npy") for w in written)
    modes = {w: oct(stat.S_IMODE(os.stat(w).st_mode)) for w in written}
    assert set(modes.values()) == {"0o644"}, modes
    folders = [d for root in (results, cache[0]) for d, _, _ in os.walk(root)]
    assert {oct(stat.S_IMODE(os.stat(d).st_mode)) for d in folders} == {"0o755"}


@pytest.mark.integration
def test_interrupted_benchmark_says_what_is_kept_and_how_to_continue(synthetic_env, tmp_path):
    out = tmp_path / "bench"
    args = [console_script("nnunet_cl"), "benchmark", "-d", "990", "--preset", "tiny", "-m", "scratch",
            "--fractions", "0.1", "--no-upper-bound", "-o", str(out)]
    proc = subprocess.Popen(args, env=synthetic_env.env(training=False), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal)
    wait_for_line(proc, "[1/1]")                            # the fine-tuning child is running
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"nnunet_cl: interrupted (SIGINT); every finished step is kept in {out}"), last
    assert last.endswith("continue with the same command: nnunet_cl " + " ".join(shlex.quote(a) for a in args[1:]))
    assert not os.path.exists(out / LOCK_NAME)
