"""SuperCL through the real console scripts: superpixels -> pretrain -m supercl -> nnUNetv2_train with the
generated Init trainer, and show-superpixels (PNG + leakage)."""

import glob
import json
import os

import pytest
import torch

from tests.conftest import training_log

pytestmark = pytest.mark.integration


def test_supercl_pretrain_and_finetune(synthetic_env, tmp_path):
    proc = synthetic_env.run(["nnunet_cl", "superpixels", "-d", "990", "-np", "1"])
    caches = glob.glob(os.path.join(synthetic_env.preprocessed, "Dataset990_Synth", "nnUNetPlans_2d_superpixels_*"))
    assert any(cache in proc.stdout for cache in caches)

    synthetic_env.run(["nnunet_cl", "pretrain", "-d", "990", "-m", "supercl", "--epochs", "1", "--iters-per-epoch",
                       "2", "--batch-size", "4", "-device", "cpu"])
    folder = synthetic_env.pretraining_folder("supercl")
    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["method"] == "supercl" and checkpoint["pretrained_prefixes"] == ["encoder."]
    log = open(os.path.join(folder, "pretrain_log.txt")).read()
    for term in ("ins", "intra", "inter", "ccl_components"):
        assert f" {term} " in log, term

    trainer = "nnUNetTrainerSuperCLInit_10pct"
    synthetic_env.run(["nnUNetv2_train", "990", "2d", "0", "-tr", trainer, "-device", "cpu"],
                      **synthetic_env.ext_trainer())
    fold = synthetic_env.fold_folder(trainer)
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    log = training_log(fold)
    assert "nnunet_cl: loaded" in log and "supercl" in log
    assert len(json.load(open(os.path.join(fold, "labeled_cases.json")))["labeled_cases"]) == 1

    png = tmp_path / "superpixels.png"
    proc = synthetic_env.run(["nnunet_cl", "show-superpixels", "-d", "990", "-o", str(png), "--num-slices", "4"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "superpixel leakage:" in proc.stdout and "cross a label boundary" in proc.stdout
