"""Each fine-tuning schedule through the real ``nnUNetv2_train`` (tiny budget, CPU): the lr nnU-Net logged per
epoch, the optimiser in the final checkpoint and the trainer's log lines."""

from __future__ import annotations

import math
import os

import pytest
import torch

from tests.conftest import training_log

pytestmark = pytest.mark.integration

EPOCHS = 4


def poly(peak, step, length):
    return peak * (1 - step / length) ** 0.9


def adam_cosine(epoch):
    return 5e-6 + (5e-4 - 5e-6) * (1 + math.cos(math.pi * epoch / EPOCHS)) / 2


# With 4 epochs every phase of warmup / decoder_first is one epoch long (5 % and 2.5 % of 4, at least 1).
RUNS = [
    ("nnUNetTrainerSuperCLInit_10pct", "stock", {}, [poly(1e-2, e, 4) for e in range(4)], "SGD"),
    ("nnUNetTrainerSuperCLInit_10pct", "warmup", {"nnUNet_cl_weight_norm_reset": "1"},
     [1e-3] + [poly(1e-3, e, 3) for e in range(3)], "SGD"),
    ("nnUNetTrainerSuperCLInit_10pct", "decoder_first", {}, [1e-3, 1e-3, 1e-3, 1e-3], "SGD"),
    ("nnUNetTrainerSuperCLInit_10pct", "adam", {}, [adam_cosine(e) for e in range(4)], "Adam"),
    ("nnUNetTrainerScratch_10pct", "warmup", {}, [1e-2] + [poly(1e-2, e, 3) for e in range(3)], "SGD"),
]


@pytest.fixture(scope="module")
def supercl_checkpoint(synthetic_context, tmp_path_factory):
    """A checkpoint in nnunet-cl's format for the synthetic plans, labelled supercl (the schedules do not depend
    on how the encoder was trained; the pipeline tests cover real pre-training)."""
    from nnunet_cl.checkpoint import save_checkpoint
    from nnunet_cl.nnunet_context import architecture_fingerprint
    torch.manual_seed(7)
    network = synthetic_context.build_network()
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.startswith("encoder.") and parameter.ndim > 1:
                parameter.mul_(1.5)      # a grown norm, for the weight-norm reset
    path = str(tmp_path_factory.mktemp("supercl") / "checkpoint_final.pth")
    save_checkpoint({"network_weights": network.state_dict(), "method": "supercl", "plans_identifier": "nnUNetPlans",
                     "architecture_fingerprint": architecture_fingerprint(network),
                     "pretrained_prefixes": ["encoder."]}, path)
    return path


@pytest.mark.parametrize("trainer, schedule, extra, expected_lrs, optimiser", RUNS,
                         ids=[f"{t.replace('nnUNetTrainer', '')}-{s}" for t, s, *_ in RUNS])
def test_nnunetv2_train_with_schedule(synthetic_env, supercl_checkpoint, trainer, schedule, extra, expected_lrs,
                                      optimiser):
    fold = "0"
    synthetic_env.run(["nnUNetv2_train", "990", "2d", fold, "-tr", trainer, "-device", "cpu"],
                      **synthetic_env.ext_trainer(), nnUNet_cl_finetune_schedule=schedule,
                      nnUNet_cl_num_epochs=str(EPOCHS), nnUNet_cl_val_mirroring="0",
                      nnUNet_cl_pretrained_checkpoint=supercl_checkpoint, **extra)
    folder = synthetic_env.fold_folder(trainer, fold)
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["logging"]["lrs"] == pytest.approx(expected_lrs, rel=1e-9)
    state = next(iter(checkpoint["optimizer_state"]["state"].values()))
    assert ("exp_avg" in state) == (optimiser == "Adam") and ("momentum_buffer" in state) == (optimiser == "SGD")
    log = training_log(folder)
    assert f"fine-tuning schedule {schedule} (nnUNet_cl_finetune_schedule)" in log
    if schedule == "decoder_first":
        assert "decoder_first: decoder-only phase" in log and "['encoder.'] frozen" in log
        assert "decoder_first: whole network trains from epoch 2" in log
    if extra.get("nnUNet_cl_weight_norm_reset") == "1":
        assert "nnUNet_cl_weight_norm_reset=1: 8 loaded conv weights rescaled" in log


def test_weight_norms_script_table(synthetic_env, supercl_checkpoint):
    """scripts/weight_norms.py on a checkpoint whose encoder convs are 1.5x a fresh init: encoder rows near 1.5,
    the layers the method did not pre-train '-'."""
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "weight_norms.py")
    proc = subprocess.run([sys.executable, script, "-d", "990", "--init-samples", "4", supercl_checkpoint],
                          env=synthetic_env.env(training=False), capture_output=True, text=True, timeout=600,
                          check=True)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| `")]
    encoder = [line for line in rows if line.startswith("| `encoder.")]
    assert len(encoder) == 8 and len(rows) > len(encoder)
    for line in encoder:
        assert 1.35 < float(line.split("|")[-2]) < 1.65, line
    for line in rows:
        if not line.startswith("| `encoder."):
            assert line.split("|")[-2].strip() == "-", line
    assert "| layer | init norm | supercl |" in proc.stdout
