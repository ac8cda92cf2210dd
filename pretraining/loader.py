"""Batches of the pre-training engine, made in background worker processes as nnU-Net's training loader does.

``nnUNet_n_proc_DA`` worker processes (nnU-Net's variable, read with nnU-Net's own
``get_allowed_n_proc_DA``: its default, capped at the CPU count; 0 = batches are made in the training
process), a bounded queue (``PREFETCH_PER_WORKER`` batches per worker in flight), pinned memory on CUDA.
A worker's batch travels pickled through the DataLoader's pipe (:class:`PipedBatch`), not through torch's
shared memory.

The loader is torch's ``DataLoader`` over a map-style dataset whose item ``i`` is the batch of iteration
``i`` (``method.begin_iteration(i)``, then ``method.make_batch``), drawn from random generators seeded with
``(seed, rank, i)``: the sampling generator passed to ``make_batch`` and the global numpy and torch
generators that batchgeneratorsv2's transforms draw from. The ``DataLoader`` hands iteration indices to
the workers in turn and returns the batches in iteration order, so

* a run gets the same batches with 0, 1 or N workers (up to float rounding of the augmentations' torch
  ops), and under torchrun every rank its own;
* ``--c`` resumes the batch sequence exactly where the interrupted run stopped (it starts at the
  checkpoint's iteration), for any worker count;
* the training process's own global generators are not touched by making batches.

Workers die with the training process: on Linux they ask the kernel for SIGKILL when their parent dies
(``prctl(PR_SET_PDEATHSIG)``), so Ctrl-C, SIGTERM or SIGKILL of the parent leave no orphan; elsewhere
the ``DataLoader``'s own watchdog (it polls the parent's pid every few seconds) ends them. A batch that
fails becomes one error line naming the method, the iteration, the worker and the cases drawn for it.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from nnunet_cl.errors import NnunetClError
from nnunet_cl.pretraining.slices import recording_drawn_cases

PREFETCH_PER_WORKER = 2      # batches each worker may have ready or in progress (DataLoader's prefetch_factor)
PR_SET_PDEATHSIG = 1         # linux/prctl.h


def loader_workers() -> int:
    """Worker processes for the batches: nnU-Net's ``get_allowed_n_proc_DA`` (``nnUNet_n_proc_DA`` if set)."""
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
    try:
        workers = get_allowed_n_proc_DA()
    except ValueError:
        raise NnunetClError(f"nnUNet_n_proc_DA={os.environ.get('nnUNet_n_proc_DA')!r} is not an integer; set it to "
                            "the number of loader processes (0 = batches in the training process)") from None
    if workers < 0:
        raise NnunetClError(f"nnUNet_n_proc_DA={workers} must be >= 0 (0 = batches in the training process)")
    return workers


@dataclass
class BatchFailure:
    """What a worker returns instead of a batch when making it failed (an exception raised in a worker would
    reach the training process as a multi-line traceback of the DataLoader)."""
    message: str


@contextmanager
def seeded_global_generators(sequence: np.random.SeedSequence):
    """numpy's and torch's global generators seeded from ``sequence`` inside the block, restored after it."""
    numpy_seed, torch_seed = (int(s) for s in sequence.generate_state(2, np.uint32))
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            np.random.seed(numpy_seed)
            torch.manual_seed(torch_seed)
            yield
    finally:
        np.random.set_state(numpy_state)


class IterationBatches(Dataset):
    """Item ``i``: the batch of iteration ``i`` (a dict of CPU tensors), or a :class:`BatchFailure`."""

    def __init__(self, method, slices, batch_size: int, seed: int, rank: int, epochs: int, iters_per_epoch: int):
        self.method, self.slices, self.batch_size = method, slices, batch_size
        self.seed, self.rank = seed, rank
        self.epochs, self.iters_per_epoch = epochs, iters_per_epoch

    def __len__(self) -> int:
        return self.epochs * self.iters_per_epoch

    def seed_sequence(self, iteration: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed % 2 ** 64, self.rank, iteration])

    def __getitem__(self, iteration: int):
        sequence = self.seed_sequence(iteration)
        with recording_drawn_cases() as cases:
            try:
                with seeded_global_generators(sequence.spawn(1)[0]):
                    self.method.begin_iteration(iteration, self.epochs, self.iters_per_epoch)
                    return self.method.make_batch(self.slices, self.batch_size, np.random.default_rng(sequence))
            except (Exception, NnunetClError) as error:   # NnunetClError is a SystemExit
                return BatchFailure(self.failure_message(iteration, error, cases))

    def failure_message(self, iteration: int, error: BaseException, cases: list) -> str:
        worker = get_worker_info()
        where = f"loader worker {worker.id}" if worker is not None else "the training process"
        drawn = list(dict.fromkeys(cases))
        what = error.message if isinstance(error, NnunetClError) else f"{type(error).__name__}: {error}"
        return (f"method {self.method.name}: making the batch of iteration {iteration} failed in {where} "
                f"(cases drawn for it: {', '.join(drawn) if drawn else 'none yet'}): " + " ".join(what.split()))


class PipedBatch:
    """A batch made in a worker, on its way to the training process: its tensors travel as numpy arrays pickled
    into the DataLoader's pipe. torch's default moves every tensor into a shared-memory segment of its own and
    hands over one file descriptor per tensor (a socket round trip in both processes); for batches of well under
    a megabyte copying them through the pipe is cheaper (README, Speed). A tensor of a dtype numpy lacks
    (bfloat16) keeps torch's way."""

    def __init__(self, batch: dict):
        self.items = {key: tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor
                      for key, tensor in batch.items()}

    def unpack(self) -> dict:
        return {key: torch.from_numpy(item) if isinstance(item, np.ndarray) else item
                for key, item in self.items.items()}

    def pin_memory(self) -> dict:
        """Called by the DataLoader's pin-memory thread (CUDA): the unpacked batch in pinned memory."""
        return {key: tensor.pin_memory() for key, tensor in self.unpack().items()}


def pipe_in_worker(item):
    """``collate_fn`` of the workers: a batch becomes a :class:`PipedBatch`; a :class:`BatchFailure` stays."""
    return PipedBatch(item) if isinstance(item, dict) else item


def start_worker(parent_pid: int, worker_id: int) -> None:
    """``worker_init_fn``: die with the training process (Linux: the kernel sends SIGKILL when it dies)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:     # the parent died before the request above took effect
        os._exit(1)


class BatchLoader:
    """Iterator over the batches of iterations ``first_iteration .. epochs * iters_per_epoch - 1``."""

    def __init__(self, method, slices, batch_size: int, *, seed: int, rank: int, first_iteration: int, epochs: int,
                 iters_per_epoch: int, workers: int, pin_memory: bool = False):
        self.dataset = IterationBatches(method, slices, batch_size, seed, rank, epochs, iters_per_epoch)
        iterations = range(first_iteration, len(self.dataset))
        self.workers = min(workers, len(iterations))   # never more processes than batches to make
        context = None
        if self.workers > 0 and "fork" in multiprocessing.get_all_start_methods():
            # fork: the workers inherit the method and the opened cases instead of unpickling them
            context = multiprocessing.get_context("fork")
        self.loader = DataLoader(self.dataset, batch_size=None, sampler=iterations, num_workers=self.workers,
                                 pin_memory=pin_memory, prefetch_factor=PREFETCH_PER_WORKER if self.workers else None,
                                 collate_fn=pipe_in_worker if self.workers else None,
                                 worker_init_fn=functools.partial(start_worker, os.getpid()),
                                 multiprocessing_context=context,
                                 # its own generator: creating the loader must not draw from torch's global one
                                 generator=torch.Generator().manual_seed(0))
        self._iterator = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except RuntimeError as error:
            if "DataLoader worker" not in str(error):
                raise
            self.close()
            raise NnunetClError(f"method {self.dataset.method.name}: a loader worker ended unexpectedly "
                                f"({' '.join(str(error).split())}); run with nnUNet_n_proc_DA=0 to make the "
                                "batches in the training process and see the error") from None
        if isinstance(batch, BatchFailure):
            self.close()
            raise NnunetClError(batch.message)
        return batch.unpack() if isinstance(batch, PipedBatch) else batch

    def close(self) -> None:
        """Stop the workers (dropping the DataLoader's iterator shuts them down)."""
        self._iterator = None
