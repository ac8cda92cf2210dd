"""The user path through the real console scripts, as subprocesses, on CPU:
plan_and_preprocess (fixture) -> nnunet_cl pretrain -> nnUNetv2_train -tr <Init> -> nnUNetv2_predict."""

import glob
import json
import os

import pytest
import torch

from tests.conftest import conv_cosine, training_log

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pcl_checkpoint(synthetic_env):
    synthetic_env.run(["nnunet_cl", "pretrain", "-d", "990", "-m", "pcl", "--epochs", "2", "--iters-per-epoch", "2",
                       "--batch-size", "4", "-device", "cpu"])
    return os.path.join(synthetic_env.pretraining_folder("pcl"), "checkpoint_final.pth")


def test_pretrain_writes_checkpoints_log_curves_config(synthetic_env, pcl_checkpoint):
    folder = synthetic_env.pretraining_folder("pcl")
    # README's layout, spelled out once here; every other test finds the folders through the helpers.
    assert folder == os.path.join(synthetic_env.results, "Dataset990_Synth", "nnunet_cl", "pcl__nnUNetPlans__2d")
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "progress.png", "config.json", "pretrain_log.txt"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert not glob.glob(os.path.join(folder, "*.tmp"))
    checkpoint = torch.load(pcl_checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint["method"] == "pcl" and checkpoint["pretrained_prefixes"] == ["encoder."]
    assert checkpoint["current_epoch"] == 2 and checkpoint["iteration"] == 4
    assert any(k.startswith("decoder.seg_layers") for k in checkpoint["network_weights"])  # complete U-Net
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["method"] == "pcl" and config["batch_size"] == 4 and config["options"]["position_threshold"] == 0.1
    log = open(os.path.join(folder, "pretrain_log.txt")).read()
    assert "epoch 1/2" in log and "epoch 2/2" in log


def test_finetune_from_pretrained_encoder_then_predict(synthetic_env, pcl_checkpoint, tmp_path):
    trainer = "nnUNetTrainerPCLInit_25pct"
    synthetic_env.run(["nnUNetv2_train", "990", "2d", "0", "-tr", trainer, "-device", "cpu"],
                      **synthetic_env.ext_trainer())
    folder = synthetic_env.fold_folder(trainer)
    log = training_log(folder)
    assert "nnunet_cl: loaded" in log and "['encoder.']" in log
    assert "without test-time mirroring" not in log     # nnU-Net's default validation
    subset = json.load(open(os.path.join(folder, "labeled_cases.json")))
    assert subset["label_fraction"] == 0.25 and len(subset["labeled_cases"]) == 2  # round(0.25 * 8)
    assert not set(subset["labeled_cases"]) & set(subset["unlabeled_cases"])

    pretrained = torch.load(pcl_checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    finetuned = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                           weights_only=False)["network_weights"]
    # Two fine-tuning steps move the weights only slightly: the encoder must still be the pre-trained one.
    assert conv_cosine(finetuned, pretrained, "encoder.") > 0.95

    output = tmp_path / "pred"
    synthetic_env.run(["nnUNetv2_predict", "-i", os.path.join(synthetic_env.raw, "Dataset990_Synth", "imagesTs"),
                       "-o", str(output), "-d", "990", "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu",
                       "--disable_tta"], **synthetic_env.ext_trainer())
    assert len(glob.glob(str(output / "*.nii.gz"))) == 2


def test_scratch_baseline_does_not_start_from_the_pretrained_encoder(synthetic_env, pcl_checkpoint):
    trainer = "nnUNetTrainerScratch_25pct"
    synthetic_env.run(["nnUNetv2_train", "990", "2d", "0", "-tr", trainer, "-device", "cpu"],
                      nnUNet_cl_val_mirroring="0", **synthetic_env.ext_trainer())
    folder = synthetic_env.fold_folder(trainer)
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    finetuned = final["network_weights"]
    # nnUNet_cl_val_mirroring=0: the final validation ran unmirrored, the checkpoint keeps the mirror axes
    # for nnUNetv2_predict.
    log = training_log(folder)
    assert "Final validation without test-time mirroring" in log
    assert final["inference_allowed_mirroring_axes"] is not None
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))
    pretrained = torch.load(pcl_checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    assert abs(conv_cosine(finetuned, pretrained, "encoder.")) < 0.5
    # Same fold and fraction -> the same labelled subset as the Init trainer.
    init_subset = json.load(open(os.path.join(synthetic_env.fold_folder("nnUNetTrainerPCLInit_25pct"),
                                              "labeled_cases.json")))
    assert json.load(open(os.path.join(folder, "labeled_cases.json")))["labeled_cases"] == init_subset["labeled_cases"]


def test_stock_pretrained_weights_flag_accepts_our_checkpoint(synthetic_env, pcl_checkpoint):
    trainer = "nnUNetTrainerScratch_10pct"
    synthetic_env.run(["nnUNetv2_train", "990", "2d", "1", "-tr", trainer, "-device", "cpu", "-pretrained_weights",
                       pcl_checkpoint], **synthetic_env.ext_trainer())
    pretrained = torch.load(pcl_checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    finetuned = torch.load(os.path.join(synthetic_env.fold_folder(trainer, fold=1), "checkpoint_final.pth"),
                           map_location="cpu", weights_only=False)["network_weights"]
    # nnU-Net's loader copies every weight but the segmentation layers; two fine-tuning steps move them only
    # slightly (an unloaded network is near 0, see the scratch test above).
    assert conv_cosine(finetuned, pretrained, "encoder.") > 0.95
    assert conv_cosine(finetuned, pretrained, "decoder.stages.") > 0.95


def test_resume_continues_from_saved_epoch(synthetic_env):
    common = ["nnunet_cl", "pretrain", "-d", "990", "-m", "simclr", "--iters-per-epoch", "2", "--batch-size", "4",
              "-device", "cpu"]
    synthetic_env.run(common + ["--epochs", "2"])
    proc = synthetic_env.run(common + ["--epochs", "3", "--c"])
    assert "resumed from" in proc.stdout and "at epoch 2, iteration 4" in proc.stdout
    checkpoint = torch.load(os.path.join(synthetic_env.pretraining_folder("simclr"), "checkpoint_final.pth"),
                            map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 3 and checkpoint["logging"]["epoch"] == [1, 2, 3]
    assert checkpoint["optimizer_state"]["state"]  # momentum buffers were saved and restored
