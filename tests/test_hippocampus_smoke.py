"""Smoke run of the whole chain on a few real cases of MSD Task04_Hippocampus (read from ../shared/data;
only links to the files are made in a temp folder, nothing is copied into the repo)."""

import glob
import json
import os

import pytest
import torch

from tests.conftest import HIPPOCAMPUS, NnunetEnv

pytestmark = pytest.mark.integration

NUM_TRAINING = 10
NUM_TEST = 2


def make_small_msd_task(root: str) -> str:
    """A Task04_Hippocampus folder with NUM_TRAINING labelled cases and NUM_TEST test images (symlinks)."""
    task = os.path.join(root, "Task04_Hippocampus")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(task, sub))
    meta = json.load(open(os.path.join(HIPPOCAMPUS, "dataset.json")))
    cases = sorted(os.listdir(os.path.join(HIPPOCAMPUS, "labelsTr")))
    cases = [c for c in cases if c.endswith(".nii.gz")][: NUM_TRAINING + NUM_TEST]
    for case in cases[:NUM_TRAINING]:
        for sub in ("imagesTr", "labelsTr"):
            os.symlink(os.path.join(HIPPOCAMPUS, sub, case), os.path.join(task, sub, case))
    for case in cases[NUM_TRAINING:]:
        os.symlink(os.path.join(HIPPOCAMPUS, "imagesTr", case), os.path.join(task, "imagesTs", case))
    meta["training"] = [{"image": f"./imagesTr/{c}", "label": f"./labelsTr/{c}"} for c in cases[:NUM_TRAINING]]
    meta["test"] = [f"./imagesTs/{c}" for c in cases[NUM_TRAINING:]]
    meta["numTraining"], meta["numTest"] = NUM_TRAINING, NUM_TEST
    json.dump(meta, open(os.path.join(task, "dataset.json"), "w"))
    return task


@pytest.mark.skipif(not os.path.isdir(HIPPOCAMPUS), reason="../shared/data/Task04_Hippocampus not present")
def test_hippocampus_pretrain_finetune_predict(tmp_path):
    env = NnunetEnv(str(tmp_path / "nnunet"))
    task = make_small_msd_task(str(tmp_path / "msd"))
    env.run(["nnUNetv2_convert_MSD_dataset", "-i", task, "-np", "1"], training=False)
    env.run(["nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "2d", "-np", "1"], training=False)
    plans = json.load(open(os.path.join(env.preprocessed, "Dataset004_Hippocampus", "nnUNetPlans.json")))
    assert plans["configurations"]["2d"]["architecture"]["network_class_name"].endswith("PlainConvUNet")

    env.run(["nnunet_cl", "pretrain", "-d", "4", "-m", "pcl", "--epochs", "1", "--iters-per-epoch", "2",
             "--batch-size", "8", "-device", "cpu"])
    trainer = "nnUNetTrainerPCLInit_10pct"
    env.run(["nnUNetv2_train", "4", "2d", "0", "-tr", trainer, "-device", "cpu"], **env.ext_trainer())
    fold = env.fold_folder(trainer, dataset="Dataset004_Hippocampus")
    assert len(json.load(open(os.path.join(fold, "labeled_cases.json")))["labeled_cases"]) == 1  # 10 % of 8
    # The fine-tuning started from the pre-trained encoder: two steps leave it close to the checkpoint.
    pretrained = torch.load(os.path.join(env.pretraining_folder("pcl", dataset="Dataset004_Hippocampus"),
                                         "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    finetuned = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    keys = [k for k in pretrained["network_weights"] if k.startswith("encoder.") and k.endswith("conv.weight")]
    cosine = torch.nn.functional.cosine_similarity(
        torch.cat([finetuned["network_weights"][k].flatten() for k in keys]),
        torch.cat([pretrained["network_weights"][k].flatten() for k in keys]), dim=0)
    assert float(cosine) > 0.95
    # nnU-Net's validation covers exactly the fold's validation cases, each with both hippocampus labels.
    summary = json.load(open(os.path.join(fold, "validation", "summary.json")))
    splits = json.load(open(os.path.join(env.preprocessed, "Dataset004_Hippocampus", "splits_final.json")))
    validated = sorted(os.path.basename(c["reference_file"])[: -len(".nii.gz")] for c in summary["metric_per_case"])
    assert validated == sorted(splits[0]["val"]) and len(validated) == 2
    assert all(set(c["metrics"]) == {"1", "2"} for c in summary["metric_per_case"])

    out = tmp_path / "pred"
    env.run(["nnUNetv2_predict", "-i", os.path.join(env.raw, "Dataset004_Hippocampus", "imagesTs"), "-o", str(out),
             "-d", "4", "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta"],
            **env.ext_trainer())
    assert len(glob.glob(str(out / "*.nii.gz"))) == NUM_TEST
