"""``nnunet_cl benchmark``: one command from an MSD task folder (or an nnU-Net dataset id) to the
DSC / JC / HD95 / ASD table and plot of every registered method x label fraction x fold.

Steps, each through the real console scripts as subprocesses and each skipped when its output exists
(so a killed benchmark continues where it stopped):

1. ``nnUNetv2_convert_MSD_dataset`` (MSD folder given and not converted yet) and
   ``nnUNetv2_plan_and_preprocess -c 2d`` (no 2d data yet) into ``$nnUNet_raw`` / ``$nnUNet_preprocessed``
   (or ``OUTPUT/nnUNet_raw`` / ``OUTPUT/nnUNet_preprocessed`` when those variables are unset);
2. ``nnunet_cl pretrain`` once per method and dataset (label-aware methods once per fraction and
   fold); cached by ``checkpoint_final.pth``, resumed with ``--c`` from ``checkpoint_latest.pth``;
3. ``nnUNetv2_train`` per method x fraction x fold with the preset's budget variables (resumed with
   ``--c``); finished when ``fold_X/validation/summary.json`` exists;
4. our metrics on nnU-Net's validation predictions (``fold_X/validation``) against
   ``$nnUNet_preprocessed/<Dataset>/gt_segmentations`` -> ``OUTPUT/metrics/<trainer>/fold_X_val.csv``;
5. optionally ``nnUNetv2_predict`` on a separate test folder and the same metrics against its labels;
6. ``OUTPUT/results.csv``, ``results.md``, ``results.png`` (rewritten after every run).

The concerns live in their own modules: ``benchmark_plan`` (budgets, which runs exist, what is finished),
``benchmark_dataset`` (step 1), ``benchmark_children`` (every child process), ``benchmark_evaluation``
(steps 4-6); this module is the command line and the loop over the steps.

Every run's results live in ``OUTPUT/nnUNet_results`` (never in your own ``$nnUNet_results``), and
``OUTPUT/budget.json`` pins the budget: an output folder never mixes runs of different budgets.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from datetime import timedelta

from nnunet_cl.atomic import TEMP_SUFFIX, atomic_write_json, current_umask, link_or_copy, remove_stale_temps
from nnunet_cl.errors import NnunetClError, Terminated, raise_terminated
from nnunet_cl.folder_lock import LOCK_NAME, FolderLock
from nnunet_cl.nnunet_context import CONFIGURATION, add_plans_argument
from nnunet_cl.splits import parse_fold
from nnunet_cl.tools.benchmark_children import ChildProcesses
from nnunet_cl.tools.benchmark_dataset import GENERATED_DATASET_NAME, BenchmarkDataset
from nnunet_cl.tools.benchmark_evaluation import BenchmarkEvaluation
from nnunet_cl.validation import positive_int
from nnunet_cl.tools.benchmark_plan import (BUDGET_FLAGS, DEFAULT_FRACTIONS, LEVER_FIELDS, NNUNET_EPOCHS, PRESETS,
                                            PRETRAIN_BUDGET_FIELDS, Budget, BenchmarkLayout, FinetuneRun, PretrainJob,
                                            discover_families, fraction_label, make_budget, plan_runs, pretrain_done,
                                            pretrain_resumable, resolved_levers, run_state, training_done,
                                            training_resumable)


# ---------------------------------------------------------------------------------------------- CLI
def add_benchmark_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="pre-train, fine-tune and evaluate every registered method on one dataset",
        description="Quality benchmark: DSC / JC / HD95 / ASD per method x label fraction x fold.")
    p.add_argument("-d", "--dataset", default=None,
                   help="MSD task folder (TaskXX_Name, converted if needed) or nnU-Net dataset id / name; "
                        f"omitted: a generated dataset ({GENERATED_DATASET_NAME})")
    p.add_argument("-m", "--methods", nargs="+", default=None,
                   help="benchmark methods (default: the preset's, else every registered one; see --list)")
    p.add_argument("--fractions", nargs="+", type=float, default=None,
                   help=f"label fractions (default: the preset's, else {' '.join(f'{f:g}' for f in DEFAULT_FRACTIONS)}; "
                        "scratch also runs at 1.0 as the upper bound)")
    p.add_argument("--no-upper-bound", dest="upper_bound", action="store_false", default=None,
                   help="do not add scratch at 100 %% labels")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds (default: the preset's)")
    p.add_argument("--preset", default="cpu", metavar="|".join(PRESETS), help="budget preset (default cpu)")
    p.add_argument("-o", "--output", default=None,
                   help="benchmark folder (default ./nnunet_cl_benchmark/<Dataset>_<preset>)")
    add_plans_argument(p)
    p.add_argument("--test-images", default=None, help="separate test images (nnU-Net naming CASE_0000.nii.gz)")
    p.add_argument("--test-labels", default=None, help="their reference segmentations (CASE.nii.gz)")
    p.add_argument("-np", dest="processes", type=int, default=2,
                   help="processes for conversion, preprocessing and nnU-Net's export (default 2)")
    p.add_argument("--pretrained-from", default=None, metavar="OTHER_OUTPUT",
                   help="take finished pre-trainings from another benchmark output of the same dataset and "
                        "pre-training budget instead of pre-training again (e.g. to compare fine-tuning levers, one "
                        "output each); pre-trainings it does not have run here")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--list", action="store_true", help="print the runs and their state, run nothing")
    shown.add_argument("--report-only", action="store_true",
                       help="rewrite results.csv / .md / .png from the finished runs of this selection (all folds "
                            "when -f is omitted) and start nothing that is pending")
    p.add_argument("-v", "--verbose", action="store_true", help="echo the children's whole output")
    budget = p.add_argument_group("budget overrides (of the preset)")
    for dest, flag in BUDGET_FLAGS.items():
        budget.add_argument(flag, dest=dest, type=int, default=None)
    budget.add_argument("-device", "--device", dest="device", choices=("cpu", "cuda"), default=None)
    p.set_defaults(func=run_benchmark)


def run_benchmark(args) -> None:
    overrides = {k: getattr(args, k) for k in (*BUDGET_FLAGS, "device")}
    if args.folds:
        overrides["folds"] = tuple(parse_fold(f) for f in args.folds)
    budget = make_budget(args.preset, **overrides)
    if (args.test_images is None) != (args.test_labels is None):
        raise NnunetClError("--test-images and --test-labels go together (a test folder needs its labels)")
    positive_int(args.processes, "-np")
    Benchmark(args, budget).run()


# ---------------------------------------------------------------------------------------------- runner
class Benchmark:
    """The loop: prepare the dataset, then pre-train / fine-tune / evaluate step by step, skipping what is done."""

    def __init__(self, args, budget: Budget):
        self.args = args
        self.budget = budget
        self.started = time.time()
        self.durations: dict = {"pretrain": [], "finetune": []}
        self.children = ChildProcesses(budget, args.processes, args.verbose)
        self.fingerprint = self.run_fingerprint()
        self.source_layout = None       # --pretrained-from, once checked

    def place(self, output: str, dataset_name: str, plans: str) -> None:
        """Where this benchmark keeps everything (known once the dataset is resolved)."""
        self.output, self.dataset_name = output, dataset_name
        self.layout = BenchmarkLayout(output, dataset_name, plans)

    def run_fingerprint(self) -> dict:
        """What makes two runs comparable: the budget, the fine-tuning levers (nnUNet_cl_finetune_schedule, ...)
        set in the environment (the trainers read them from there; read once, when the benchmark starts), and
        the defaults the trainers apply to the levers left unset."""
        from nnunet_cl.trainers.pretrained_init import finetune_lever_defaults, finetune_levers_from_env
        levers = finetune_levers_from_env(self.budget.finetune_epochs or NNUNET_EPOCHS,
                                          f"{BUDGET_FLAGS['finetune_epochs']} of the benchmark")
        return dict(self.budget.fingerprint(), **({"finetune_levers": levers} if levers else {}),
                    finetune_defaults=finetune_lever_defaults())

    def check_budget(self) -> bool:
        """True when OUTPUT/budget.json pins this budget already; an error when it pins another one. The levers
        compare as the trainers resolve them (set value, else default), so a run that sets a lever to the
        default an output was made under continues it."""
        path = self.layout.budget_file
        if not os.path.isfile(path):
            return False
        with open(path) as f:
            before = json.load(f).get("budget", {})
        now = self.fingerprint
        changed = sorted(k for k in (set(now) | set(before)) - LEVER_FIELDS if before.get(k) != now.get(k))
        resolved_before, resolved_now = resolved_levers(before), resolved_levers(now)
        changed += [f"{v} ({resolved_before.get(v)} there, {resolved_now.get(v)} now)"
                    for v in sorted(set(resolved_before) | set(resolved_now))
                    if resolved_before.get(v) != resolved_now.get(v)]
        if changed:
            raise NnunetClError(f"{self.output} holds runs made with another budget (differs in: {', '.join(changed)}); "
                                "use another --output, or the same preset, overrides and nnUNet_cl_finetune_* / "
                                "nnUNet_cl_pretrained_parts / nnUNet_cl_weight_norm_reset values as before")
        return True

    def check_pretrained_from(self):
        """The layout of ``--pretrained-from`` (None when not given), after checking that its pre-trainings are
        interchangeable with this benchmark's: same dataset, same pre-training budget."""
        source = self.args.pretrained_from
        if source is None:
            return None
        pinned_path = BenchmarkLayout(source, self.dataset_name, self.args.plans).budget_file
        if not os.path.isfile(pinned_path):
            raise NnunetClError(f"--pretrained-from {source} is not a benchmark output (it has no budget.json); give "
                                "the -o folder of an earlier nnunet_cl benchmark")
        if os.path.realpath(source) == os.path.realpath(self.output):
            raise NnunetClError(f"--pretrained-from {source} is this benchmark's own output; give another one")
        with open(pinned_path) as f:
            pinned = json.load(f)
        if pinned.get("dataset") != self.dataset_name:
            raise NnunetClError(f"--pretrained-from {source} holds runs of {pinned.get('dataset')}, not of "
                                f"{self.dataset_name}")
        differ = sorted(k for k in PRETRAIN_BUDGET_FIELDS if pinned.get("budget", {}).get(k) != self.fingerprint[k])
        if differ:
            raise NnunetClError(f"--pretrained-from {source} was pre-trained with another budget (differs in: "
                                f"{', '.join(differ)}); use the same preset and --pretrain-* overrides as there")
        return BenchmarkLayout(source, self.dataset_name, self.args.plans)

    def adoptable(self, job: PretrainJob) -> bool:
        """``--pretrained-from`` has this pre-training finished and this output has no run of it at all."""
        return (self.source_layout is not None and pretrain_done(self.source_layout, job)
                and not os.path.exists(os.path.dirname(self.layout.checkpoint(job))))

    def adopt_pretraining(self, job: PretrainJob) -> None:
        """Copy (hard links where possible) the finished pre-training folder of ``--pretrained-from``; the folder
        appears at once (a temporary copy renamed), so an interruption leaves nothing half-copied."""
        source = os.path.dirname(self.source_layout.checkpoint(job))
        target = os.path.dirname(self.layout.checkpoint(job))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        remove_stale_temps(os.path.dirname(target))    # left by adoptions killed mid-copy (this output is locked)
        tmp = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".", suffix=TEMP_SUFFIX,
                               dir=os.path.dirname(target))
        try:
            shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=link_or_copy,
                            ignore=shutil.ignore_patterns(LOCK_NAME, "." + "*" + TEMP_SUFFIX))
            os.chmod(tmp, 0o777 & ~current_umask())
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def pin_budget(self) -> None:
        if not self.check_budget():
            atomic_write_json({"preset": self.budget.name, "budget": self.fingerprint,
                               "dataset": self.dataset_name}, self.layout.budget_file)

    # -------------------------------------------------------------------- steps
    def pretrain(self, job: PretrainJob) -> None:
        args = ["nnunet_cl", "pretrain", "-d", self.dataset_id, "-m", job.method, "-p", self.args.plans,
                *self.budget.pretrain_args(), *job.cli_args()]
        if pretrain_resumable(self.layout, job):
            args.append("--c")
        self.children.execute(args, job.log_name, f"pre-training {job.label}")

    def finetune(self, run: FinetuneRun) -> None:
        args = ["nnUNetv2_train", self.dataset_id, CONFIGURATION, run.fold, "-tr", run.trainer, "-p", self.args.plans,
                "-device", self.budget.device]
        if training_resumable(self.layout, run):
            args.append("--c")
        self.children.execute(args, run.log_name, f"fine-tuning {run.label}",
                              total_epochs=self.budget.finetune_epochs or NNUNET_EPOCHS)

    # -------------------------------------------------------------------- main loop
    def run(self) -> None:
        # Every input is checked before OUTPUT (or anything in it) is created; one benchmark per OUTPUT.
        dataset = BenchmarkDataset(self.args, self.budget, self.children)
        dataset.resolve()
        self.dataset_id = dataset.dataset_id
        self.place(dataset.output, dataset.dataset_name, self.args.plans)
        families = discover_families()
        runs, missing = plan_runs(families, self.args.methods or self.budget.methods,
                                  self.args.fractions or self.budget.fractions or DEFAULT_FRACTIONS,
                                  self.budget.folds,
                                  self.budget.upper_bound if self.args.upper_bound is None else self.args.upper_bound)
        dataset.check_inputs()
        self.with_test = dataset.test_cases is not None
        self.check_budget()
        self.source_layout = self.check_pretrained_from()
        if self.args.list:
            self.print_plan(families, runs, missing)
            return
        if self.args.report_only:
            self.report_only(dataset, runs)
            return
        try:
            with FolderLock(self.output, "nnunet_cl benchmark"):
                self.run_locked(dataset, runs, missing)
        except (KeyboardInterrupt, Terminated) as interruption:
            name = "SIGTERM" if isinstance(interruption, Terminated) else "SIGINT"
            print(f"nnunet_cl: interrupted ({name}); every finished step is kept in {self.output} (an interrupted "
                  f"pre-training or training resumes from its last checkpoint); continue with the same command: "
                  f"nnunet_cl {' '.join(shlex.quote(a) for a in sys.argv[1:])}", file=sys.stderr, flush=True)
            raise SystemExit(143 if name == "SIGTERM" else 130) from None

    def run_locked(self, dataset, runs: list, missing: list) -> None:
        self.pin_budget()
        dataset.prepare()
        self.evaluation = self.make_evaluation(dataset)
        for method, fraction in missing:
            print(f"note: {method} has no trainer for {fraction_label(fraction)} labels; that cell is left out")
        steps = self.steps(runs)
        print(f"{self.dataset_name}: {len(runs)} fine-tuning runs, {sum(s[0] == 'pretrain' for s in steps)} "
              f"pre-trainings; {self.budget.describe()}\noutput: {self.output}", flush=True)
        previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
        try:
            for index, (kind, item) in enumerate(steps, 1):
                self.do_step(index, steps, kind, item)
                if kind == "finetune":
                    self.evaluation.write_reports(runs)
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            self.children.stop()
        self.evaluation.write_reports(runs)
        if self.budget.print_summary:
            self.print_summary(runs)
        print(f"done in {timedelta(seconds=round(time.time() - self.started))}: "
              f"{self.layout.report_file('md')}, results.csv, results.png", flush=True)

    def make_evaluation(self, dataset) -> BenchmarkEvaluation:
        """Metrics and reports of this output, under the budget and levers this benchmark pinned."""
        return BenchmarkEvaluation(self.args, self.budget, self.layout, self.dataset_id, dataset.dataset_json(),
                                   self.children, dataset.test_cases, budget_fingerprint=self.fingerprint)

    def report_only(self, dataset, runs: list) -> None:
        """``--report-only``: the report of the finished runs of the selection; pending runs stay untouched."""
        if not os.path.isfile(self.layout.budget_file):
            raise NnunetClError(f"{self.output} holds no benchmark runs (it has no budget.json); check -o, or run the "
                                "benchmark without --report-only first")
        measured = [run for run in runs if os.path.isfile(self.layout.metrics_file(run, "val"))]
        if not measured:
            raise NnunetClError(f"{self.output} has no finished run of this selection (-m / --fractions / -f); "
                                "see --list")
        with FolderLock(self.output, "nnunet_cl benchmark"):
            self.make_evaluation(dataset).write_reports(runs)
        print(f"{self.layout.report_file('md')}, results.csv, results.png: {len(measured)} of {len(runs)} runs of "
              "the selection", flush=True)
        for run in runs:
            if run not in measured:
                print(f"  not in the report ({run_state(self.layout, run, self.with_test)}): {run.label} "
                      f"{run.trainer}", flush=True)

    def print_summary(self, runs: list) -> None:
        """Each run's validation DSC (mean over cases and classes, as results.md) and its folders."""
        from nnunet_cl.tools.benchmark_report import read_rows, run_scores

        print("\nvalidation DSC (the fold's validation cases, mean over cases and foreground classes):")
        for run in runs:
            (score,) = run_scores(read_rows(self.layout.metrics_file(run, "val"))).values()
            print(f"  {run.label:<20} {run.trainer:<34} DSC {100 * score['dsc']:.1f} %  {self.layout.fold_folder(run)}")
            if run.pretrain is not None:
                print(f"  {'':<24} pre-trained checkpoint: {self.layout.checkpoint(run.pretrain)}")
        print(f"  table and plot: {self.layout.report_file('md')}, results.png; logs: "
              f"{self.layout.logs}")

    def steps(self, runs: list) -> list:
        """Pre-trainings are placed right before the first run that needs them."""
        steps, seen = [], set()
        for run in runs:
            if run.pretrain is not None and run.pretrain not in seen:
                seen.add(run.pretrain)
                steps.append(("pretrain", run.pretrain))
            steps.append(("finetune", run))
        return steps

    def do_step(self, index: int, steps: list, kind: str, item) -> None:
        prefix = f"[{index}/{len(steps)}]"
        if kind == "pretrain":
            if pretrain_done(self.layout, item):
                print(f"{prefix} pre-training {item.label}: cached ({self.layout.checkpoint(item)})", flush=True)
                return
            if self.adoptable(item):
                self.adopt_pretraining(item)
                print(f"{prefix} pre-training {item.label}: taken from {self.source_layout.checkpoint(item)}",
                      flush=True)
                return
            print(f"{prefix} pre-training {item.label} | {self.timing(steps, index)}", flush=True)
            start = time.time()
            self.pretrain(item)
            self.durations["pretrain"].append(time.time() - start)
            return
        run: FinetuneRun = item
        state = run_state(self.layout, run, self.with_test)
        if state == "done":
            print(f"{prefix} {run.label}: done ({run.trainer})", flush=True)
            return
        print(f"{prefix} {run.label}: {run.trainer} ({state}) | {self.timing(steps, index)}", flush=True)
        start = time.time()
        trained_now = not training_done(self.layout, run)
        if trained_now:
            self.finetune(run)
        if not os.path.isfile(self.layout.metrics_file(run, "val")):
            self.evaluation.evaluate_validation(run)
        if self.with_test and not os.path.isfile(self.layout.metrics_file(run, "test")):
            self.evaluation.evaluate_test(run)
        if trained_now:
            self.durations["finetune"].append(time.time() - start)
        print(f"    finished in {timedelta(seconds=round(time.time() - start))}", flush=True)

    def timing(self, steps: list, index: int) -> str:
        """Elapsed time, and an ETA from the mean duration of the steps of each kind run so far."""
        elapsed = timedelta(seconds=round(time.time() - self.started))
        remaining = {"pretrain": 0, "finetune": 0}
        for kind, item in steps[index - 1:]:
            if kind == "pretrain" and not pretrain_done(self.layout, item):
                remaining["pretrain"] += 1
            elif kind == "finetune" and run_state(self.layout, item, self.with_test) != "done":
                remaining["finetune"] += 1
        if any(n and not self.durations[k] for k, n in remaining.items()):
            return f"elapsed {elapsed}, ETA after the first run of each kind"
        eta = sum(n * sum(self.durations[k]) / len(self.durations[k]) for k, n in remaining.items() if n)
        return f"elapsed {elapsed}, ETA {timedelta(seconds=round(eta))}"

    def print_plan(self, families, runs: list, missing: list) -> None:
        print(f"{self.dataset_name} -> {self.output}\n{self.budget.describe()}\nregistered: {', '.join(families.names)}")
        for method, fraction in missing:
            print(f"  (no trainer for {method} at {fraction_label(fraction)})")
        seen = set()
        for run in runs:
            if run.pretrain is not None and run.pretrain not in seen:
                seen.add(run.pretrain)
                state = ("done" if pretrain_done(self.layout, run.pretrain) else
                         f"taken from {self.source_layout.output}" if self.adoptable(run.pretrain) else "pending")
                print(f"  pretrain {run.pretrain.label:<34} {state}")
            print(f"  finetune {run.label:<34} {run_state(self.layout, run, self.with_test):<9} {run.trainer}")
