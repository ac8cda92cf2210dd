"""Shared fixtures: an nnU-Net environment in a temp folder and a small generated dataset, planned and
preprocessed once per session through the real ``nnUNetv2_plan_and_preprocess``."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
import torch

from nnunet_cl.console_scripts import console_script  # noqa: F401 (tests import it from here)

SYNTH_ID = 990
SYNTH_NAME = "Dataset990_Synth"
PLANS = "nnUNetPlans"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIPPOCAMPUS = os.path.abspath(os.path.join(REPO, "..", "shared", "data", "Task04_Hippocampus"))

# Tiny fine-tuning budget for every nnUNetv2_train in the tests.
TINY_BUDGET = {
    "nnUNet_cl_num_epochs": "1",
    "nnUNet_cl_num_iterations_per_epoch": "2",
    "nnUNet_cl_num_val_iterations_per_epoch": "1",
    "nnUNet_cl_batch_size": "2",
}


def training_log(folder: str) -> str:
    """The newest ``training_log_*.txt`` of a fold folder: in-process trainers of other tests (e.g. label-subset
    checks) may have left older, shorter logs there, and glob order is arbitrary."""
    return open(max(glob.glob(os.path.join(folder, "training_log_*.txt")), key=os.path.getmtime)).read()


def parameters_with_gradient(module) -> set:
    """Names of the parameters whose gradient is non-zero (all gradients must be finite). A convolution's bias
    right before an InstanceNorm is left out: the normalisation removes it, so its gradient is zero up to
    rounding."""
    names = set()
    for name, parameter in module.named_parameters():
        if parameter.grad is None:
            continue
        assert torch.isfinite(parameter.grad).all(), name
        if not name.endswith("conv.bias") and float(parameter.grad.abs().sum()) > 0:
            names.add(name)
    return names


def synthetic_pretraining_folder(results: str, method_folder: str, dataset: str = SYNTH_NAME) -> str:
    """Where ``nnunet_cl pretrain`` writes a method's checkpoints under the nnU-Net results root ``results``
    (``method_folder``: e.g. ``pcl``, ``semi_local_frac10_fold0``)."""
    from nnunet_cl.nnunet_context import pretraining_folder
    return pretraining_folder(results, dataset, method_folder, PLANS)


def conv_cosine(state_a: dict, state_b: dict, prefix: str) -> float:
    """Cosine similarity of the convolution weights (the tensors named ``*weight`` with more than one dimension,
    so not the norms') under ``prefix``, all flattened into one vector each."""
    keys = [k for k in state_a if k.startswith(prefix) and k.endswith("weight") and state_a[k].dim() > 1]
    assert keys, f"no convolution weights under {prefix!r}"
    a = torch.cat([state_a[k].flatten() for k in keys])
    b = torch.cat([state_b[k].flatten() for k in keys])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def parameters_under(module, prefixes) -> set:
    """Names of the parameters under ``prefixes``, without convolution biases (see parameters_with_gradient)."""
    return {name for name, _ in module.named_parameters()
            if name.startswith(tuple(prefixes)) and not name.endswith("conv.bias")}


class NnunetEnv:
    def __init__(self, root: str):
        self.root = root
        self.raw = os.path.join(root, "raw")
        self.preprocessed = os.path.join(root, "preprocessed")
        self.results = os.path.join(root, "results")
        for d in (self.raw, self.preprocessed, self.results):
            os.makedirs(d, exist_ok=True)

    def env(self, training: bool = True, **extra) -> dict:
        env = dict(os.environ)
        env.update(nnUNet_raw=self.raw, nnUNet_preprocessed=self.preprocessed, nnUNet_results=self.results,
                   nnUNet_def_n_proc="1", nnUNet_compile="false", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
        env.pop("nnUNet_extTrainer", None)
        if training:
            # nnUNet_n_proc_DA=0 breaks planning (torch.set_num_threads(0)): only for train / predict.
            env["nnUNet_n_proc_DA"] = "0"
            env.update(TINY_BUDGET)
        else:
            env.pop("nnUNet_n_proc_DA", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def run(self, args, training=True, check=True, timeout=1800, **extra) -> subprocess.CompletedProcess:
        args = [console_script(args[0])] + [str(a) for a in args[1:]]
        proc = subprocess.run(args, env=self.env(training, **extra), capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                                 f"STDERR:\n{proc.stderr[-4000:]}")
        return proc

    def fold_folder(self, trainer: str, fold=0, dataset: str = SYNTH_NAME) -> str:
        """Where ``nnUNetv2_train -tr <trainer>`` writes fold ``fold`` (nnU-Net's own folder naming)."""
        from nnunet_cl.nnunet_context import results_folder_name
        return os.path.join(self.results, dataset, results_folder_name(trainer, PLANS), f"fold_{fold}")

    def pretraining_folder(self, method_folder: str, dataset: str = SYNTH_NAME) -> str:
        return synthetic_pretraining_folder(self.results, method_folder, dataset)

    def ext_trainer(self) -> dict:
        from nnunet_cl.ext_trainer import ext_trainer_value
        return {"nnUNet_extTrainer": ext_trainer_value("")}


@pytest.fixture(scope="session")
def synthetic_env(tmp_path_factory) -> NnunetEnv:
    """Dataset990_Synth: 10 generated cases, planned and preprocessed for 2d."""
    from nnunet_cl.synthetic import make_synthetic_dataset

    env = NnunetEnv(str(tmp_path_factory.mktemp("nnunet_synth")))
    make_synthetic_dataset(env.raw, dataset_id=SYNTH_ID, num_cases=10)
    env.run(["nnUNetv2_plan_and_preprocess", "-d", SYNTH_ID, "-c", "2d", "-np", "1"], training=False)
    return env


@pytest.fixture(scope="session")
def synthetic_context(synthetic_env):
    """A DatasetContext of Dataset990_Synth (sets the nnU-Net variables in this process)."""
    from nnunet_cl.nnunet_context import load_dataset_context

    os.environ.update(nnUNet_raw=synthetic_env.raw, nnUNet_preprocessed=synthetic_env.preprocessed,
                      nnUNet_results=synthetic_env.results)
    return load_dataset_context(str(SYNTH_ID))


@pytest.fixture
def one_torch_thread():
    """On a loaded 2-core machine two OpenMP threads per process spin against the other processes and slow
    the tiny forward passes down by more than an order of magnitude; one thread gives the same results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child the test stops with SIGINT: SIGINT at its default disposition, as under a
    terminal. A shell that starts the test suite in the background (``cmd &``) makes every child ignore SIGINT,
    and Python then never raises KeyboardInterrupt, so such a test would wait forever."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
