"""scripts/learning_curve.py calibrates the cpu-plateau preset, so its children must see the benchmark's env."""

import argparse
import importlib.util
import os

from nnunet_cl.tools.benchmark_children import ChildProcesses
from nnunet_cl.tools.benchmark_plan import PRESETS

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "learning_curve.py")


def load_script():
    spec = importlib.util.spec_from_file_location("learning_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_curve_run_of_the_preset_length_gets_the_benchmark_children_environment(monkeypatch):
    monkeypatch.delenv("nnUNet_cl_num_threads", raising=False)
    preset = PRESETS["cpu-plateau"]
    args = argparse.Namespace(iters=preset.finetune_iters_per_epoch, batch=preset.finetune_batch_size,
                              val_iters=preset.finetune_val_iters_per_epoch)
    curve = load_script().budget_environment(args, "/x/nnUNet_results", preset.finetune_epochs)
    benchmark = ChildProcesses(preset, processes=2).env(training=True)
    keys = {k for k in set(curve) | set(benchmark) if k.startswith("nnUNet_")} - {"nnUNet_results",
                                                                                 "nnUNet_cl_num_threads"}
    assert {k: curve.get(k) for k in keys} == {k: benchmark.get(k) for k in keys}
    assert curve["nnUNet_results"] == "/x/nnUNet_results" and curve["nnUNet_cl_num_threads"] == "1"
    assert curve["nnUNet_cl_num_epochs"] == str(preset.finetune_epochs)
