"""``nnunet_cl speed``: what pre-training costs next to nnU-Net's own supervised training, in one run.

For the supervised reference a stock ``nnUNetTrainer`` of the dataset's 2d plans is built and
initialised (its network with deep supervision, its ``DC_and_CE_loss`` in the deep-supervision
wrapper, its SGD), its batch size set to ``--batch-size``, and its real training loader (nnU-Net's
augmentation, ``nnUNet_n_proc_DA=0``, i.e. in this process) is used. Each method runs in the
pre-training engine (``Pretrainer``: the same network, the method's heads, SGD) at the same batch size.

Per row, after ``--warmup`` untimed iterations, the median over ``--repeats`` iterations of:

* **step**: one optimisation step on a ready batch (zero_grad, forward, loss, backward, clipping,
  SGD step): ``nnUNetTrainer.train_step`` / ``Pretrainer.train_step``; **step / supervised** is its
  ratio to the supervised row.
* **loss share**: the part of the step spent computing the loss *outside* the U-Net's modules, i.e.
  time inside the loss call (supervised: ``trainer.loss``; methods: ``compute_loss``) minus the time
  spent in the U-Net's encoder/decoder stage modules during it (measured with forward hooks),
  divided by the step. It covers heads, masks, InfoNCE (methods) or Dice + CE (supervised), forward
  only: their share of the backward pass is not separated.
* **batch**: producing one batch in the training process (methods: the engine's loader with
  ``nnUNet_n_proc_DA=0``, i.e. ``make_batch``; supervised: ``next()`` on nnU-Net's loader), its
  throughput (batches/s) and **batch / step**: above 1 the data pipeline, not the network, limits an
  iteration that makes its batch in the training process.
* **loader** (methods): batches/s of the engine's loader alone (``pretraining/loader.py``) with each of
  ``--loader-workers`` background processes (default 0, 1, 2): per count, ``--loader-rounds`` rounds
  (interleaved over the counts, each with a fresh loader whose start-up and first ``warmup`` batches are
  not timed) of ``--loader-batches`` batches (more than the step repeats: a round of a few batches
  is dominated by the queue's start-up); the median round. **N / 0 workers**: per round the ratio of the
  largest count's rate to the smallest's, median over rounds (paired: the counts of one round run back to
  back, so a drift of the machine's speed over the run cancels). **iteration**: median wall time of
  fetching the next batch plus the step, with the batch made in the training process (batch + step) and
  with the largest worker count, the loader working in the background while the network trains.
* **superpixels** (methods with SLIC parameters, when the SuperCL module is installed): SLIC time per
  slice for building the cache, timed on ``--cache-cases`` cases (the cache itself is not touched).

Multi-stage methods are timed in their last stage (the batches of the second of two epochs), and a
stage that uses its own batch size by design (semi_local's local stage: ``stage2_batch_size``, 4) is
timed at that size. Label-aware methods use the 10 % subset of fold 0.

CPU timings of a shared machine are noisy: the report records the load average next to the numbers.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime

import numpy as np
import torch

from nnunet_cl.atomic import atomic_write_json
from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import add_dataset_arguments, load_dataset_context
from nnunet_cl.pretraining.engine import PretrainConfig, Pretrainer
from nnunet_cl.pretraining.loader import BatchLoader
from nnunet_cl.pretraining.methods import METHODS, get_method
from nnunet_cl.pretraining.superpixels import superpixel_volume
from nnunet_cl.tools.benchmark_evaluation import machine_description
from nnunet_cl.tools.benchmark_report import write_text


def add_speed_parser(subparsers) -> None:
    p = subparsers.add_parser("speed", help="time each method's pre-training step against nnU-Net's supervised step",
                              description="Speed benchmark (one run, one machine): step time ratios, loss share, "
                                          "data loader throughput, superpixel-cache build time.")
    add_dataset_arguments(p, "dataset id or name (planned and preprocessed for 2d)", configuration=False)
    p.add_argument("-m", "--methods", nargs="+", default=None, help="default: every registered method")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cache-cases", type=int, default=5, help="cases timed for the superpixel cache (default 5)")
    p.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2],
                   help="loader worker processes timed per method (default 0 1 2; 0 = in the training process)")
    p.add_argument("--loader-rounds", type=int, default=3, help="timed rounds per worker count (median; default 3)")
    p.add_argument("--loader-batches", type=int, default=40, help="batches timed per loader round (default 40)")
    p.add_argument("-device", "--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("-o", "--output", default="speed.md", help="markdown table (a .json with the raw numbers beside it)")
    p.set_defaults(func=run_speed)


# ---------------------------------------------------------------------------------------------- timing
class ModuleTimer:
    """Wall time spent inside the U-Net's stage modules (forward), via hooks on a flat set of modules."""

    def __init__(self, network, device):
        self.device = device
        self.total = 0.0
        self._starts: list = []
        self._handles = []
        for module in unet_stage_modules(network):
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post))

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _pre(self, module, inputs):
        self._sync()
        self._starts.append(time.perf_counter())

    def _post(self, module, inputs, output):
        self._sync()
        self.total += time.perf_counter() - self._starts.pop()

    def remove(self):
        for handle in self._handles:
            handle.remove()


def unet_stage_modules(network) -> list:
    """Non-nested modules that hold all of the U-Net's compute: stem, encoder stages, decoder stages,
    transposed convolutions and segmentation layers."""
    modules = []
    encoder, decoder = network.encoder, network.decoder
    if getattr(encoder, "stem", None) is not None:
        modules.append(encoder.stem)
    modules += list(encoder.stages)
    for name in ("stages", "transpconvs", "seg_layers"):
        modules += list(getattr(decoder, name, []))
    return modules


@contextmanager
def timed_call(owner, attribute: str, record: list, device):
    """Replace ``owner.attribute`` (a callable) by a wrapper that appends each call's wall time to ``record``."""
    original = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = original(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        record.append(time.perf_counter() - start)
        return result

    setattr(owner, attribute, wrapper)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


def measure(make_batch, step, loss_owner, loss_attribute: str, network, device, warmup: int, repeats: int) -> dict:
    """Median batch time, step time and loss share over ``repeats`` iterations after ``warmup``."""
    batch_times, step_times, step_cpu, shares = [], [], [], []
    timer = ModuleTimer(network, device)
    try:
        for i in range(warmup + repeats):
            start = time.perf_counter()
            batch = make_batch()
            batch_time = time.perf_counter() - start
            loss_calls: list = []
            timer.total = 0.0
            with timed_call(loss_owner, loss_attribute, loss_calls, device):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, cpu_start = time.perf_counter(), time.process_time()
                step(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                step_time = time.perf_counter() - start
                cpu_time = time.process_time() - cpu_start
            if i < warmup:
                continue
            # The loss call may run the network (methods) or receive its output (supervised):
            # subtract the U-Net time that happened inside it, not the U-Net time of the whole step.
            network_in_loss = timer.total if loss_attribute == "compute_loss" else 0.0
            shares.append(max(0.0, sum(loss_calls) - network_in_loss) / step_time)
            batch_times.append(batch_time)
            step_times.append(step_time)
            step_cpu.append(cpu_time)
    finally:
        timer.remove()
    step_median = statistics.median(step_times)
    batch_median = statistics.median(batch_times)
    return {"step_s": step_median, "step_cpu_s": statistics.median(step_cpu), "loss_share": statistics.median(shares), "batch_s": batch_median,
            "batches_per_s": 1.0 / batch_median if batch_median > 0 else float("inf"),
            "batch_over_step": batch_median / step_median, "step_times": step_times, "batch_times": batch_times}


# ---------------------------------------------------------------------------------------------- rows
def supervised_row(context, batch_size: int, device, warmup: int, repeats: int) -> dict:
    """A stock nnUNetTrainer (fold 0) with its own loss, optimiser and training loader."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = dict(context.plans, continue_training=False)
    trainer = nnUNetTrainer(plans, context.configuration, 0, context.dataset_json, device)
    trainer.initialize()
    trainer.batch_size = batch_size
    loader, val_loader = trainer.get_dataloaders()
    trainer.network.train()
    try:
        row = measure(lambda: next(loader), trainer.train_step, trainer, "loss", trainer.network, device,
                      warmup, repeats)
    finally:
        for augmenter in (loader, val_loader):
            if hasattr(augmenter, "_finish"):
                augmenter._finish()
    return dict(row, name="supervised (nnU-Net)")


LOADER_ITERATIONS = 10 ** 6    # iterations per epoch of the timed engine: more than any loader round needs


def method_row(context, name: str, batch_size: int, device, warmup: int, repeats: int, cache_cases: int,
               loader_workers=(0, 1, 2), loader_rounds: int = 3, loader_batches: int = 40) -> dict:
    method_cls = get_method(name)
    # Label-aware methods need a labelled subset: the 10 % subset of fold 0, as the benchmark's first cell.
    options = {"fraction": 0.1, "fold": "0"} if method_cls.is_label_aware() else {}
    config = PretrainConfig(dataset=context.dataset_name, method=name, plans=context.plans_identifier,
                            batch_size=batch_size, device=device.type, epochs=2, iters_per_epoch=LOADER_ITERATIONS,
                            options=options)
    engine = Pretrainer(config)
    engine.network.train(), engine.method.train()
    # Batches of the second (last) epoch: multi-stage methods are timed in their last stage (e.g. semi_local's
    # label-aware local stage).
    loader = functools.partial(BatchLoader, engine.method, engine.slices, engine.local_batch_size, seed=config.seed,
                               rank=engine.rank, first_iteration=LOADER_ITERATIONS, epochs=config.epochs,
                               iters_per_epoch=LOADER_ITERATIONS, pin_memory=device.type == "cuda")
    in_process = loader(workers=0)
    try:
        row = measure(lambda: next(in_process), engine.train_step, engine.method, "compute_loss", engine.network,
                      device, warmup, repeats)
    finally:
        in_process.close()
    row.update(loader_columns(loader, engine, device, loader_workers, loader_rounds, warmup, repeats, loader_batches))
    row["superpixel_ms_per_slice"] = superpixel_time(engine.method, engine.slices, cache_cases)
    return dict(row, name=name)


def loader_columns(loader, engine, device, worker_counts, rounds: int, warmup: int, repeats: int,
                   loader_batches: int) -> dict:
    """Batches/s of the loader alone per worker count (median of ``rounds`` rounds of ``loader_batches``), and the
    iteration time (next batch + step, ``repeats`` times) with the largest count working in the background."""
    rates: dict = {workers: [] for workers in worker_counts}
    for _ in range(rounds):
        for workers in worker_counts:              # interleaved: slow drifts of the machine's load hit every count
            batches = loader(workers=workers)
            try:
                for _ in range(warmup + 1):        # start-up (fork, first reads) is not timed
                    next(batches)
                start = time.perf_counter()
                for _ in range(loader_batches):
                    next(batches)
                rates[workers].append(loader_batches / (time.perf_counter() - start))
            finally:
                batches.close()
    most = max(worker_counts)
    batches = loader(workers=most)
    iteration_times = []
    try:
        for i in range(warmup + 1 + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            engine.train_step(next(batches))
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > warmup:
                iteration_times.append(time.perf_counter() - start)
    finally:
        batches.close()
    medians = {workers: statistics.median(values) for workers, values in rates.items()}
    return {"loader_batches_per_s": medians, "loader_rounds": rates, "loader_most_workers": most,
            "loader_speedup": statistics.median(fast / slow for fast, slow in zip(rates[most],
                                                                                   rates[min(worker_counts)])),
            "iteration_overlapped_s": statistics.median(iteration_times)}


def superpixel_time(method, slices, cache_cases: int):
    """SLIC time per slice (ms) for the method's cache parameters, or None if it uses no superpixels."""
    params = method.slic_parameters
    if params is None or not method.uses_fixed_views:
        return None
    total, n_slices = 0.0, 0
    for case_id in slices.case_ids[:cache_cases]:
        volume = np.asarray(slices.dataset.load_case(case_id)[0][:])     # (C, Z, Y, X)
        start = time.perf_counter()
        superpixel_volume(volume, params)
        total += time.perf_counter() - start
        n_slices += volume.shape[1]
    return 1000.0 * total / max(1, n_slices)


# ---------------------------------------------------------------------------------------------- report
def format_table(rows: list, header: list) -> str:
    supervised = rows[0]["step_s"]
    counts = next((sorted(r["loader_batches_per_s"]) for r in rows if "loader_batches_per_s" in r), [])
    most = max(counts, default=0)
    loader_header = f"loader batches/s ({' / '.join(map(str, counts))} workers) | {most} / {min(counts, default=0)} " \
                    f"workers | iteration, in-process (s) | iteration, {most} workers (s)"
    lines = list(header) + ["", "| method | step (s) | step / supervised | step CPU (s) | loss share | batch (s) | batches/s | "
                                f"batch / step | {loader_header} | superpixels (ms/slice) |",
                            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sp = row.get("superpixel_ms_per_slice")
        if "loader_batches_per_s" in row:
            rates = row["loader_batches_per_s"]
            loader = (f"{' / '.join(f'{rates[c]:.1f}' for c in counts)} | {row['loader_speedup']:.2f} | "
                      f"{row['batch_s'] + row['step_s']:.3f} | {row['iteration_overlapped_s']:.3f}")
        else:
            loader = "— | — | — | —"
        lines.append(f"| {row['name']} | {row['step_s']:.3f} | {row['step_s'] / supervised:.2f} | {row['step_cpu_s']:.3f} | "
                     f"{100 * row['loss_share']:.1f} % | {row['batch_s']:.3f} | {row['batches_per_s']:.1f} | "
                     f"{row['batch_over_step']:.2f} | {loader} | {'—' if sp is None else f'{sp:.1f}'} |")
    lines += ["", "step: median wall time of one optimisation step on a ready batch (step CPU: its CPU time over all "
              "threads, less sensitive to other load on the machine); loss share: time in the loss "
              "outside the U-Net's modules (forward only) / step; batch: time to produce one batch in the training "
              "process (methods: the engine's loader with 0 workers; supervised: nnU-Net's loader with its "
              "augmentation, in-process); loader: batches/s of the engine's loader alone per worker count (median "
              "of rounds) and the ratio of the largest count to the smallest (per round, median over rounds); "
              "iteration: next batch + step, with the batch made in-process (batch + step) and by the largest "
              "number of background workers; "
              "superpixels: SLIC per slice when building the SuperCL cache."]
    return "\n".join(lines) + "\n"


def run_speed(args) -> None:
    if args.batch_size < 2 or args.repeats < 1 or args.warmup < 0:
        raise NnunetClError("--batch-size must be >= 2, --repeats >= 1 and --warmup >= 0")
    if min(args.loader_workers) < 0 or args.loader_rounds < 1 or args.loader_batches < 1:
        raise NnunetClError("--loader-workers must be >= 0 (0 = in the training process), --loader-rounds and "
                            "--loader-batches >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise NnunetClError("-device cuda was requested but no CUDA device is available; use -device cpu")
    methods = args.methods or list(METHODS)
    for name in methods:
        get_method(name)                       # unknown names: one clear error before any work
    context = load_dataset_context(args.dataset, args.plans)
    device = torch.device(args.device)
    os.environ["nnUNet_n_proc_DA"] = "0"       # the supervised loader runs in this process, like the engine's
    results_env = os.environ.get("nnUNet_results")
    scratch = tempfile.mkdtemp(prefix="nnunet_cl_speed_")
    os.environ["nnUNet_results"] = scratch     # nnUNetTrainer creates its output folder: keep it out of yours
    rows = []
    started = datetime.now()
    try:
        print(f"supervised nnU-Net step, batch {args.batch_size} ...", flush=True)
        rows.append(supervised_row(context, args.batch_size, device, args.warmup, args.repeats))
        for name in methods:
            print(f"{name} ...", flush=True)
            rows.append(method_row(context, name, args.batch_size, device, args.warmup, args.repeats,
                                   args.cache_cases, sorted(set(args.loader_workers)), args.loader_rounds,
                                   args.loader_batches))
    finally:
        import shutil
        shutil.rmtree(scratch, ignore_errors=True)
        if results_env is None:
            os.environ.pop("nnUNet_results", None)
        else:
            os.environ["nnUNet_results"] = results_env
    header = [f"## Speed: {context.dataset_name}, 2d patch {list(context.patch_size)}, batch {args.batch_size}, "
              f"device {args.device}", "",
              f"- command: `nnunet_cl speed -d {args.dataset} --batch-size {args.batch_size} --warmup {args.warmup} "
              f"--repeats {args.repeats} --loader-workers {' '.join(map(str, args.loader_workers))} --loader-rounds "
              f"{args.loader_rounds} --loader-batches {args.loader_batches}"
              + (f" -m {' '.join(args.methods)}" if args.methods else "") + "`",
              f"- date: {started:%Y-%m-%d %H:%M}; machine: {machine_description()}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads",
              f"- medians over {args.repeats} iterations after {args.warmup} warm-up iterations"]
    table = format_table(rows, header)
    print(table)
    write_text(table, args.output)
    atomic_write_json({"rows": [{k: v for k, v in r.items()} for r in rows], "header": header},
                      os.path.splitext(args.output)[0] + ".json")
    print(f"written: {args.output}")
