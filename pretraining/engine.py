"""The pre-training loop: one engine for every method.

Output folder ``$nnUNet_results/<Dataset>/nnunet_cl/<method>__<plans>__2d/``:
``checkpoint_latest.pth`` (every ``save_every`` epochs), ``checkpoint_final.pth``, ``pretrain_log.txt``,
``progress.png`` (loss curves) and ``config.json`` (the resolved configuration).

Guarantees (README, Errors): every value is checked in ``Pretrainer.__init__``, before the folder is
touched; one run per folder (``FolderLock``); a fresh run (no ``--c``) starts over, as ``nnUNetv2_train``
does, but leaves an earlier run's files untouched until its own first checkpoint has replaced them
(atomically); a checkpoint with NaN/inf weights is never written; SIGINT / SIGTERM end with one line
naming the checkpoint that holds the last state and the exact ``--c`` command (exit 130 / 143).
Optimiser: SGD (momentum 0.9, weight decay 1e-5) with a cosine schedule per iteration, as PCL,
SuperCL and JCL's public code.

The method's hooks (``PretrainingMethod``): ``case_ids`` (which cases are sampled), ``begin_iteration``
before each ``make_batch``, ``lr_cycle`` (multi-stage methods restart the cosine per stage),
``epoch_statistics`` (extra numbers per epoch).

The engine's own hooks: ``batch_loader`` (where batches come from: ``nnUNet_n_proc_DA`` background
workers, ``pretraining/loader.py``) and ``precision`` (autocast and gradient scaling of the step,
``nnunet_cl/precision.py``).
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Optional

import numpy as np
import torch

from nnunet_cl.atomic import atomic_target, atomic_write_json, link_or_copy, remove_stale_temps
from nnunet_cl import distributed
from nnunet_cl.checkpoint import load_checkpoint, non_finite_tensors, save_checkpoint
from nnunet_cl.errors import NnunetClError, Terminated, raise_terminated
from nnunet_cl.folder_lock import FolderLock
from nnunet_cl.nnunet_context import (CONFIGURATION, DEFAULT_PLANS, PRETRAINED_CHECKPOINT, architecture_fingerprint,
                                      load_dataset_context)
from nnunet_cl.precision import Precision, resolve_precision
from nnunet_cl.pretraining.loader import BatchLoader, loader_workers
from nnunet_cl.pretraining.methods import METHODS, get_method
from nnunet_cl.pretraining.slices import PreprocessedSlices
from nnunet_cl.validation import check_pretrain_budget, int_at_least, positive_finite_float, positive_int

CHECKPOINT_NAMES = ("checkpoint_latest.pth", "checkpoint_previous.pth", "checkpoint_final.pth")
# The files of one run; a fresh run replaces an earlier run's once it has saved its first checkpoint.
RUN_FILES = CHECKPOINT_NAMES + ("config.json", "pretrain_log.txt", "progress.png")


@dataclass
class PretrainConfig:
    dataset: str
    method: str
    configuration: str = CONFIGURATION
    plans: str = DEFAULT_PLANS
    epochs: int = 100
    iters_per_epoch: int = 250
    batch_size: int = 32
    lr: Optional[float] = None          # None: the method's default
    momentum: float = 0.9
    weight_decay: float = 1e-5
    seed: int = 12345
    device: str = "cpu"
    save_every: int = 1
    continue_training: bool = False
    options: dict = field(default_factory=dict)
    precision: str = "auto"             # nnunet_cl.precision.PRECISIONS


def check_config(config: PretrainConfig) -> None:
    """Every flag of ``nnunet_cl pretrain`` (the method options: ``check_options``), before anything is written."""
    check_pretrain_budget(config.epochs, config.iters_per_epoch, config.batch_size)
    if config.lr is not None:
        positive_finite_float(config.lr, "--lr")
    positive_int(config.save_every, "--save-every", "epochs between checkpoint_latest.pth")
    int_at_least(config.seed, 0, "--seed", maximum=2 ** 32 - 1)


def cosine_lr(base_lr: float, iteration: int, total_iterations: int) -> float:
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * iteration / max(1, total_iterations)))


class Pretrainer:
    def __init__(self, config: PretrainConfig):
        check_config(config)
        self.config = config
        # nnUNet_n_proc_DA first: nnU-Net's own modules fail on import with a traceback when it is not a number
        self.loader_workers = loader_workers()
        method_cls = get_method(config.method)
        self.context = load_dataset_context(config.dataset, config.plans, config.configuration)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise NnunetClError("-device cuda was requested but no CUDA device is available; use -device cpu")
        distributed.init_from_environment(config.device)
        self.world_size, self.rank = distributed.world_size(), distributed.rank()
        if config.batch_size % self.world_size:
            raise NnunetClError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                                f"number of processes ({self.world_size})")
        self.local_batch_size = config.batch_size // self.world_size
        if self.world_size > 1 and not method_cls.supports_distributed:
            supported = sorted(n for n, m in METHODS.items() if m.supports_distributed)
            raise NnunetClError(f"method {config.method!r} does not support multi-process pre-training yet; run it "
                                f"without torchrun (distributed: {', '.join(supported)})")
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if config.device == "cuda"
                                   and self.world_size > 1 else config.device)
        self.options = method_cls.resolve_options(config.options)
        method_cls.check_schedule(self.options, config.epochs, config.iters_per_epoch)
        self.precision = self.step_precision()
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if self.precision.uses_grad_scaler else None
        self.lr = config.lr if config.lr is not None else method_cls.default_lr
        self.output_folder = self.context.pretraining_output_folder(method_cls.folder_name(self.options))

        torch.manual_seed(config.seed)
        self.network = self.context.build_network(deep_supervision=False).to(self.device)
        self.method = method_cls(self.network, self.context, self.options).to(self.device)
        distributed.broadcast_parameters(self.network)
        distributed.broadcast_parameters(self.method)
        # Sampling and augmentation differ per rank; the initial weights do not.
        self.seed_rngs(config.seed + 1000 * self.rank)
        self.slices = self.method_slices()
        parameters = list(self.network.parameters()) + list(self.method.parameters())
        self.optimizer = torch.optim.SGD(parameters, lr=self.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.total_iterations = config.epochs * config.iters_per_epoch
        self.epoch = 0
        self.iteration = 0
        self.history: dict = {"epoch": [], "lr": []}
        self.saved = None            # (path, epoch) of the newest checkpoint this run wrote or resumed from
        self.earlier_run: list = []  # files of an earlier run, kept until this (fresh) run saves its first checkpoint
        self.pending_log: list = []  # this run's log lines while pretrain_log.txt is still the earlier run's

    def step_precision(self) -> Precision:
        """Autocast and gradient scaling of the training step (``--precision``; auto: float16 + GradScaler on
        CUDA as nnU-Net's trainer, float32 on CPU)."""
        return resolve_precision(self.config.precision, self.device)

    def batch_loader(self) -> BatchLoader:
        """The batches of iterations ``self.iteration ..`` to the end: ``nnUNet_n_proc_DA`` worker processes
        (0: made in this process), each batch drawn from ``(seed, rank, iteration)``, so the same batches for
        any worker count and an exact continuation after ``--c``."""
        return BatchLoader(self.method, self.slices, self.local_batch_size, seed=self.config.seed, rank=self.rank,
                           first_iteration=self.iteration, epochs=self.config.epochs,
                           iters_per_epoch=self.config.iters_per_epoch, workers=self.loader_workers,
                           pin_memory=self.device.type == "cuda")

    def seed_rngs(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2 ** 32)
        self.rng = np.random.default_rng(seed)

    def method_slices(self) -> PreprocessedSlices:
        """The cases the method samples from (images only): every preprocessed case unless it says otherwise."""
        return PreprocessedSlices(self.context.data_folder, self.context.patch_size, self.method.case_ids(self.context))

    # ---------------------------------------------------------------- logging / files
    def log(self, message: str, also_print: bool = True) -> None:
        if self.rank != 0:
            return
        line = f"{datetime.now():%Y-%m-%d %H:%M:%S}: {message}"
        if self.earlier_run:
            self.pending_log.append(line)    # pretrain_log.txt still belongs to the earlier run
        else:
            with open(os.path.join(self.output_folder, "pretrain_log.txt"), "a") as f:
                f.write(line + "\n")
        if also_print:
            print(line, flush=True)

    def checkpoint_dict(self) -> dict:
        return {
            "network_weights": self.network.state_dict(),
            "method": self.config.method,
            "dataset_name": self.context.dataset_name,
            "plans_identifier": self.context.plans_identifier,
            "configuration": self.context.configuration,
            "architecture_fingerprint": architecture_fingerprint(self.network),
            "pretrained_prefixes": list(self.method.pretrained_prefixes),
            "heads": self.method.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "current_epoch": self.epoch,
            "iteration": self.iteration,
            "logging": self.history,
            "config": self.resolved_config(),
            "world_size": self.world_size,
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "rng_state": {"numpy_generator": self.rng.bit_generator.state, "numpy_global": np.random.get_state(),
                          "torch": torch.get_rng_state()},
        }

    def resolved_config(self) -> dict:
        return dict(asdict(self.config), lr=self.lr, options=self.options, dataset_name=self.context.dataset_name,
                    patch_size=list(self.context.patch_size), output_folder=self.output_folder,
                    pretrained_prefixes=list(self.method.pretrained_prefixes))

    def plot_progress(self) -> None:
        if self.earlier_run:
            return                          # progress.png still belongs to the earlier run
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = self.history["epoch"]
        terms = [k for k in self.history if k not in ("epoch", "lr", "iteration_loss")]
        fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        for term in terms:
            ax_loss.plot(epochs, self.history[term], label=term, marker="o" if len(epochs) < 30 else None)
        ax_loss.set_ylabel("loss"); ax_loss.legend(); ax_loss.grid(alpha=0.3)
        ax_loss.set_title(f"{self.config.method} pre-training on {self.context.dataset_name}")
        ax_lr.plot(epochs, self.history["lr"], color="k"); ax_lr.set_ylabel("learning rate"); ax_lr.set_xlabel("epoch")
        fig.tight_layout()
        with atomic_target(os.path.join(self.output_folder, "progress.png")) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)

    # ---------------------------------------------------------------- resume
    RESUME_ORDER = ("checkpoint_latest.pth", "checkpoint_previous.pth", PRETRAINED_CHECKPOINT)

    def load_newest_good_checkpoint(self):
        """latest, else previous (the latest before it), else final; a corrupt file is skipped with a warning."""
        for name in self.RESUME_ORDER:
            path = os.path.join(self.output_folder, name)
            if not os.path.isfile(path):
                continue
            try:
                return path, load_checkpoint(path)
            except NnunetClError as error:
                self.log(f"WARNING: {error}; falling back to the previous good checkpoint")
        return None, None

    def maybe_resume(self) -> bool:
        if not self.config.continue_training:
            return False
        path, checkpoint = self.load_newest_good_checkpoint()
        if path is None:
            self.log("--c given but no checkpoint found: starting from scratch")
            return False
        if checkpoint["method"] != self.config.method:
            raise NnunetClError(f"{path} belongs to method {checkpoint['method']!r}, not {self.config.method!r}; "
                                f"resume it with -m {checkpoint['method']}, or start {self.config.method} over "
                                "without --c (its files stay until the new run's first checkpoint replaces them)")
        if checkpoint["architecture_fingerprint"] != architecture_fingerprint(self.network):
            raise NnunetClError(f"{path} was made for another architecture; start without --c")
        self.network.load_state_dict(checkpoint["network_weights"])
        try:
            self.method.load_state_dict(checkpoint["heads"])
        except RuntimeError:
            # heads of other options, or of an nnunet_cl version whose heads have other parameters
            raise NnunetClError(f"{path} holds projection heads that do not match {self.config.method!r} with "
                                f"these options or this nnunet_cl version; start without --c") from None
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state"):
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.epoch, self.iteration = checkpoint["current_epoch"], checkpoint["iteration"]
        self.history = checkpoint["logging"]
        self.saved = (path, self.epoch)
        rng_state = checkpoint.get("rng_state")
        if self.world_size > 1 or checkpoint.get("world_size", 1) > 1:
            # RNG states are rank 0's; give every rank a fresh, distinct stream instead.
            self.seed_rngs(self.config.seed + 1000 * self.rank + self.iteration)
        elif rng_state:
            self.rng.bit_generator.state = rng_state["numpy_generator"]
            np.random.set_state(rng_state["numpy_global"])
            torch.set_rng_state(rng_state["torch"])
        self.log(f"resumed from {path} at epoch {self.epoch}, iteration {self.iteration}")
        return True

    def command(self, resume: bool) -> str:
        """The ``nnunet_cl pretrain`` command of this run (with ``--c``: the one that resumes it)."""
        c = self.config
        args = ["nnunet_cl", "pretrain", "-d", self.context.dataset_name, "-m", c.method, "-p", c.plans,
                "--epochs", c.epochs, "--iters-per-epoch", c.iters_per_epoch, "--batch-size", c.batch_size,
                "--seed", c.seed, "--save-every", c.save_every, "-device", c.device]
        if c.lr is not None:
            args += ["--lr", repr(c.lr)]
        for key, value in c.options.items():
            args += [f"--{key}", value] if key in ("fraction", "fold") else ["-o", f"{key}={value}"]
        if resume:
            args.append("--c")
        prefix = "torchrun ... " if self.world_size > 1 else ""
        return prefix + " ".join(shlex.quote(str(a)) for a in args)

    def checkpoint_state(self) -> str:
        """Where the last good state is and the exact command that continues from it."""
        if self.saved is not None:
            path, epoch = self.saved
            return (f"{path} holds epoch {epoch}/{self.config.epochs}; resume with: {self.command(resume=True)}")
        if self.earlier_run:
            return (f"this run saved no checkpoint yet; the earlier run's files in {self.output_folder} are "
                    f"untouched; start again with: {self.command(resume=False)}")
        return f"no checkpoint was saved yet; start again with: {self.command(resume=False)}"

    # ---------------------------------------------------------------- training
    def learning_rate(self, iteration: int) -> float:
        start, length = self.method.lr_cycle(iteration, self.config.epochs, self.config.iters_per_epoch)
        return cosine_lr(self.lr, iteration - start, length)

    def train_step(self, batch: dict) -> dict:
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.iteration)
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast(self.device):
            loss, terms = self.method.compute_loss(self.network, batch)
        if not torch.isfinite(loss):
            raise NnunetClError(f"loss became {float(loss.detach())} at epoch {self.epoch}, iteration {self.iteration}; stopped "
                                f"(lower --lr). {self.checkpoint_state()}")
        parameters = list(self.network.parameters()) + list(self.method.parameters())
        # backward outside autocast, as nnU-Net; with float16 the loss is scaled and the gradients unscaled
        # before clipping (a step with inf/nan gradients is skipped and the scale lowered)
        if self.grad_scaler is None:
            loss.backward()
        else:
            self.grad_scaler.scale(loss).backward()
        distributed.average_gradients(parameters)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, 12)
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        self.iteration += 1
        return dict(terms, total=float(loss.detach()))

    def save(self, name: str) -> None:
        if self.rank != 0:
            return
        broken = non_finite_tensors({**self.network.state_dict(), **{f"heads.{k}": v for k, v in
                                                                     self.method.state_dict().items()}})
        if broken:   # never replace a good checkpoint by a broken one
            raise NnunetClError(f"the weights became NaN/inf ({len(broken)} tensors, e.g. {broken[0]}) by epoch "
                                f"{self.epoch}; stopped (lower --lr). {self.checkpoint_state()}")
        path = os.path.join(self.output_folder, name)
        if name == "checkpoint_latest.pth" and os.path.isfile(path) and not self.earlier_run:
            # Keep the last good one: --c falls back to it if the new latest turns out corrupt. A hard link, not a
            # rename, so that checkpoint_latest.pth exists at every moment (an interruption mid-save leaves it).
            with atomic_target(os.path.join(self.output_folder, "checkpoint_previous.pth")) as tmp:
                os.remove(tmp)
                link_or_copy(path, tmp)
        save_checkpoint(self.checkpoint_dict(), path)   # atomic: an earlier run's file of that name until now
        self.saved = (path, self.epoch)
        if self.earlier_run:
            self.replace_earlier_run(name)

    def replace_earlier_run(self, saved: str) -> None:
        """This fresh run has its first checkpoint (``saved``): the earlier run's other files go, so the
        folder holds one run only (its config, log and curves start now)."""
        replaced = [n for n in self.earlier_run if n != saved]
        for name in replaced:
            if name in CHECKPOINT_NAMES or name == "progress.png":
                os.remove(os.path.join(self.output_folder, name))
        self.earlier_run = []
        self.write_config()
        pending, self.pending_log = self.pending_log, []
        with atomic_target(os.path.join(self.output_folder, "pretrain_log.txt")) as tmp:
            with open(tmp, "w") as f:
                f.writelines(line + "\n" for line in pending)
        self.log(f"this fresh run's first checkpoint {saved} replaced the earlier run's files in the folder")

    def write_config(self) -> None:
        atomic_write_json(self.resolved_config(), os.path.join(self.output_folder, "config.json"))

    def run(self) -> str:
        """Train under the folder's lock; Ctrl-C / SIGTERM end with one line saying how to resume."""
        lock = FolderLock(self.output_folder, f"nnunet_cl pretrain -m {self.config.method}") if self.rank == 0 else None
        if lock is not None:
            lock.acquire()
        previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
        try:
            return self.train()
        except (KeyboardInterrupt, Terminated) as interruption:
            signum = signal.SIGTERM if isinstance(interruption, Terminated) else signal.SIGINT
            if self.rank == 0:
                print(f"nnunet_cl: interrupted ({signal.Signals(signum).name}) at epoch {self.epoch}, iteration "
                      f"{self.iteration}: {self.checkpoint_state()}", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum) from None
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            if lock is not None:
                lock.release()

    def train(self) -> str:
        from tqdm import tqdm

        if self.rank == 0:
            remove_stale_temps(self.output_folder)
        resumed = self.maybe_resume()
        if not resumed and self.rank == 0:
            # A fresh run (no --c) starts over, as nnUNetv2_train does; an earlier run's files stay untouched
            # until this run's first checkpoint replaces them (save -> replace_earlier_run).
            self.earlier_run = [n for n in RUN_FILES if os.path.isfile(os.path.join(self.output_folder, n))]
        if self.rank == 0 and not self.earlier_run:
            self.write_config()
        self.log(f"pre-training {self.config.method} on {self.context.dataset_name} ({self.slices.num_slices} slices "
                 f"of {len(self.slices.case_ids)} cases), patch {self.context.patch_size}, batch "
                 f"{self.config.batch_size}, {self.config.epochs} epochs x {self.config.iters_per_epoch} iterations, "
                 f"lr {self.lr}, device {self.device}, precision {self.precision.name}, options {self.options}")
        self.network.train(); self.method.train()
        batches = self.batch_loader()
        self.log(f"batches: {batches.workers} loader worker processes (nnUNet_n_proc_DA)" if batches.workers else
                 "batches: made in the training process (nnUNet_n_proc_DA=0)")
        while self.epoch < self.config.epochs:
            start = time.time()
            sums: dict = {}
            bar = tqdm(range(self.config.iters_per_epoch), desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                       leave=False, disable=None, mininterval=2)
            for _ in bar:
                self.method.begin_iteration(self.iteration, self.config.epochs, self.config.iters_per_epoch)
                terms = self.train_step(next(batches))
                self.history.setdefault("iteration_loss", []).append(terms["total"])
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.set_postfix(loss=f"{terms['total']:.4f}")
            means = {k: v / self.config.iters_per_epoch for k, v in sums.items()}
            means.update(self.method.epoch_statistics())
            lr = self.optimizer.param_groups[0]["lr"]
            self.history["epoch"].append(self.epoch + 1)
            self.history["lr"].append(lr)
            for key, value in means.items():
                self.history.setdefault(key, []).append(value)
            self.epoch += 1
            self.log(f"epoch {self.epoch}/{self.config.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                     + f" lr {lr:.5f} time {time.time() - start:.1f}s")
            if self.epoch % self.config.save_every == 0 or self.epoch == self.config.epochs:
                # latest is also written at the end, so --c with more --epochs continues from the newest state
                self.save("checkpoint_latest.pth")
            if self.rank == 0:
                self.plot_progress()
        batches.close()
        self.save(PRETRAINED_CHECKPOINT)
        final = os.path.join(self.output_folder, PRETRAINED_CHECKPOINT)
        self.log(f"done: {final}")
        return final
