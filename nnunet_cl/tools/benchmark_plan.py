"""What ``nnunet_cl benchmark`` runs: budget presets, the runs found in the registries, what is finished.

**Which runs exist** is read from the trainer registry (``nnunet_cl.trainers``), never from a list in
the benchmark: every published trainer class that carries its own class attribute ``benchmark_name``
is one cell of the table, at its ``label_fraction``. ``trainers/__init__.py`` tags the scratch
baselines (``"scratch"``) and every generated ``nnUNetTrainer<M>Init*`` (``M.name``); a fine-tuning-only
family joins by tagging its classes, e.g.
``fraction_variants(base, "nnUNetTrainerPseudoLabelCL", benchmark_name="pseudo_label")``. The attribute
must be set on the class itself (``fraction_variants`` does that), so subclasses of a tagged class do
not silently become duplicate cells. A fraction a family has no class for (e.g. a semi-supervised
method at 100 %) is simply not run.

**Pre-training**: a trainer with a ``pretraining_method`` attribute needs that method's checkpoint. A
method is *label-aware* when its options include ``fraction`` and ``fold`` (the convention of
``nnunet_cl pretrain --fraction/--fold``); it is pre-trained once per fraction and fold, every other
method once per dataset. The checkpoint folder is ``method.folder_name(options)`` -- the same lookup
the Init trainers use -- so the benchmark and ``nnUNetv2_train`` can never disagree about it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import DEFAULT_PLANS, PRETRAINED_CHECKPOINT, pretraining_folder, results_folder_name
from nnunet_cl.pretraining.methods import get_method

DEFAULT_FRACTIONS = (0.1, 0.25)
REFERENCE_METHOD = "scratch"        # every paired difference in the report is taken against it
UPPER_BOUND_METHOD = REFERENCE_METHOD   # also run at 100 % labels, as the paper's upper bound


SELECTION_FIELDS = ("name", "folds", "methods", "fractions", "upper_bound", "print_summary")
NNUNET_EPOCHS, NNUNET_ITERATIONS = 1000, 250       # nnUNetTrainer's num_epochs, num_iterations_per_epoch
# What makes two pre-trainings interchangeable (nnunet_cl benchmark --pretrained-from).
PRETRAIN_BUDGET_FIELDS = ("pretrain_epochs", "pretrain_iters_per_epoch", "pretrain_batch_size")


LEVER_FIELDS = {"finetune_levers", "finetune_defaults"}
# budget.json files written before the defaults were pinned were all made under these
DEFAULTS_BEFORE_PINNING = {"nnUNet_cl_finetune_schedule": "stock", "nnUNet_cl_finetune_peak_lr": "the schedule's",
                           "nnUNet_cl_pretrained_parts": "all", "nnUNet_cl_weight_norm_reset": "0"}


def resolved_levers(fingerprint: dict) -> dict:
    """``{lever variable: value a trainer uses}`` of a budget fingerprint: the set value, else the default."""
    return dict(fingerprint.get("finetune_defaults", DEFAULTS_BEFORE_PINNING), **fingerprint.get("finetune_levers", {}))


@dataclass(frozen=True)
class Budget:
    """Training budget of every run of one benchmark. ``None``: nnU-Net's own value (plans / 1000 epochs)."""
    name: str
    pretrain_epochs: int
    pretrain_iters_per_epoch: int
    pretrain_batch_size: int
    finetune_epochs: Optional[int]
    finetune_iters_per_epoch: Optional[int]
    finetune_batch_size: Optional[int]
    finetune_val_iters_per_epoch: Optional[int]
    device: str
    folds: tuple
    test_time_augmentation: bool = True     # mirroring in the final validation and in nnUNetv2_predict of --test-images
    # What the preset runs when the command line does not say (not part of the budget's fingerprint):
    methods: Optional[tuple] = None         # None: every registered benchmark method
    fractions: Optional[tuple] = None       # None: DEFAULT_FRACTIONS
    upper_bound: bool = True                # scratch at 100 % labels too
    print_summary: bool = False             # at the end, each run's validation DSC and where its files are

    def finetune_env(self) -> dict:
        """The nnUNet_cl_* budget variables; unset (None) ones are removed from the child's environment."""
        return {"nnUNet_cl_num_epochs": self.finetune_epochs,
                "nnUNet_cl_num_iterations_per_epoch": self.finetune_iters_per_epoch,
                "nnUNet_cl_batch_size": self.finetune_batch_size,
                "nnUNet_cl_num_val_iterations_per_epoch": self.finetune_val_iters_per_epoch}

    def pretrain_args(self) -> list:
        return ["--epochs", self.pretrain_epochs, "--iters-per-epoch", self.pretrain_iters_per_epoch,
                "--batch-size", self.pretrain_batch_size, "-device", self.device]

    def fingerprint(self) -> dict:
        """What makes two runs comparable: every budget value, not the preset's name, folds or selection."""
        return {k: v for k, v in asdict(self).items() if k not in SELECTION_FIELDS}

    def describe(self) -> str:
        ft = self.finetune_env()
        return (f"preset {self.name}: pre-training {self.pretrain_epochs} epochs x {self.pretrain_iters_per_epoch} "
                f"iterations, batch {self.pretrain_batch_size}; fine-tuning "
                f"{ft['nnUNet_cl_num_epochs'] or NNUNET_EPOCHS} epochs x "
                f"{ft['nnUNet_cl_num_iterations_per_epoch'] or NNUNET_ITERATIONS} "
                f"iterations, batch {ft['nnUNet_cl_batch_size'] or 'from the plans'}, "
                f"{ft['nnUNet_cl_num_val_iterations_per_epoch'] or 50} validation iterations per epoch; "
                f"device {self.device}")


PRESETS = {
    # For a 2-core CPU without GPU. Targets: one pre-training <= 10 min, one fine-tuning run (training plus
    # nnU-Net's final validation of the fold's 40 Hippocampus cases) <= 6 min. Fine-tuning spends its samples on
    # more, smaller steps (700 x 16 rather than 400 x 32): with nnU-Net's recipe (SGD 0.01, momentum 0.99) scratch
    # predicts no foreground for its first few hundred steps, so the number of steps decides where a short run
    # ends. The final validation runs without mirroring (test_time_augmentation=False ->
    # nnUNet_cl_val_mirroring=0), which would otherwise take a large part of the 6 minutes. Pre-training is
    # 250 x 32 for every method, sized so that SuperCL, the slowest, fits the 10 minutes. The measurements behind
    # these choices (calibration runs, `nnunet_cl speed`): README, Results.
    "cpu": Budget("cpu", pretrain_epochs=10, pretrain_iters_per_epoch=25, pretrain_batch_size=32,
                  finetune_epochs=20, finetune_iters_per_epoch=35, finetune_batch_size=16,
                  finetune_val_iters_per_epoch=5, device="cpu", folds=(0,), test_time_augmentation=False),
    # Near the plateau of fine-tuning on a CPU, three folds for the paired comparison: the fine-tuning length
    # is the shortest of a learning curve of scratch at 10 % and 25 % labels whose validation DSC is within one
    # point of the longest (README, "Choosing the cpu-plateau budget"); pre-training 1000 steps x 32.
    "cpu-plateau": Budget("cpu-plateau", pretrain_epochs=40, pretrain_iters_per_epoch=25, pretrain_batch_size=32,
                          finetune_epochs=112, finetune_iters_per_epoch=50, finetune_batch_size=16,
                          finetune_val_iters_per_epoch=5, device="cpu", folds=(0, 1, 2),
                          test_time_augmentation=False),
    # nnU-Net's default recipe (1000 x 250, batch from the plans) and the papers' pre-training
    # (100 epochs, batch 32 = nnunet_cl pretrain's defaults), five folds, for a GPU machine.
    "paper": Budget("paper", pretrain_epochs=100, pretrain_iters_per_epoch=250, pretrain_batch_size=32,
                    finetune_epochs=None, finetune_iters_per_epoch=None, finetune_batch_size=None,
                    finetune_val_iters_per_epoch=None, device="cuda", folds=(0, 1, 2, 3, 4)),
    # The first run of a new user: one method (PCL) and scratch at 10 % labels on fold 0 with the cpu budget,
    # then both validation DSCs and where the results are. Its time is estimated from the cpu preset's measured
    # steps (README, "The two commands").
    "quick": Budget("quick", pretrain_epochs=10, pretrain_iters_per_epoch=25, pretrain_batch_size=32,
                    finetune_epochs=20, finetune_iters_per_epoch=35, finetune_batch_size=16,
                    finetune_val_iters_per_epoch=5, device="cpu", folds=(0,), test_time_augmentation=False,
                    methods=("scratch", "pcl"), fractions=(0.1,), upper_bound=False, print_summary=True),
    # Seconds per run: for tests and for checking an installation end to end. Its numbers mean nothing.
    "tiny": Budget("tiny", pretrain_epochs=1, pretrain_iters_per_epoch=2, pretrain_batch_size=4,
                   finetune_epochs=1, finetune_iters_per_epoch=2, finetune_batch_size=2,
                   finetune_val_iters_per_epoch=1, device="cpu", folds=(0,), test_time_augmentation=False),
}


# The benchmark's flag of each budget value (its messages name the flag the user typed).
BUDGET_FLAGS = {"pretrain_epochs": "--pretrain-epochs", "pretrain_iters_per_epoch": "--pretrain-iters",
                "pretrain_batch_size": "--pretrain-batch", "finetune_epochs": "--epochs",
                "finetune_iters_per_epoch": "--iters", "finetune_batch_size": "--batch",
                "finetune_val_iters_per_epoch": "--val-iters"}


def make_budget(preset: str, **overrides) -> Budget:
    """A preset with the user's overrides, each checked by the rule its consumer applies (nnunet_cl pretrain's
    budget, the trainers' nnUNet_cl_* variables), so a bad value is refused before anything is written."""
    from nnunet_cl.validation import check_pretrain_budget, positive_int
    if preset not in PRESETS:
        raise NnunetClError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    budget = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    check_pretrain_budget(budget.pretrain_epochs, budget.pretrain_iters_per_epoch, budget.pretrain_batch_size,
                          {"epochs": BUDGET_FLAGS["pretrain_epochs"], "iters_per_epoch": BUDGET_FLAGS[
                              "pretrain_iters_per_epoch"], "batch_size": BUDGET_FLAGS["pretrain_batch_size"]})
    for key in ("finetune_epochs", "finetune_iters_per_epoch", "finetune_batch_size", "finetune_val_iters_per_epoch"):
        if getattr(budget, key) is not None:
            positive_int(getattr(budget, key), BUDGET_FLAGS[key])
    return budget


# ---------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class PretrainJob:
    method: str
    options: tuple          # sorted (key, value) pairs passed to nnunet_cl pretrain (label-aware: fraction, fold)
    folder: str             # the method's results sub-folder for these options

    def checkpoint(self, results: str, dataset_name: str, plans: str) -> str:
        return os.path.join(pretraining_folder(results, dataset_name, self.folder, plans), PRETRAINED_CHECKPOINT)

    def cli_args(self) -> list:
        args = []
        for key, value in self.options:
            args += [f"--{key}", value]
        return args

    @property
    def label(self) -> str:
        return f"{self.method}" + "".join(f" {k} {v}" for k, v in self.options)

    @property
    def log_name(self) -> str:
        """The pre-training's log in the benchmark output: ``logs/<log_name>.log``."""
        return f"pretrain_{self.folder}"


@dataclass(frozen=True)
class FinetuneRun:
    method: str             # benchmark name: "scratch", a pre-training method, or a trainer family
    trainer: str
    fraction: float
    fold: object            # int, or "all"
    pretrain: Optional[PretrainJob] = None

    @property
    def label(self) -> str:
        return f"{self.method} {fraction_label(self.fraction)} fold {self.fold}"

    @property
    def log_name(self) -> str:
        """The run's log in the benchmark output: ``logs/<log_name>.log``."""
        return f"{self.trainer}_fold{self.fold}"

    def fold_folder(self, results: str, dataset_name: str, plans: str) -> str:
        return os.path.join(results, dataset_name, results_folder_name(self.trainer, plans), f"fold_{self.fold}")


def fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g} %"


@dataclass
class BenchmarkFamilies:
    """benchmark name -> {label fraction -> trainer class}, in publication order (scratch first)."""
    families: dict = field(default_factory=dict)

    @property
    def names(self) -> list:
        return list(self.families)

    def trainer(self, name: str, fraction: float):
        for f, cls in self.families.get(name, {}).items():
            if abs(f - fraction) < 1e-9:
                return cls
        return None


def discover_families(trainer_module=None) -> BenchmarkFamilies:
    if trainer_module is None:
        import nnunet_cl.trainers as trainer_module
    families: dict = {}
    for attribute in getattr(trainer_module, "__all__", dir(trainer_module)):
        cls = getattr(trainer_module, attribute, None)
        name = getattr(cls, "__dict__", {}).get("benchmark_name") if isinstance(cls, type) else None
        if not name:
            continue
        fraction = float(cls.label_fraction)
        by_fraction = families.setdefault(name, {})
        if fraction in by_fraction and by_fraction[fraction] is not cls:
            raise NnunetClError(f"two trainers claim benchmark cell ({name}, {fraction_label(fraction)}): "
                                f"{by_fraction[fraction].__name__} and {cls.__name__}; give one another benchmark_name")
        by_fraction[fraction] = cls
    return BenchmarkFamilies(families)


def pretrain_job(trainer_cls, fraction: float, fold) -> Optional[PretrainJob]:
    method_name = trainer_cls.pretraining_method
    if not method_name:
        return None
    method = get_method(method_name)
    options = {"fraction": fraction, "fold": str(fold)} if method.is_label_aware() else {}
    folder = method.folder_name(method.resolve_options(options))
    return PretrainJob(method_name, tuple(sorted((k, str(v) if k == "fold" else v) for k, v in options.items())),
                       folder)


def plan_runs(families: BenchmarkFamilies, methods=None, fractions=DEFAULT_FRACTIONS, folds=(0,),
              upper_bound: bool = True) -> tuple:
    """(runs in execution order, [(method, fraction) cells that have no trainer]).

    Order: fold by fold; within a fold fraction by fraction (ascending), methods in registry order;
    the 100 % scratch upper bound last in each fold.
    """
    available = families.names
    methods = list(available) if not methods else list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise NnunetClError(f"unknown benchmark method(s) {', '.join(unknown)}; available: {', '.join(available)}")
    known_fractions = sorted({f for by_fraction in families.families.values() for f in by_fraction})
    fractions = sorted(dict.fromkeys(float(f) for f in fractions))
    for f in fractions:
        if not any(abs(f - k) < 1e-9 for k in known_fractions):
            raise NnunetClError(f"label fraction {f:g} has no trainers; use one of: "
                                f"{', '.join(f'{k:g}' for k in known_fractions)}")
    cells = [(m, f) for f in fractions for m in methods]
    if upper_bound and UPPER_BOUND_METHOD in methods and not any(abs(f - 1.0) < 1e-9 for f in fractions):
        cells.append((UPPER_BOUND_METHOD, 1.0))
    runs, missing = [], []
    for fold in folds:
        for method, fraction in cells:
            cls = families.trainer(method, fraction)
            if cls is None:
                if (method, fraction) not in missing:
                    missing.append((method, fraction))
                continue
            runs.append(FinetuneRun(method, cls.__name__, fraction, fold, pretrain_job(cls, fraction, fold)))
    return runs, missing


# ---------------------------------------------------------------------------------------------- state
# The evaluations a run can have: nnU-Net's validation cases of its fold, and the --test-images set.
METRIC_SPLITS = ("val", "test")


@dataclass(frozen=True)
class BenchmarkLayout:
    """Where one benchmark keeps everything: ``output/`` with its own ``nnUNet_results``."""
    output: str
    dataset_name: str
    plans: str = DEFAULT_PLANS

    @property
    def results(self) -> str:
        return os.path.join(self.output, "nnUNet_results")

    def checkpoint(self, job: PretrainJob) -> str:
        return job.checkpoint(self.results, self.dataset_name, self.plans)

    def fold_folder(self, run: FinetuneRun) -> str:
        return run.fold_folder(self.results, self.dataset_name, self.plans)

    def metrics_file(self, run: FinetuneRun, split: str) -> str:
        """Per-case metrics of ``run`` on ``split`` (one of ``METRIC_SPLITS``)."""
        return os.path.join(self.output, "metrics", run.trainer, f"fold_{run.fold}_{split}.csv")

    def test_predictions(self, run: FinetuneRun) -> str:
        return os.path.join(self.output, "test_predictions", run.trainer, f"fold_{run.fold}")

    @property
    def logs(self) -> str:
        return os.path.join(self.output, "logs")

    def log_file(self, name: str) -> str:
        return os.path.join(self.logs, name + ".log")

    @property
    def budget_file(self) -> str:
        return os.path.join(self.output, "budget.json")

    def report_file(self, extension: str) -> str:
        """``results.csv`` / ``results.md`` / ``results.png``."""
        return os.path.join(self.output, f"results.{extension}")

    def summary_file(self, run: FinetuneRun) -> str:
        """nnUNetv2_train writes it as its very last step: the run has finished."""
        return os.path.join(self.fold_folder(run), "validation", "summary.json")


def record_patterns(output: str) -> tuple:
    """Glob patterns of a benchmark output's results without its checkpoints (any dataset, plans, trainer, fold):
    the records ``scripts/benchmark_records.py`` keeps."""
    layout = BenchmarkLayout(output, dataset_name="*", plans="*")
    any_run = FinetuneRun(method="*", trainer="*", fraction=0.0, fold="*")
    return (layout.budget_file, layout.report_file("md"), layout.report_file("csv"),
            layout.metrics_file(any_run, "*"), layout.log_file("*"), layout.summary_file(any_run))


def pretrained_checkpoint_pattern(output: str) -> str:
    """Glob pattern of every pre-trained checkpoint in a benchmark output (any dataset, plans, method)."""
    return BenchmarkLayout(output, dataset_name="*", plans="*").checkpoint(PretrainJob(method="*", options=(),
                                                                                       folder="*"))


def runs_in(output: str) -> list:
    """``(layout, run)`` of every fine-tuning run that has a fold folder in a benchmark output (or its records).

    The fold folders are read back into the fields ``FinetuneRun.fold_folder`` builds them from (trainer, plans,
    fold; method and fraction are not in the path and are left empty); a folder that does not come back as the
    same path is not a run of this layout and is skipped.
    """
    any_run = FinetuneRun(method="*", trainer="*", fraction=0.0, fold="*")
    found = []
    for folder in sorted(glob.glob(BenchmarkLayout(glob.escape(output), "*", "*").fold_folder(any_run))):
        trainer_folder, fold_name = os.path.split(folder)
        dataset_folder, trainer_plans_configuration = os.path.split(trainer_folder)
        trainer, plans, _ = trainer_plans_configuration.rsplit("__", 2)
        fold = fold_name[len("fold_"):]
        layout = BenchmarkLayout(output, os.path.basename(dataset_folder), plans)
        run = FinetuneRun(method="", trainer=trainer, fraction=0.0, fold=int(fold) if fold.isdigit() else fold)
        if layout.fold_folder(run) == folder:
            found.append((layout, run))
    return found


def pretrainings_in(output: str) -> list:
    """``(layout, job)`` of every finished pre-training (``checkpoint_final.pth``) in a benchmark output; the
    checkpoint paths are read back into ``PretrainJob.folder`` (method and options are not in the path and are
    left empty), like ``runs_in``."""
    found = []
    for checkpoint in sorted(glob.glob(pretrained_checkpoint_pattern(glob.escape(output)))):
        method_folder = os.path.dirname(checkpoint)
        dataset_folder = os.path.dirname(os.path.dirname(method_folder))
        folder, plans, _ = os.path.basename(method_folder).rsplit("__", 2)
        layout = BenchmarkLayout(output, os.path.basename(dataset_folder), plans)
        job = PretrainJob(method="", options=(), folder=folder)
        if layout.checkpoint(job) == checkpoint:
            found.append((layout, job))
    return found


def pretrain_done(layout: BenchmarkLayout, job: PretrainJob) -> bool:
    return os.path.isfile(layout.checkpoint(job))


def pretrain_resumable(layout: BenchmarkLayout, job: PretrainJob) -> bool:
    return os.path.isfile(os.path.join(os.path.dirname(layout.checkpoint(job)), "checkpoint_latest.pth"))


def training_done(layout: BenchmarkLayout, run: FinetuneRun) -> bool:
    return os.path.isfile(layout.summary_file(run))


def training_resumable(layout: BenchmarkLayout, run: FinetuneRun) -> bool:
    folder = layout.fold_folder(run)
    return any(os.path.isfile(os.path.join(folder, f"checkpoint_{k}.pth")) for k in ("final", "latest"))


def run_done(layout: BenchmarkLayout, run: FinetuneRun, with_test: bool = False) -> bool:
    done = training_done(layout, run) and os.path.isfile(layout.metrics_file(run, "val"))
    return done and (not with_test or os.path.isfile(layout.metrics_file(run, "test")))


def run_state(layout: BenchmarkLayout, run: FinetuneRun, with_test: bool = False) -> str:
    """One word for ``--list`` and the progress line: done / evaluate / resume / pending."""
    if run_done(layout, run, with_test):
        return "done"
    if training_done(layout, run):
        return "evaluate"
    return "resume" if training_resumable(layout, run) else "pending"
