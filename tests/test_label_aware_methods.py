"""semi_local (Hu et al.) and the pseudo-label trainer (Chaitanya et al.), in process on Dataset990:
label subsets, options, stages, checkpoint checks, pseudo-label rounds and the segmentation loss's inputs."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.label_subsets import labeled_subset
from tests.conftest import parameters_under, parameters_with_gradient

TINY = {"nnUNet_cl_num_epochs": "1", "nnUNet_cl_num_iterations_per_epoch": "4", "nnUNet_cl_batch_size": "2",
        "nnUNet_cl_num_val_iterations_per_epoch": "1", "nnUNet_n_proc_DA": "0",
        "nnUNet_cl_pseudo_phase1_iterations": "1", "nnUNet_cl_pseudo_label_every": "2"}


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    yield


@pytest.fixture
def tiny_budget(monkeypatch, synthetic_context):
    for key, value in TINY.items():
        monkeypatch.setenv(key, value)
    return synthetic_context


def make_trainer(context, name, fold=0, continue_training=False):
    """A trainer built in this process as ``nnUNetv2_train`` builds it (it pops "continue_training")."""
    from nnunet_cl import trainers
    plans = dict(copy.deepcopy(context.plans), continue_training=continue_training)
    return getattr(trainers, name)(plans, "2d", fold, context.dataset_json, torch.device("cpu"))


def fold_train_cases(context, fold=0):
    with open(os.path.join(context.preprocessed_folder, "splits_final.json")) as f:
        return json.load(f)[fold]["train"]


def semi_local(context, **options):
    from nnunet_cl.pretraining.methods import get_method
    network = context.build_network()
    return network, get_method("semi_local")(network, context, dict({"fraction": 0.1, "fold": 0}, **options))


# ----------------------------------------------------------------------------- one labelled subset
@pytest.mark.parametrize("fraction, suffix", [(0.1, "_10pct"), (0.25, "_25pct")])
def test_every_label_aware_component_uses_the_trainers_subset(tiny_budget, fraction, suffix):
    context = tiny_budget
    _, method = semi_local(context, fraction=fraction)
    pretraining_cases = method.case_ids(context)                      # creates splits_final.json if missing
    expected = labeled_subset(fold_train_cases(context), fraction, 0)
    assert pretraining_cases == expected
    for trainer_name in (f"nnUNetTrainerScratch{suffix}", f"nnUNetTrainerPseudoLabelCL{suffix}",
                         f"nnUNetTrainerSemiLocalInit{suffix}"):
        assert sorted(make_trainer(context, trainer_name).do_split()[0]) == expected, trainer_name


def test_missing_splits_are_created_as_nnunet_does(tmp_path, synthetic_context):
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    from nnunet_cl.splits import fold_training_cases
    context = synthetic_context
    ids = sorted(f[:-len(".pkl")] for f in os.listdir(context.data_folder) if f.endswith(".pkl"))
    train = fold_training_cases(str(tmp_path), context.data_folder, 2)
    written = json.load(open(tmp_path / "splits_final.json"))
    assert written == generate_crossval_split(ids, seed=12345, n_splits=5)
    assert train == written[2]["train"]
    # a fold beyond the file: nnU-Net's seeded 80:20 split, the same as stock nnU-Net's trainer; ours refuse it
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    stock = nnUNetTrainer(dict(copy.deepcopy(context.plans), continue_training=False), "2d", 7, context.dataset_json,
                          torch.device("cpu"))
    assert sorted(fold_training_cases(context.preprocessed_folder, context.data_folder, 7)) == \
        sorted(stock.do_split()[0])
    with pytest.raises(NnunetClError, match="fold 7 does not exist"):
        make_trainer(context, "nnUNetTrainerScratch", fold=7)


# ----------------------------------------------------------------------------- semi_local method
def test_semi_local_options_folder_and_errors(synthetic_context):
    from nnunet_cl.pretraining.methods import get_method
    cls = get_method("semi_local")
    options = cls.resolve_options({"fraction": "0.25", "fold": 3})
    assert cls.folder_name(options) == "semi_local_frac25_fold3"
    assert cls.folder_name(cls.resolve_options({"fraction": 0.1, "fold": "all"})) == "semi_local_frac10_foldall"
    for bad, match in (({}, "--fraction"), ({"fraction": 0.1, "strategy": "tiles"}, "strategy"),
                       ({"fraction": 0.1, "global_method": "jcl"}, "global_method"),
                       ({"fraction": 1.5}, "outside"), ({"fraction": 0.1, "fold": "x"}, "fold"),
                       ({"fraction": 0.1, "stage1_fraction": 1.0}, "stage1_fraction")):
        with pytest.raises(NnunetClError, match=match):
            cls.resolve_options(bad)


def test_cli_rejects_fraction_for_methods_without_labels(capsys):
    from nnunet_cl.tools.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "-d", "990", "-m", "pcl", "--fraction", "0.1", "-device", "cpu"])
    assert "does not use labels" in str(exit_info.value)


def test_semi_local_stage_schedule_and_lr_restart(synthetic_context):
    from nnunet_cl.pretraining.engine import cosine_lr
    _, method = semi_local(synthetic_context)
    assert method.stage1_epochs(10) == 5 and method.stage1_epochs(2) == 1 and method.stage1_epochs(3) in (1, 2)
    method.begin_iteration(9, 4, 5)
    assert method.stage == 1
    method.begin_iteration(10, 4, 5)
    assert method.stage == 2
    assert method.lr_cycle(3, 4, 5) == (0, 10) and method.lr_cycle(12, 4, 5) == (10, 10)
    assert cosine_lr(0.1, 10 - 10, 10) == pytest.approx(0.1)   # full learning rate again at the local stage
    with pytest.raises(NnunetClError, match="--epochs >= 2"):
        method.stage1_epochs(1)
    _, local_only = semi_local(synthetic_context, stage1_fraction=0.0)
    assert local_only.stage == 2 and local_only.stage1_epochs(1) == 0 and local_only.all_slices is None


@pytest.mark.parametrize("strategy", ["stride", "block"])
def test_semi_local_stages_train_the_right_parts(synthetic_context, strategy):
    from nnunet_cl.pretraining.slices import PreprocessedSlices
    context = synthetic_context
    network, method = semi_local(context, strategy=strategy, block_size=16, stage2_batch_size=3)
    labeled = PreprocessedSlices(context.data_folder, context.patch_size, method.case_ids(context))
    rng = np.random.default_rng(0)

    method.stage = 1
    batch = method.make_batch(labeled, 4, rng)
    assert "labels" not in batch and batch["views"].shape[0] == 8
    loss, terms = method.compute_loss(network, batch)
    assert math.isfinite(terms["global"]) and math.isnan(terms["local"])

    method.stage = 2
    batch = method.make_batch(labeled, 4, rng)
    assert batch["views"].shape[0] == 6 and batch["labels"].shape == (3, *context.patch_size)
    assert set(np.unique(batch["labels"].numpy())) <= {0, 1, 2}
    while not (batch["labels"] > 0).any():      # a labelled slice with foreground
        batch = method.make_batch(labeled, 4, rng)
    network.zero_grad()
    loss, terms = method.compute_loss(network, batch)
    assert math.isnan(terms["global"]) and terms["local"] > 0
    loss.backward()
    # the local stage trains the encoder and every decoder stage up to the last one's features; not seg_layers
    assert parameters_with_gradient(network) == parameters_under(network, ["encoder.", "decoder.stages.",
                                                                             "decoder.transpconvs."])
    assert parameters_with_gradient(method.local_head) == {name for name, _ in method.local_head.named_parameters()}


def test_semi_local_init_refuses_another_fraction_or_fold(synthetic_context):
    trainer = make_trainer(synthetic_context, "nnUNetTrainerSemiLocalInit_25pct")
    assert "semi_local_frac25_fold0__nnUNetPlans__2d" in trainer.pretrained_checkpoint_path()
    ok = {"config": {"options": {"fraction": 0.25, "fold": "0"}}}
    trainer.check_checkpoint(ok, "ok.pth")
    for options in ({"fraction": 0.1, "fold": "0"}, {"fraction": 0.25, "fold": "1"}, {}):
        with pytest.raises(NnunetClError, match="fraction|fold") as error:
            trainer.check_checkpoint({"config": {"options": options}}, "other.pth")
        assert "--fraction 0.25 --fold 0" in str(error.value)
    from nnunet_cl import trainers
    published = set(trainers.__all__)     # what nnUNet_extTrainer exposes: no 100 % variants of these two
    assert {"nnUNetTrainerSemiLocalInit_10pct", "nnUNetTrainerPseudoLabelCL_25pct"} <= published
    assert not {"nnUNetTrainerSemiLocalInit", "nnUNetTrainerPseudoLabelCL"} & published


# ----------------------------------------------------------------------------- pseudo-label store
def test_round_agreement_hand_computed():
    from nnunet_cl.pseudo_labels import RoundAgreement
    agreement = RoundAgreement([1, 2])
    agreement.update(np.array([0, 1, 1, 2, 2, 0]), np.array([0, 1, 2, 2, 2, 1]))
    summary = agreement.summary()
    assert summary["voxel_agreement"] == pytest.approx(4 / 6)
    assert summary["dice_per_class"] == {"1": pytest.approx(2 * 1 / (2 + 2)), "2": pytest.approx(2 * 2 / (2 + 3))}
    assert summary["mean_foreground_dice"] == pytest.approx((0.5 + 0.8) / 2)


def test_pseudo_labeled_dataset_never_returns_the_ground_truth(tmp_path, synthetic_context):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunet_cl.pseudo_labels import PseudoLabeledDataset, PseudoLabelStore
    context = synthetic_context
    base = infer_dataset_class(context.data_folder)(context.data_folder, ["synth_000"])
    _, ground_truth, _, properties = base.load_case("synth_000")
    store = PseudoLabelStore(str(tmp_path))
    store.start_round(1)
    fake = np.full(ground_truth.shape, 2, np.int8)
    store.write_case(1, "synth_000", fake, {1: np.zeros((0, 4), int), 2: np.array([[0, 1, 2, 3]])})
    data, seg, _, props = PseudoLabeledDataset(base, store, 1).load_case("synth_000")
    assert (np.asarray(seg) == 2).all() and (np.asarray(ground_truth) != 2).any()
    assert props["class_locations"][2].tolist() == [[0, 1, 2, 3]]
    assert len(properties["class_locations"][1]) > 0                 # the ground truth's locations were replaced
    assert np.array_equal(np.asarray(data), np.asarray(base.load_case("synth_000")[0]))


# ----------------------------------------------------------------------------- pseudo-label trainer
@pytest.fixture
def pseudo_trainer(tiny_budget, tmp_path):
    from nnunet_cl.pseudo_labels import PseudoLabelStore
    torch.manual_seed(0)   # the initial weights do not depend on which tests ran before
    trainer = make_trainer(tiny_budget, "nnUNetTrainerPseudoLabelCL_10pct")
    trainer.initialize()
    trainer.store = PseudoLabelStore(str(tmp_path / "pseudo_labels"))
    return trainer


def _targets(trainer, labels):
    """nnU-Net's deep-supervision targets of ``labels [B, 1, H, W]``: one strided copy per output scale."""
    scales = trainer._get_deep_supervision_scales()
    return [labels[:, :, ::round(1 / s[0]), ::round(1 / s[1])] for s in scales]


def test_schedule_from_budget_variables(pseudo_trainer):
    assert pseudo_trainer.phase1_iterations == 1 and pseudo_trainer.pseudo_label_every == 2
    assert not pseudo_trainer.pseudo_labels_due(0)
    assert pseudo_trainer.pseudo_labels_due(1)           # first joint iteration, no loader yet


def test_segmentation_loss_sees_only_labeled_images_and_their_labels(pseudo_trainer):
    trainer = pseudo_trainer
    g = torch.Generator().manual_seed(0)
    shape = (2, 1, *trainer.configuration_manager.patch_size)
    data, pseudo_data = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    labels = torch.randint(0, 3, shape, generator=g, dtype=torch.int16)
    target = _targets(trainer, labels)
    seen = []
    real_loss = trainer.segmentation_loss
    trainer.segmentation_loss = lambda output, tgt: seen.append((output, tgt)) or real_loss(output, tgt)

    def joint_terms(pseudo_labels):
        """One joint forward pass as nnU-Net's train_step makes it (network(data) then self.loss)."""
        with trainer.feature_tap:
            output = trainer.network(torch.cat([data, pseudo_data]))
        return trainer.joint_loss_terms(output, target, trainer.feature_tap.pop(), pseudo_labels)

    trainer.network.train()
    seg_a, cont_a = joint_terms(torch.ones(shape, dtype=torch.int16))
    seg_b, cont_b = joint_terms(torch.full(shape, 2, dtype=torch.int16))
    assert float(seg_a.detach()) == float(seg_b.detach())  # pseudo-labels cannot change the segmentation loss
    assert float(cont_a.detach()) != float(cont_b.detach())  # ... but they do enter the contrastive loss
    for output, tgt in seen:
        assert tgt is target                               # exactly the labelled batch's ground truth
        assert all(scale.shape[0] == 2 for scale in output)  # only the 2 labelled images of the 4 forwarded
    with torch.no_grad():
        alone = real_loss(trainer.network(data), target)   # the labelled images without the pseudo batch
    assert float(seg_a) == pytest.approx(float(alone), rel=1e-4)
    seg_a.backward(retain_graph=True)
    assert all(p.grad is None for p in trainer.contrastive_head.parameters())
    (0.1 * cont_a).backward()
    head = trainer.contrastive_head
    assert parameters_with_gradient(head) == {name for name, _ in head.named_parameters()}


def test_joint_step_is_nnunets_step_with_the_joint_loss(pseudo_trainer):
    """A joint train_step updates the network and the contrastive head once, and logs both loss terms; without a
    running joint step (validation) self.loss is nnU-Net's loss alone."""
    trainer = pseudo_trainer
    trainer.unlabeled_cases = ["synth_003"]
    trainer.global_iteration = trainer.phase1_iterations
    batch = next(trainer.get_dataloaders()[0])
    head_before = [p.detach().clone() for p in trainer.contrastive_head.parameters()]
    network_before = [p.detach().clone() for p in trainer.network.parameters()]
    terms = trainer.train_step(batch)
    assert set(terms) == {"loss", "contrastive_loss"} and np.isfinite(terms["contrastive_loss"])
    assert trainer.pseudo_round == 1 and trainer.joint_step_labels is None
    assert all(not torch.equal(a, b) for a, b in zip(head_before, trainer.contrastive_head.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(network_before, trainer.network.parameters()))
    target = [t.to(trainer.device) for t in batch["target"]]
    with torch.no_grad():
        output = trainer.network(batch["data"])
    assert float(trainer.loss(output, target)) == pytest.approx(float(trainer.segmentation_loss(output, target)))


def test_pseudo_labels_are_written_re_estimated_and_logged(pseudo_trainer):
    trainer = pseudo_trainer
    trainer.unlabeled_cases = ["synth_003"]                  # one case keeps the test fast
    for round_number, iteration in ((1, 1), (2, 3), (3, 5)):
        trainer.estimate_pseudo_labels(iteration)
        assert trainer.pseudo_round == round_number and trainer.store.is_complete(round_number)
        labels = trainer.store.labels(round_number, "synth_003")
        assert labels.shape == (1, 12, 48, 40) and set(np.unique(labels)) <= {0, 1, 2}
        batch = next(trainer.pseudo_loader)
        assert batch["data"].shape[0] == 2 and set(batch["keys"]) == {"synth_003"}
    assert not os.path.isdir(trainer.store.round_folder(1))           # only current + previous are kept
    history = trainer.store.history()
    assert [h["round"] for h in history] == [1, 2, 3] and [h["iteration"] for h in history] == [1, 3, 5]
    assert history[0]["agreement_with_previous_round"] is None
    for h in history[1:]:
        agreement = h["agreement_with_previous_round"]
        assert 0.0 <= agreement["voxel_agreement"] <= 1.0 and set(agreement["dice_per_class"]) == {"1", "2"}
    log = open(trainer.log_file).read()
    assert "pseudo-labels round 3 at iteration 5" in log and "agreement with round 2" in log
    assert not trainer.pseudo_labels_due(6) and trainer.pseudo_labels_due(7)   # every 2 iterations after phase 1


def test_contrastive_head_is_saved_and_restored(pseudo_trainer, tmp_path, tiny_budget):
    trainer = pseudo_trainer
    with torch.no_grad():
        for p in trainer.contrastive_head.parameters():
            p.add_(1.0)
    trainer.pseudo_round, trainer.pseudo_estimated_at = 3, 7
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert not any(k.startswith("contrastive") for k in checkpoint["network_weights"])   # stock network keys
    assert len(checkpoint["optimizer_state"]["param_groups"]) == 2

    restored = make_trainer(tiny_budget, "nnUNetTrainerPseudoLabelCL_10pct", continue_training=True)
    restored.load_checkpoint(path)
    for a, b in zip(trainer.contrastive_head.state_dict().values(), restored.contrastive_head.state_dict().values()):
        assert torch.equal(a, b)
    assert restored.pseudo_round == 3 and restored.pseudo_estimated_at == 7
