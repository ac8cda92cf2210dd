"""The label-aware methods through the real console scripts (tiny budgets, CPU):
nnunet_cl pretrain -m semi_local -> nnUNetv2_train -tr nnUNetTrainerSemiLocalInit_10pct, and
nnUNetv2_train -tr nnUNetTrainerPseudoLabelCL_10pct -> resume state -> nnUNetv2_predict's loading."""

from __future__ import annotations

import copy
import glob
import json
import os

import pytest
import torch

from tests.conftest import conv_cosine, training_log

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def semi_local_checkpoint(synthetic_env):
    synthetic_env.run(["nnunet_cl", "pretrain", "-d", "990", "-m", "semi_local", "--fraction", "0.1", "--fold", "0",
                       "--epochs", "2", "--iters-per-epoch", "1", "--batch-size", "2", "-o", "stage2_batch_size=2",
                       "-device", "cpu"], OMP_NUM_THREADS=1)
    return os.path.join(synthetic_env.pretraining_folder("semi_local_frac10_fold0"), "checkpoint_final.pth")


def test_semi_local_pretraining_then_init_trainer(synthetic_env, semi_local_checkpoint):
    checkpoint = torch.load(semi_local_checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint["method"] == "semi_local"
    assert checkpoint["pretrained_prefixes"] == ["encoder.", "decoder.stages.", "decoder.transpconvs."]
    assert checkpoint["config"]["options"]["fraction"] == 0.1 and checkpoint["config"]["options"]["fold"] == "0"
    log = open(os.path.join(os.path.dirname(semi_local_checkpoint), "pretrain_log.txt")).read()
    assert "(12 slices of 1 cases)" in log                      # stage 2 reads the one labelled case (10 % of 8)
    assert "epoch 1/2 global" in log and "local nan" in log and "epoch 2/2 global nan local" in log

    trainer = "nnUNetTrainerSemiLocalInit_10pct"
    synthetic_env.run(["nnUNetv2_train", "990", "2d", "0", "-tr", trainer, "-device", "cpu"],
                      nnUNet_cl_num_threads=1, nnUNet_cl_pretrained_parts="all", **synthetic_env.ext_trainer())
    folder = synthetic_env.fold_folder(trainer)
    log = training_log(folder)
    assert "nnunet_cl: loaded" in log and "under ['encoder.', 'decoder.stages.', 'decoder.transpconvs.']" in log
    finetuned = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                           weights_only=False)["network_weights"]
    pretrained = checkpoint["network_weights"]
    for prefix in ("encoder.", "decoder.stages.", "decoder.transpconvs."):
        assert conv_cosine(finetuned, pretrained, prefix) > 0.95, prefix   # loaded, then moved by two steps
    assert conv_cosine(finetuned, pretrained, "decoder.seg_layers.") < 0.5   # fresh segmentation layers
    subset = json.load(open(os.path.join(folder, "labeled_cases.json")))
    splits = json.load(open(os.path.join(synthetic_env.preprocessed, "Dataset990_Synth", "splits_final.json")))
    from nnunet_cl.label_subsets import labeled_subset
    assert subset["labeled_cases"] == labeled_subset(splits[0]["train"], 0.1, 0)


@pytest.fixture(scope="module")
def pseudo_label_run(synthetic_env):
    trainer = "nnUNetTrainerPseudoLabelCL_10pct"
    # 2 iterations: phase 1 = 1 segmentation-only step, then pseudo-labels and 1 joint step
    synthetic_env.run(["nnUNetv2_train", "990", "2d", "0", "-tr", trainer, "-device", "cpu"],
                      nnUNet_cl_pseudo_phase1_iterations=1, nnUNet_cl_pseudo_label_every=1, nnUNet_cl_num_threads=1,
                      **synthetic_env.ext_trainer())
    return trainer, synthetic_env.fold_folder(trainer)


def test_pseudo_label_training_writes_rounds_and_a_stock_checkpoint(synthetic_env, synthetic_context,
                                                                   pseudo_label_run, monkeypatch):
    trainer, folder = pseudo_label_run
    subset = json.load(open(os.path.join(folder, "labeled_cases.json")))
    assert len(subset["labeled_cases"]) == 1 and len(subset["unlabeled_cases"]) == 7
    rounds = json.load(open(os.path.join(folder, "pseudo_labels", "rounds.json")))
    assert [r["round"] for r in rounds] == [1] and rounds[0]["iteration"] == 1
    assert rounds[0]["cases"] == subset["unlabeled_cases"]          # the unlabelled rest of the fold, nothing else
    written = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(folder, "pseudo_labels", "round_001",
                                                                              "*.npy")))
    assert written == subset["unlabeled_cases"]
    log = training_log(folder)
    assert "pseudo-labels round 1 at iteration 1: 7 unlabelled cases" in log and "contrastive_loss" in log

    checkpoint = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["pseudo_label_state"] == {"round": 1, "estimated_at": 1}
    assert checkpoint["contrastive_head"]["net.2.weight"].shape[0] == 16
    stock_keys = set(synthetic_context.build_network().state_dict())
    assert set(checkpoint["network_weights"]) == stock_keys

    # nnUNetv2_predict's own loading path (trainer lookup via nnUNet_extTrainer, strict load_state_dict), run in
    # this process to save a subprocess; the CLI itself is exercised by test_pipeline_integration.py.
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    monkeypatch.setenv("nnUNet_extTrainer", synthetic_env.ext_trainer()["nnUNet_extTrainer"])
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(folder), (0,), "checkpoint_final.pth")
    assert predictor.trainer_name == trainer
    dataset = infer_dataset_class(synthetic_context.data_folder)(synthetic_context.data_folder, ["synth_000"])
    image = torch.from_numpy(dataset.load_case("synth_000")[0][:]).float()
    assert predictor.predict_logits_from_preprocessed_data(image).shape == (3, *image.shape[1:])


def test_resume_restores_head_and_pseudo_label_round(synthetic_env, synthetic_context, pseudo_label_run, monkeypatch):
    trainer_name, folder = pseudo_label_run
    for key, value in {"nnUNet_cl_num_epochs": "2", "nnUNet_cl_num_iterations_per_epoch": "2",
                       "nnUNet_cl_batch_size": "2", "nnUNet_n_proc_DA": "0",
                       "nnUNet_cl_pseudo_phase1_iterations": "1", "nnUNet_cl_pseudo_label_every": "5"}.items():
        monkeypatch.setenv(key, value)
    from nnunet_cl import trainers
    plans = dict(copy.deepcopy(synthetic_context.plans), continue_training=True)
    trainer = getattr(trainers, trainer_name)(plans, "2d", 0, synthetic_context.dataset_json, torch.device("cpu"))
    final = os.path.join(folder, "checkpoint_final.pth")
    trainer.load_checkpoint(final)
    saved_head = torch.load(final, map_location="cpu", weights_only=False)["contrastive_head"]
    assert all(torch.equal(saved_head[k], v) for k, v in trainer.contrastive_head.state_dict().items())
    trainer.on_train_start()
    assert trainer.pseudo_round == 1 and trainer.pseudo_loader is not None   # round 1 reused from disk
    assert trainer.global_iteration == 2 and not trainer.pseudo_labels_due(2)
    outputs = trainer.train_step(next(trainer.dataloader_train))            # a joint step on the restored round
    assert float(outputs["contrastive_loss"]) > 0 and trainer.pseudo_round == 1
