"""Background batches (pretraining/loader.py): workers give the in-process batches, --c continues the stream,
a failing batch is one line naming the method and the cases, and no worker outlives the training process."""

import os
import signal
import subprocess
import time

import pytest
import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.pretraining.loader import BatchLoader
from nnunet_cl.pretraining.methods import METHODS
from nnunet_cl.pretraining.methods.instance import PCL
from tests.conftest import console_script, sigint_as_in_a_terminal

# Small options on the synthetic data; semi_local crosses its stage boundary (iteration 2 of 4), so the
# workers must switch stage through begin_iteration exactly as the training process does.
METHOD_OPTIONS = {"semi_local": {"fraction": 0.5, "fold": "0", "stage1_fraction": 0.5}}
EPOCHS, ITERS, BATCH = 2, 2, 4


def engine(method):
    from nnunet_cl.pretraining.engine import PretrainConfig, Pretrainer
    return Pretrainer(PretrainConfig(dataset="990", method=method, epochs=EPOCHS, iters_per_epoch=ITERS,
                                     batch_size=BATCH, device="cpu", seed=3,
                                     options=dict(METHOD_OPTIONS.get(method, {}))))


def batches(trainer, workers, first_iteration=0, method=None):
    loader = BatchLoader(method or trainer.method, trainer.slices, BATCH, seed=3, rank=0,
                         first_iteration=first_iteration, epochs=EPOCHS, iters_per_epoch=ITERS, workers=workers)
    return list(loader)


@pytest.mark.integration
@pytest.mark.parametrize("method", sorted(METHODS))
def test_workers_and_resume_give_the_in_process_batches(synthetic_context, one_torch_thread, method):
    trainer = engine(method)
    in_process = batches(trainer, workers=0)
    assert len(in_process) == EPOCHS * ITERS
    assert not all(torch.equal(in_process[0][k], in_process[1][k]) for k in in_process[0])   # batches differ
    with_workers = batches(trainer, workers=2)
    resumed = batches(trainer, workers=1, first_iteration=ITERS + 1)     # --c after the first epoch and one step
    for expected, *others in zip(in_process, with_workers, [None] * (ITERS + 1) + resumed):
        for got in others:
            if got is None:
                continue
            assert got.keys() == expected.keys()
            for key in expected:
                # one torch thread everywhere: the augmentations' float ops round identically
                assert torch.equal(got[key], expected[key]), key


def test_a_workers_batch_comes_through_the_pipe_not_shared_memory(synthetic_context, one_torch_thread):
    trainer = engine("pcl")
    loader = BatchLoader(trainer.method, trainer.slices, BATCH, seed=3, rank=0, first_iteration=0, epochs=EPOCHS,
                         iters_per_epoch=ITERS, workers=1)
    batch = next(loader)
    loader.close()
    # torch's own transfer would hand over shared-memory tensors
    assert batch.keys() == {"views", "positions"} and not any(t.is_shared() for t in batch.values())


def test_piped_batch_keeps_values_and_dtypes_and_pins_on_cuda(monkeypatch):
    from torch.utils.data._utils.pin_memory import pin_memory as dataloader_pin_memory
    from nnunet_cl.pretraining.loader import PipedBatch
    batch = {"views": torch.randn(2, 1, 3, 4)[..., ::2], "labels": torch.tensor([[0, 3]], dtype=torch.int64),
             "mask": torch.tensor([True, False]), "half": torch.randn(3).to(torch.bfloat16)}
    import pickle
    unpacked = pickle.loads(pickle.dumps(PipedBatch(batch))).unpack()
    assert unpacked.keys() == batch.keys()
    for key in batch:
        assert unpacked[key].dtype == batch[key].dtype and torch.equal(unpacked[key], batch[key]), key
    # the DataLoader's pin-memory thread (CUDA runs) pins the unpacked tensors; no GPU here, so pinning is faked
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self.clone().fill_(1), raising=True)
    pinned = dataloader_pin_memory(PipedBatch(batch))
    assert pinned.keys() == batch.keys() and all(bool((t == 1).all()) for t in pinned.values())


def test_making_batches_leaves_the_global_generators_alone(synthetic_context, one_torch_thread):
    trainer = engine("simclr")
    torch_state, numpy_state = torch.get_rng_state(), __import__("numpy").random.get_state()[1].copy()
    batches(trainer, workers=0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert (__import__("numpy").random.get_state()[1] == numpy_state).all()


class FailingPCL(PCL):
    """PCL whose batch fails after it drew its slices (stands for a corrupt case or a failing transform)."""
    supports_distributed = True

    def make_batch(self, slices, batch_size, rng):
        slices.sample_windows(batch_size, rng)
        raise ValueError("broken\nsecond line")


@pytest.mark.parametrize("workers", [0, 1])
def test_failed_batch_is_one_line_naming_method_worker_and_cases(synthetic_context, one_torch_thread, workers):
    trainer = engine("pcl")
    failing = FailingPCL(trainer.network, synthetic_context, trainer.options)
    with pytest.raises(NnunetClError) as raised:
        batches(trainer, workers, method=failing)
    message = raised.value.message
    assert "\n" not in message and message.startswith("method pcl: making the batch of iteration 0 failed")
    assert ("loader worker 0" if workers else "the training process") in message
    assert "ValueError: broken second line" in message
    assert any(case in message for case in trainer.slices.case_ids)


# ------------------------------------------------------------------------------------------- no orphans
def children(pid: int) -> list:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.integration
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_workers_die_with_the_training_process(synthetic_env, how):
    args = [console_script("nnunet_cl"), "pretrain", "-d", "990", "-m", "simclr", "--epochs", "1",
            "--iters-per-epoch", "100000", "--batch-size", "4", "-device", "cpu", "--seed", "1"]
    proc = subprocess.Popen(args, env=synthetic_env.env(nnUNet_n_proc_DA=2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=sigint_as_in_a_terminal)
    try:
        deadline = time.time() + 600
        workers = []
        while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = children(proc.pid)
        assert len(workers) == 2, f"expected 2 loader workers, found {workers}"
        if how == "Ctrl-C":
            os.killpg(proc.pid, signal.SIGINT)        # the terminal sends it to the whole foreground group
        else:
            proc.send_signal(getattr(signal, how))    # the parent only
        proc.wait(timeout=120)
        deadline = time.time() + 60                    # a liveness bound, not a timing measurement
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), "a loader worker outlived the training process"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.integration
def test_resume_with_workers_continues_the_in_process_run(synthetic_env):
    """--c with loader workers: the losses of an interrupted-and-resumed run equal an uninterrupted in-process run."""
    folder = synthetic_env.pretraining_folder("simclr")
    args = [console_script("nnunet_cl"), "pretrain", "-d", "990", "-m", "simclr", "--epochs", "2",
            "--iters-per-epoch", "3", "--batch-size", "4", "-device", "cpu", "--seed", "4"]

    def run(workers, *extra):
        subprocess.run(args + list(extra), env=synthetic_env.env(nnUNet_n_proc_DA=workers, OMP_NUM_THREADS=1),
                       check=True, capture_output=True, timeout=900)
        return torch.load(os.path.join(folder, "checkpoint_final.pth"), weights_only=False)["logging"]["iteration_loss"]

    in_process = run(0)
    run(2)
    # "interrupt" after epoch 1: its checkpoint (rotated to previous by epoch 2's save) becomes the latest
    for name in ("checkpoint_latest.pth", "checkpoint_final.pth"):
        os.remove(os.path.join(folder, name))
    os.replace(os.path.join(folder, "checkpoint_previous.pth"), os.path.join(folder, "checkpoint_latest.pth"))
    resumed = run(2, "--c")
    assert len(resumed) == len(in_process) == 6
    assert resumed == pytest.approx(in_process, rel=1e-6)
