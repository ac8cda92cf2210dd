"""A new method is one file: a toy method in a temporary package, registered through the public registry
(``@register``), gets its pre-training, its Init trainers, a benchmark cell and a speed row with no other edit.

The toy module is imported before the CLI runs (``run_nnunet_cl.py``), as a registry import line would do."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import SYNTH_ID

TOY_METHOD = '''
"""Toy method: two noisy copies of each slice, SimCLR's positives, a linear head on the pooled bottleneck."""
import torch

from nnunet_cl.losses import multi_positive_info_nce
from nnunet_cl.masks import same_sample_positive_mask
from nnunet_cl.pretraining.methods import register
from nnunet_cl.pretraining.methods.base import PretrainingMethod


@register
class Toy(PretrainingMethod):
    name = "toy"
    trainer_name = "Toy"
    supports_distributed = False
    default_lr = 0.01
    default_options = {"temperature": 0.5, "noise": 0.1}

    def __init__(self, network, context, options=None):
        super().__init__(network, context, options)
        self.head = torch.nn.Linear(self.encoder_channels[-1], 8)

    def make_batch(self, slices, batch_size, rng):
        images = torch.from_numpy(slices.images(slices.sample_windows(batch_size, rng)))
        noisy = [images + self.options["noise"] * torch.randn_like(images) for _ in range(2)]
        return {"views": torch.cat(noisy)}

    def compute_loss(self, network, batch):
        embeddings = self.head(network.encoder(batch["views"])[-1].mean(dim=(2, 3)))
        mask = same_sample_positive_mask(len(batch["views"]) // 2, n_views=2)
        loss = multi_positive_info_nce(embeddings, mask, temperature=self.options["temperature"])
        return loss, {"toy": float(loss.detach())}
'''

RUNNER = '''
import sys

import toy_methods.toy  # noqa: F401  (registers the toy method)
from nnunet_cl.tools.cli import main

main(sys.argv[1:])
'''

INIT_CHECK = '''
import copy, sys

import torch

import toy_methods.toy  # noqa: F401
from nnunet_cl import trainers
from nnunet_cl.nnunet_context import load_dataset_context

context = load_dataset_context(sys.argv[1])
plans = dict(copy.deepcopy(context.plans), continue_training=False)
trainer = trainers.nnUNetTrainerToyInit_10pct(plans, "2d", 0, context.dataset_json, torch.device("cpu"))
trainer.initialize()
checkpoint = torch.load(trainer.pretrained_checkpoint_path(), map_location="cpu", weights_only=False)
own = trainer.network.state_dict()
encoder = [k for k in checkpoint["network_weights"] if k.startswith("encoder.")]
assert encoder and all(torch.equal(own[k], checkpoint["network_weights"][k]) for k in encoder)
print("loaded", len(encoder), checkpoint["method"])
'''


@pytest.fixture
def toy_package(tmp_path):
    package = tmp_path / "toy_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(TOY_METHOD)
    (tmp_path / "run_nnunet_cl.py").write_text(RUNNER)
    (tmp_path / "init_check.py").write_text(INIT_CHECK)
    return tmp_path


def run(toy_package, synthetic_env, *args, script="run_nnunet_cl.py"):
    env = synthetic_env.env(training=True, PYTHONPATH=str(toy_package))
    proc = subprocess.run([sys.executable, str(toy_package / script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=1200, cwd=toy_package)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.integration
def test_a_toy_method_in_one_file_gets_pretraining_trainers_a_benchmark_cell_and_a_speed_row(toy_package,
                                                                                          synthetic_env):
    from nnunet_cl.nnunet_context import PRETRAINED_CHECKPOINT, pretraining_folder

    # pre-training
    run(toy_package, synthetic_env, "pretrain", "-d", SYNTH_ID, "-m", "toy", "--epochs", "1", "--iters-per-epoch", "2",
        "--batch-size", "4", "-device", "cpu")
    path = os.path.join(pretraining_folder(synthetic_env.results, "Dataset990_Synth", "toy", "nnUNetPlans", "2d"),
                        PRETRAINED_CHECKPOINT)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert checkpoint["method"] == "toy" and checkpoint["config"]["options"] == {"temperature": 0.5, "noise": 0.1}
    assert set(checkpoint["heads"]) == {"head.weight", "head.bias"}

    # Init trainers, listed and loading the toy checkpoint's encoder
    listed = {l.split()[0]: l for l in run(toy_package, synthetic_env, "trainers").splitlines()}
    for name in ("nnUNetTrainerToyInit", "nnUNetTrainerToyInit_10pct", "nnUNetTrainerToyInit_25pct",
                 "nnUNetTrainerPseudoLabelCLToyInit_10pct"):
        assert listed[name].split()[1] == "toy" and "nnunet_cl/toy__<plans>__2d" in listed[name], name
    assert run(toy_package, synthetic_env, str(SYNTH_ID), script="init_check.py").split()[-1] == "toy"

    # a benchmark cell
    plan = run(toy_package, synthetic_env, "benchmark", "-d", SYNTH_ID, "--preset", "tiny", "-m", "toy",
               "--fractions", "0.1", "-o", toy_package / "bench", "--list")
    cells = [l.split() for l in plan.splitlines() if l.strip().startswith(("pretrain", "finetune"))]
    assert [c[:2] for c in cells] == [["pretrain", "toy"], ["finetune", "toy"]]
    assert cells[1][-1] == "nnUNetTrainerToyInit_10pct"

    # a speed row
    run(toy_package, synthetic_env, "speed", "-d", SYNTH_ID, "-m", "toy", "--batch-size", "4", "--warmup", "1",
        "--repeats", "1", "-o", toy_package / "speed.md")
    rows = [l for l in (toy_package / "speed.md").read_text().splitlines() if l.startswith("| toy |")]
    assert len(rows) == 1
