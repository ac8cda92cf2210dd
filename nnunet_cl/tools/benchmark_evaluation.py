"""Evaluation of ``nnunet_cl benchmark``: metrics of every finished run and the reports.

Validation: our metrics on nnU-Net's validation predictions (``fold_X/validation``) against
``$nnUNet_preprocessed/<Dataset>/gt_segmentations`` -> ``OUTPUT/metrics/<trainer>/fold_X_val.csv``;
test (optional): ``nnUNetv2_predict`` on a separate folder and the same metrics against its labels;
then ``OUTPUT/results.csv``, ``results.md``, ``results.png`` from every metrics file.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shlex
import sys
from datetime import datetime

from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import CONFIGURATION
from nnunet_cl.tools.benchmark_children import ChildProcesses
from nnunet_cl.tools.benchmark_plan import (METRIC_SPLITS, Budget, BenchmarkLayout, FinetuneRun, resolved_levers,
                                            run_state)


class BenchmarkEvaluation:
    def __init__(self, args, budget: Budget, layout: BenchmarkLayout, dataset_id: int, dataset_json: dict,
                 children: ChildProcesses, test_cases=None, *, budget_fingerprint: dict):
        self.args = args
        # the fine-tuning levers as the benchmark pinned them: set in its environment, and defaults
        self.levers = resolved_levers(budget_fingerprint)
        self.levers_set = set(budget_fingerprint.get("finetune_levers", {}))
        self.budget = budget
        self.layout = layout
        self.dataset_id = dataset_id
        self.dataset_json = dataset_json
        self.children = children
        self.test_cases = test_cases

    @property
    def with_test(self) -> bool:
        return self.test_cases is not None

    def evaluate_validation(self, run: FinetuneRun) -> None:
        summary = self.layout.summary_file(run)
        folder = os.path.dirname(summary)
        reference = os.path.join(os.environ["nnUNet_preprocessed"], self.layout.dataset_name, "gt_segmentations")
        ending = self.dataset_json["file_ending"]
        with open(summary) as f:
            expected = len(json.load(f)["metric_per_case"])
        predictions = sorted(glob.glob(os.path.join(folder, "*" + ending)))
        if len(predictions) != expected:
            raise NnunetClError(f"{folder} has {len(predictions)} predictions but its summary.json {expected} cases; "
                                f"delete {folder} and rerun to redo the validation")
        self.write_metrics(run, "val", predictions, reference, ending)

    def evaluate_test(self, run: FinetuneRun) -> None:
        out = self.layout.test_predictions(run)
        args = ["nnUNetv2_predict", "-i", os.path.abspath(self.args.test_images), "-o", out, "-d", self.dataset_id,
                "-c", CONFIGURATION, "-f", run.fold, "-tr", run.trainer, "-p", self.args.plans, "-device", self.budget.device,
                "--continue_prediction", "-npp", self.args.processes, "-nps", self.args.processes]
        if not self.budget.test_time_augmentation:
            args.append("--disable_tta")
        self.children.execute(args, f"{run.log_name}_predict_test", f"test prediction {run.label}")
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
                rows.append(dict(row, dataset=self.layout.dataset_name, method=run.method, trainer=run.trainer,
                                 fraction=run.fraction, fold=run.fold, split=split, case=case))
        write_rows(rows, self.layout.metrics_file(run, split))

    def write_reports(self, runs: list) -> None:
        from nnunet_cl.tools.benchmark_report import markdown, plot_dsc, read_rows, write_rows, write_text

        rows = []
        for run in runs:
            for split in METRIC_SPLITS:
                path = self.layout.metrics_file(run, split)
                if os.path.isfile(path):
                    rows += read_rows(path)
        if not rows:
            return
        write_rows(rows, self.layout.report_file("csv"))
        write_text(markdown(rows, self.report_header(runs)), self.layout.report_file("md"))
        plot_dsc(rows, self.layout.report_file("png"),
                 f"{self.layout.dataset_name}, {self.budget.name} budget, folds "
                 f"{','.join(str(f) for f in self.budget.folds)}")

    def report_header(self, runs: list) -> list:
        import torch

        finished = sum(run_state(self.layout, r, self.with_test) == "done" for r in runs)
        return [f"## {self.layout.dataset_name}: nnunet_cl benchmark ({self.budget.name} preset)", "",
                f"- command: `nnunet_cl {' '.join(shlex.quote(a) for a in sys.argv[1:])}`",
                f"- date: {datetime.now():%Y-%m-%d %H:%M} (this report); runs finished: {finished}/{len(runs)}",
                f"- machine: {machine_description()}; torch {torch.__version__}",
                f"- budget: {self.budget.describe()}",
                f"- fine-tuning levers: {self.levers_line()}",
                f"- validation: nnU-Net's 5-fold split (splits_final.json), folds "
                f"{', '.join(str(f) for f in self.budget.folds)}; labelled subsets as the _10pct/_25pct trainers"]

    def levers_line(self) -> str:
        chosen = [f"{v}={value}" for v, value in self.levers.items() if v in self.levers_set]
        defaults = [f"{v} {value}" for v, value in self.levers.items() if v not in self.levers_set]
        return (", ".join(chosen) or "none set") + "; defaults: " + (", ".join(defaults) or "none")


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
