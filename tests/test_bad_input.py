"""Bad input: one clear line on stderr, exit code 1, no traceback, nothing half-written."""

import os
import shutil

import pytest
import torch

from nnunet_cl.checkpoint import save_checkpoint
from nnunet_cl.nnunet_context import architecture_fingerprint

pytestmark = pytest.mark.integration


def assert_one_clear_line(proc, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nnunet_cl: error: "), last
    for fragment in fragments:
        assert fragment in last, (fragment, last)


PRETRAIN = ["nnunet_cl", "pretrain", "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "2", "-device", "cpu"]


@pytest.mark.parametrize("args, fragments", [
    (["-d", "123", "-m", "pcl"], ("unknown dataset '123'", "nnUNetv2_plan_and_preprocess")),
    (["-d", "990", "-m", "nosuchmethod"], ("unknown method 'nosuchmethod'", "pcl")),
    (["-d", "990", "-m", "pcl", "-c", "3d_fullres"], ("'3d_fullres' is not supported", "-c 2d")),
    (["-d", "990", "-m", "pcl", "-o", "nosuchoption=1"], ("no option 'nosuchoption'",)),
])
def test_pretrain_bad_arguments(synthetic_env, args, fragments):
    proc = synthetic_env.run(PRETRAIN + args, check=False)
    assert_one_clear_line(proc, *fragments)
    assert not os.path.exists(os.path.join(synthetic_env.results, "Dataset990_Synth", "nnunet_cl", "nosuchmethod"
                                           "__nnUNetPlans__2d"))


def test_nnunet_variables_unset(synthetic_env):
    proc = synthetic_env.run(PRETRAIN + ["-d", "990", "-m", "pcl"], check=False, nnUNet_raw="", nnUNet_results="")
    assert_one_clear_line(proc, "nnUNet_raw", "nnUNet_results", "not set")


def test_dataset_not_planned_or_not_preprocessed_for_2d(synthetic_env):
    raw_only = os.path.join(synthetic_env.raw, "Dataset991_RawOnly")
    os.makedirs(raw_only, exist_ok=True)
    proc = synthetic_env.run(PRETRAIN + ["-d", "991", "-m", "pcl"], check=False)
    assert_one_clear_line(proc, "no plans", "nnUNetv2_plan_and_preprocess -d Dataset991_RawOnly -c 2d")

    planned_only = os.path.join(synthetic_env.preprocessed, "Dataset992_PlannedOnly")
    os.makedirs(planned_only, exist_ok=True)
    for name in ("nnUNetPlans.json", "dataset.json"):
        shutil.copy(os.path.join(synthetic_env.preprocessed, "Dataset990_Synth", name), planned_only)
    proc = synthetic_env.run(PRETRAIN + ["-d", "992", "-m", "pcl"], check=False)
    assert_one_clear_line(proc, "not preprocessed for 2d", "nnUNetv2_plan_and_preprocess")


def init_training(env, checkpoint_path):
    return env.run(["nnUNetv2_train", "990", "2d", "3", "-tr", "nnUNetTrainerSimCLRInit_10pct", "-device", "cpu"],
                   check=False, nnUNet_cl_pretrained_checkpoint=checkpoint_path, **env.ext_trainer())


def test_init_trainer_missing_checkpoint(synthetic_env, tmp_path):
    assert_one_clear_line(init_training(synthetic_env, str(tmp_path / "missing.pth")),
                          "does not exist", "nnunet_cl pretrain -d Dataset990_Synth -m simclr")


def test_init_trainer_corrupt_checkpoint(synthetic_env, tmp_path):
    corrupt = tmp_path / "checkpoint_final.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert_one_clear_line(init_training(synthetic_env, str(corrupt)), "corrupt")


def test_init_trainer_checkpoint_of_other_architecture(synthetic_env, tmp_path):
    from tests.test_checkpoint import small_unet
    other = small_unet()
    path = str(tmp_path / "other.pth")
    save_checkpoint({"network_weights": other.state_dict(), "method": "simclr", "plans_identifier": "OtherPlans",
                     "architecture_fingerprint": architecture_fingerprint(other),
                     "pretrained_prefixes": ["encoder."]}, path)
    assert_one_clear_line(init_training(synthetic_env, path), "another architecture",
                          "nnUNetv2_move_plans_between_datasets")


def test_budget_variable_must_be_positive(synthetic_env):
    proc = synthetic_env.run(["nnUNetv2_train", "990", "2d", "0", "-tr", "nnUNetTrainerScratch_10pct", "-device",
                              "cpu"], check=False, nnUNet_cl_num_epochs="zero", **synthetic_env.ext_trainer())
    assert_one_clear_line(proc, "nnUNet_cl_num_epochs='zero'")
