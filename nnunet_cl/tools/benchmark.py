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

Every run's results live in ``OUTPUT/nnUNet_results`` (never in your own ``$nnUNet_results``), and
``OUTPUT/budget.json`` pins the budget: an output folder never mixes runs of different budgets.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

from nnunet_cl.atomic import atomic_write_json
from nnunet_cl.console_scripts import console_script
from nnunet_cl.errors import NnunetClError, Terminated, raise_terminated
from nnunet_cl.folder_lock import FolderLock
from nnunet_cl.splits import check_fold_exists, parse_fold
from nnunet_cl.tools.benchmark_plan import (BUDGET_FLAGS, DEFAULT_FRACTIONS, PRESETS, Budget, BenchmarkLayout,
                                            FinetuneRun, PretrainJob, discover_families, fraction_label, make_budget,
                                            plan_runs, pretrain_done, pretrain_resumable, run_state, training_done,
                                            training_resumable)
from nnunet_cl.validation import positive_int

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed")
# Lines of the children's output echoed to the console (everything goes to the run's log file).
CONSOLE_LINE = re.compile(r"(: Epoch \d+\s*$|Pseudo dice|: epoch \d+/\d+ |[Ee]rror|Traceback|pre-trained checkpoint:)")


# ---------------------------------------------------------------------------------------------- CLI
def add_benchmark_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="pre-train, fine-tune and evaluate every registered method on one dataset",
        description="Quality benchmark: DSC / JC / HD95 / ASD per method x label fraction x fold.")
    p.add_argument("-d", "--dataset", required=True,
                   help="MSD task folder (TaskXX_Name, converted if needed) or nnU-Net dataset id / name")
    p.add_argument("-m", "--methods", nargs="+", default=None,
                   help="benchmark methods (default: every registered one; see --list)")
    p.add_argument("--fractions", nargs="+", type=float, default=list(DEFAULT_FRACTIONS),
                   help="label fractions (default 0.1 0.25; scratch also runs at 1.0 as the upper bound)")
    p.add_argument("--no-upper-bound", dest="upper_bound", action="store_false",
                   help="do not add scratch at 100 %% labels")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds (default: the preset's)")
    p.add_argument("--preset", default="cpu", metavar="|".join(PRESETS), help="budget preset (default cpu)")
    p.add_argument("-o", "--output", default=None,
                   help="benchmark folder (default ./nnunet_cl_benchmark/<Dataset>_<preset>)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--test-images", default=None, help="separate test images (nnU-Net naming CASE_0000.nii.gz)")
    p.add_argument("--test-labels", default=None, help="their reference segmentations (CASE.nii.gz)")
    p.add_argument("-np", dest="processes", type=int, default=2,
                   help="processes for conversion, preprocessing and nnU-Net's export (default 2)")
    p.add_argument("--list", action="store_true", help="print the runs and their state, run nothing")
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
    def __init__(self, args, budget: Budget):
        self.args = args
        self.budget = budget
        self.started = time.time()
        self.durations: dict = {"pretrain": [], "finetune": []}
        self.current = None

    # -------------------------------------------------------------------- environment
    def output_folder(self) -> str:
        return os.path.abspath(self.args.output or os.path.join(os.getcwd(), "nnunet_cl_benchmark",
                                                                f"{self.dataset_name}_{self.budget.name}"))

    def resolve_paths(self) -> None:
        """OUTPUT, and nnUNet_raw / nnUNet_preprocessed from the environment, else below OUTPUT (nothing is
        created yet)."""
        self.output = self.output_folder()
        if os.path.exists(self.output) and not os.path.isdir(self.output):
            raise NnunetClError(f"--output {self.output} is a file, not a folder; choose another --output")
        self.default_data_paths(self.output)

    def setup_environment(self) -> None:
        """OUTPUT/nnUNet_results for every run, and the data folders."""
        # This process resolves names through nnU-Net, which reads the variables lazily: set them here too.
        os.environ["nnUNet_results"] = os.path.join(self.output, "nnUNet_results")
        for variable in NNUNET_PATH_VARIABLES + ("nnUNet_results",):
            os.makedirs(os.environ[variable], exist_ok=True)

    @staticmethod
    def default_data_paths(output: str) -> None:
        for variable in NNUNET_PATH_VARIABLES:
            if not os.environ.get(variable):
                os.environ[variable] = os.path.join(os.path.abspath(output), variable)

    def resolve_dataset_id(self, spec: str) -> str:
        if not all(os.environ.get(v) for v in NNUNET_PATH_VARIABLES):
            if self.args.output is None:
                raise NnunetClError(f"dataset {spec!r} is an nnU-Net id, but nnUNet_raw / nnUNet_preprocessed are not "
                                    "set; export them (as for nnU-Net) or give the MSD task folder instead")
            self.default_data_paths(self.args.output)
        from nnunet_cl.nnunet_context import resolve_dataset_name
        return resolve_dataset_name(spec)

    def child_env(self, training: bool) -> dict:
        env = dict(os.environ)
        env["nnUNet_def_n_proc"] = str(self.args.processes)
        if training:
            from nnunet_cl.ext_trainer import ext_trainer_value
            if self.budget.device == "cpu":
                env["nnUNet_n_proc_DA"] = "0"  # on few cores, augmentation workers only compete with torch
            env["nnUNet_extTrainer"] = ext_trainer_value()
            env.pop("nnUNet_cl_plot_every", None)
            for variable, value in self.budget.finetune_env().items():
                if value is None:
                    env.pop(variable, None)
                else:
                    env[variable] = str(value)
            if not self.budget.test_time_augmentation:
                env["nnUNet_cl_val_mirroring"] = "0"   # the final validation, as --disable_tta for test images
            else:
                env.pop("nnUNet_cl_val_mirroring", None)
            if self.budget.finetune_epochs is not None:
                # Short runs: a checkpoint_latest.pth every ~1/8 of the run, so a killed run resumes (--c).
                env["nnUNet_cl_save_every"] = str(max(1, self.budget.finetune_epochs // 8))
                env["nnUNet_cl_plot_every"] = env["nnUNet_cl_save_every"]     # progress.png, same rhythm
        else:
            env.pop("nnUNet_n_proc_DA", None)   # 0 breaks nnU-Net's planner (torch.set_num_threads(0))
        return env

    def check_budget(self) -> bool:
        """True when OUTPUT/budget.json pins this budget already; an error when it pins another one."""
        path = os.path.join(self.output, "budget.json")
        if not os.path.isfile(path):
            return False
        fingerprint = self.budget.fingerprint()
        with open(path) as f:
            pinned = json.load(f)
        if pinned.get("budget") != fingerprint:
            changed = sorted(k for k in fingerprint if pinned.get("budget", {}).get(k) != fingerprint[k])
            raise NnunetClError(f"{self.output} holds runs made with another budget (differs in: {', '.join(changed)}); "
                                "use another --output, or the same preset and overrides as before")
        return True

    def pin_budget(self) -> None:
        if not self.check_budget():
            atomic_write_json({"preset": self.budget.name, "budget": self.budget.fingerprint(),
                               "dataset": self.dataset_name}, os.path.join(self.output, "budget.json"))

    # -------------------------------------------------------------------- dataset
    def resolve_dataset(self) -> None:
        spec = self.args.dataset
        if os.path.isdir(spec):
            self.dataset_id, self.dataset_name = msd_dataset_name(spec)
        else:
            self.dataset_name = self.resolve_dataset_id(spec)
            self.dataset_id = int(self.dataset_name[7:10])

    def check_inputs(self) -> None:
        """Folds against the split, the test folder, the plans and the pinned budget: before OUTPUT exists."""
        preprocessed = os.environ["nnUNet_preprocessed"]
        for fold in self.budget.folds:
            check_fold_exists(os.path.join(preprocessed, self.dataset_name), fold)
        self.with_test = self.args.test_images is not None
        if self.with_test:
            self.test_cases = check_test_folder(self.args.test_images, self.args.test_labels,
                                                self.file_ending(self.args.dataset))
        if self.args.plans != "nnUNetPlans" and not os.path.isfile(
                os.path.join(preprocessed, self.dataset_name, self.args.plans + ".json")):
            raise NnunetClError(f"{self.dataset_name} has no plans {self.args.plans!r}; create them first (e.g. "
                                f"nnUNetv2_plan_and_preprocess -d {self.dataset_id} -c 2d -pl <planner>) or drop -p")
        self.check_budget()

    def prepare_dataset(self) -> None:
        spec = self.args.dataset
        self.setup_environment()
        raw = os.path.join(os.environ["nnUNet_raw"], self.dataset_name)
        if os.path.isdir(spec) and not os.path.isfile(os.path.join(raw, "dataset.json")):
            if os.path.isdir(raw):
                import shutil
                print(f"removing the incomplete conversion {raw} (it has no dataset.json)", flush=True)
                shutil.rmtree(raw)
            self.execute(["nnUNetv2_convert_MSD_dataset", "-i", os.path.abspath(spec), "-np", self.args.processes],
                         "convert", "convert the MSD task", training=False)
        state = preprocessing_state(os.environ["nnUNet_raw"], os.environ["nnUNet_preprocessed"], self.dataset_name,
                                    self.args.plans)
        if state == "plan":
            self.execute(["nnUNetv2_plan_and_preprocess", "-d", self.dataset_id, "-c", "2d", "-np",
                          self.args.processes], "preprocess", "plan and preprocess (2d)", training=False)
        elif state == "preprocess":
            self.execute(["nnUNetv2_preprocess", "-d", self.dataset_id, "-c", "2d", "-plans_name", self.args.plans,
                          "-np", self.args.processes], "preprocess", "preprocess (2d)", training=False)

    def file_ending(self, spec: str) -> str:
        if os.path.isdir(spec):
            return ".nii.gz"                    # what nnUNetv2_convert_MSD_dataset writes
        for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
            path = os.path.join(os.environ[variable], self.dataset_name, "dataset.json")
            if os.path.isfile(path):
                with open(path) as f:
                    return json.load(f)["file_ending"]
        raise NnunetClError(f"{self.dataset_name} has no dataset.json in nnUNet_raw or nnUNet_preprocessed; "
                            "convert the dataset first (or give its MSD task folder)")

    # -------------------------------------------------------------------- subprocesses
    def execute(self, args: list, log_name: str, what: str, training: bool = True, total_epochs=None) -> None:
        command = [console_script(args[0])] + [str(a) for a in args[1:]]
        log = BenchmarkLayout(self.output, "").log_file(log_name)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        print(f"    $ {' '.join(shlex.quote(c) for c in [args[0]] + command[1:])}\n    log: {log}", flush=True)
        start = time.time()
        with open(log, "a", buffering=1) as log_file:   # line-buffered: the log is readable live
            log_file.write(f"\n===== {datetime.now():%Y-%m-%d %H:%M:%S} {' '.join(command)}\n")
            log_file.flush()
            # Own process group: on Ctrl-C / SIGTERM the whole child tree (nnU-Net's pools) is stopped.
            proc = subprocess.Popen(command, env=self.child_env(training), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
            self.current = proc
            try:
                for line in proc.stdout:
                    log_file.write(line)
                    if self.args.verbose or CONSOLE_LINE.search(line):
                        print("      " + progress_line(line.rstrip(), total_epochs, start), flush=True)
                code = proc.wait()
            finally:
                self.stop_child()
        if code != 0:
            tail = open(log).read().splitlines()[-25:]
            print("\n".join("      | " + t for t in tail), file=sys.stderr)
            raise NnunetClError(f"{what} failed ({args[0]} exited with code {code}); see {log}. Fix the cause and "
                                "rerun the same command: finished steps are skipped")

    def stop_child(self) -> None:
        proc, self.current = self.current, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -------------------------------------------------------------------- steps
    def pretrain(self, job: PretrainJob) -> None:
        args = ["nnunet_cl", "pretrain", "-d", self.dataset_id, "-m", job.method, "-p", self.args.plans,
                *self.budget.pretrain_args(), *job.cli_args()]
        if pretrain_resumable(self.layout, job):
            args.append("--c")
        self.execute(args, f"pretrain_{job.folder}", f"pre-training {job.label}")

    def finetune(self, run: FinetuneRun) -> None:
        args = ["nnUNetv2_train", self.dataset_id, "2d", run.fold, "-tr", run.trainer, "-p", self.args.plans,
                "-device", self.budget.device]
        if training_resumable(self.layout, run):
            args.append("--c")
        self.execute(args, f"{run.trainer}_fold{run.fold}", f"fine-tuning {run.label}",
                     total_epochs=self.budget.finetune_epochs or 1000)

    def evaluate_validation(self, run: FinetuneRun) -> None:
        folder = os.path.join(self.layout.fold_folder(run), "validation")
        reference = os.path.join(os.environ["nnUNet_preprocessed"], self.dataset_name, "gt_segmentations")
        ending = self.dataset_json["file_ending"]
        with open(os.path.join(folder, "summary.json")) as f:
            expected = len(json.load(f)["metric_per_case"])
        predictions = sorted(glob.glob(os.path.join(folder, "*" + ending)))
        if len(predictions) != expected:
            raise NnunetClError(f"{folder} has {len(predictions)} predictions but its summary.json {expected} cases; "
                                f"delete {folder} and rerun to redo the validation")
        self.write_metrics(run, "val", predictions, reference, ending)

    def evaluate_test(self, run: FinetuneRun) -> None:
        out = self.layout.test_predictions(run)
        args = ["nnUNetv2_predict", "-i", os.path.abspath(self.args.test_images), "-o", out, "-d", self.dataset_id,
                "-c", "2d", "-f", run.fold, "-tr", run.trainer, "-p", self.args.plans, "-device", self.budget.device,
                "--continue_prediction", "-npp", self.args.processes, "-nps", self.args.processes]
        if not self.budget.test_time_augmentation:
            args.append("--disable_tta")
        self.execute(args, f"{run.trainer}_fold{run.fold}_predict_test", f"test prediction {run.label}")
        ending = self.dataset_json["file_ending"]
        predictions = [os.path.join(out, case + ending) for case in self.test_cases]
        missing = [p for p in predictions if not os.path.isfile(p)]
        if missing:
            raise NnunetClError(f"nnUNetv2_predict left {len(missing)} test cases unpredicted (e.g. {missing[0]}); rerun")
        self.write_metrics(run, "test", predictions, os.path.abspath(self.args.test_labels), ending)

    def write_metrics(self, run: FinetuneRun, split: str, predictions: list, reference_folder: str, ending: str):
        from nnunet_cl.tools.benchmark_report import write_rows
        from nnunet_cl.tools.metrics import evaluate_case_files

        rows = []
        for prediction in predictions:
            case = os.path.basename(prediction)[: -len(ending)]
            reference = os.path.join(reference_folder, case + ending)
            if not os.path.isfile(reference):
                raise NnunetClError(f"no reference segmentation {reference} for the prediction {prediction}")
            for row in evaluate_case_files(reference, prediction, self.dataset_json):
                rows.append(dict(row, dataset=self.dataset_name, method=run.method, trainer=run.trainer,
                                 fraction=run.fraction, fold=run.fold, split=split, case=case))
        write_rows(rows, self.layout.metrics_file(run, split))

    # -------------------------------------------------------------------- reports
    def write_reports(self, runs: list) -> None:
        from nnunet_cl.tools.benchmark_report import markdown, plot_dsc, read_rows, write_rows, write_text

        rows = []
        for run in runs:
            for split in ("val", "test"):
                path = self.layout.metrics_file(run, split)
                if os.path.isfile(path):
                    rows += read_rows(path)
        if not rows:
            return
        write_rows(rows, os.path.join(self.output, "results.csv"))
        write_text(markdown(rows, self.report_header(runs)), os.path.join(self.output, "results.md"))
        plot_dsc(rows, os.path.join(self.output, "results.png"),
                 f"{self.dataset_name}, {self.budget.name} budget, folds "
                 f"{','.join(str(f) for f in self.budget.folds)}")

    def report_header(self, runs: list) -> list:
        import torch
        finished = sum(run_state(self.layout, r, self.with_test) == "done" for r in runs)
        return [f"## {self.dataset_name}: nnunet_cl benchmark ({self.budget.name} preset)", "",
                f"- command: `nnunet_cl {' '.join(shlex.quote(a) for a in sys.argv[1:])}`",
                f"- date: {datetime.now():%Y-%m-%d %H:%M} (this report); runs finished: {finished}/{len(runs)}",
                f"- machine: {machine_description()}; torch {torch.__version__}",
                f"- budget: {self.budget.describe()}",
                f"- validation: nnU-Net's 5-fold split (splits_final.json), folds "
                f"{', '.join(str(f) for f in self.budget.folds)}; labelled subsets as the _10pct/_25pct trainers"]

    # -------------------------------------------------------------------- main loop
    def run(self) -> None:
        # Every input is checked before OUTPUT (or anything in it) is created; one benchmark per OUTPUT.
        self.resolve_dataset()
        self.resolve_paths()
        self.layout = BenchmarkLayout(self.output, self.dataset_name, self.args.plans)
        families = discover_families()
        runs, missing = plan_runs(families, self.args.methods, self.args.fractions, self.budget.folds,
                                  self.args.upper_bound)
        self.check_inputs()
        if self.args.list:
            self.print_plan(families, runs, missing)
            return
        try:
            with FolderLock(self.output, "nnunet_cl benchmark"):
                self.run_locked(runs, missing)
        except (KeyboardInterrupt, Terminated) as interruption:
            name = "SIGTERM" if isinstance(interruption, Terminated) else "SIGINT"
            print(f"nnunet_cl: interrupted ({name}); every finished step is kept in {self.output} (an interrupted "
                  f"pre-training or training resumes from its last checkpoint); continue with the same command: "
                  f"nnunet_cl {' '.join(shlex.quote(a) for a in sys.argv[1:])}", file=sys.stderr, flush=True)
            raise SystemExit(143 if name == "SIGTERM" else 130) from None

    def run_locked(self, runs: list, missing: list) -> None:
        self.pin_budget()
        self.prepare_dataset()
        with open(os.path.join(os.environ["nnUNet_preprocessed"], self.dataset_name, "dataset.json")) as f:
            self.dataset_json = json.load(f)
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
                    self.write_reports(runs)
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            self.stop_child()
        self.write_reports(runs)
        print(f"done in {timedelta(seconds=round(time.time() - self.started))}: "
              f"{os.path.join(self.output, 'results.md')}, results.csv, results.png", flush=True)

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
            self.evaluate_validation(run)
        if self.with_test and not os.path.isfile(self.layout.metrics_file(run, "test")):
            self.evaluate_test(run)
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
                state = "done" if pretrain_done(self.layout, run.pretrain) else "pending"
                print(f"  pretrain {run.pretrain.label:<34} {state}")
            print(f"  finetune {run.label:<34} {run_state(self.layout, run, self.with_test):<9} {run.trainer}")


# ---------------------------------------------------------------------------------------------- helpers
def msd_dataset_name(folder: str) -> tuple:
    """``.../Task04_Hippocampus`` -> (4, "Dataset004_Hippocampus"), as nnUNetv2_convert_MSD_dataset names it."""
    name = os.path.basename(os.path.normpath(folder))
    match = re.fullmatch(r"Task(\d+)_(.+)", name)
    if match is None or not os.path.isfile(os.path.join(folder, "dataset.json")):
        raise NnunetClError(f"{folder} is not an MSD task folder (TaskXX_Name with dataset.json, imagesTr, labelsTr); "
                            "give such a folder or an nnU-Net dataset id")
    return int(match.group(1)), f"Dataset{int(match.group(1)):03d}_{match.group(2)}"


def preprocessing_state(raw: str, preprocessed: str, dataset_name: str, plans: str) -> str:
    """``plan`` (no plans yet), ``preprocess`` (2d data missing or incomplete) or ``ready``."""
    folder = os.path.join(preprocessed, dataset_name)
    plans_file = os.path.join(folder, plans + ".json")
    if not os.path.isfile(plans_file):
        return "plan"
    with open(plans_file) as f:
        data_identifier = json.load(f)["configurations"]["2d"]["data_identifier"]
    data = os.path.join(folder, data_identifier)
    n_done = len(glob.glob(os.path.join(data, "*.pkl")))
    raw_json = os.path.join(raw, dataset_name, "dataset.json")
    expected = None
    if os.path.isfile(raw_json):
        with open(raw_json) as f:
            expected = json.load(f).get("numTraining")
    gt = len(os.listdir(os.path.join(folder, "gt_segmentations"))) if os.path.isdir(
        os.path.join(folder, "gt_segmentations")) else 0
    if n_done == 0 or (expected is not None and (n_done < expected or gt < expected)):
        return "preprocess"
    return "ready"


def check_test_folder(images: str, labels: str, ending: str) -> list:
    """Case ids of the test folder; every image (CASE_0000<ending>) needs its label (CASE<ending>)."""
    for flag, folder in (("--test-images", images), ("--test-labels", labels)):
        if not os.path.isdir(folder):
            raise NnunetClError(f"{flag} {folder} is not a folder; give the folder of the test cases")
    cases = sorted({os.path.basename(p)[: -len("_0000" + ending)]
                    for p in glob.glob(os.path.join(images, "*_0000" + ending))})
    if not cases:
        raise NnunetClError(f"{images} holds no images named CASE_0000{ending}; use nnU-Net's naming")
    missing = [c for c in cases if not os.path.isfile(os.path.join(labels, c + ending))]
    if missing:
        raise NnunetClError(f"{len(missing)} test images have no label in {labels} (e.g. {missing[0]}{ending}); "
                            "give every image its label")
    label_cases = {os.path.basename(p)[: -len(ending)] for p in glob.glob(os.path.join(labels, "*" + ending))}
    orphans = sorted(label_cases - set(cases))
    if orphans:
        raise NnunetClError(f"{len(orphans)} labels in {labels} have no test image in {images} (e.g. {orphans[0]}"
                            f"{ending} without {orphans[0]}_0000{ending}); give both folders the same cases")
    return cases


def progress_line(line: str, total_epochs, start: float) -> str:
    """nnU-Net's "<time>: Epoch 3" -> "epoch 4/20 (0:01:10)"; other lines without their timestamp."""
    match = re.search(r": Epoch (\d+)\s*$", line)
    if match:
        return f"epoch {int(match.group(1)) + 1}/{total_epochs or '?'} ({timedelta(seconds=round(time.time() - start))})"
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?: ", "", line)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} at report time"
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs{load}"
