"""Fine-tuning schedules (nnUNet_cl_finetune_schedule): the lr at chosen epochs against the formulas written
out by hand, the optimiser, the checks of the variables, and, in a real Init trainer, that a decoder-only
phase leaves the pre-trained encoder untouched and the next phase moves it."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.trainers.finetune_schedules import (PEAK_LR_ENV, SCHEDULE_ENV, FinetuneChoice,
                                                   parameters_under)


@pytest.fixture(autouse=True)
def _single_thread(one_torch_thread):
    yield


def schedule(monkeypatch, name, num_epochs=1000, pretrained=True, peak=None):
    monkeypatch.setenv(SCHEDULE_ENV, name)
    if peak is None:
        monkeypatch.delenv(PEAK_LR_ENV, raising=False)
    else:
        monkeypatch.setenv(PEAK_LR_ENV, peak)
    return FinetuneChoice().schedule(num_epochs, pretrained=pretrained, nnunet_lr=1e-2)


def applied_lrs(sched, epochs) -> dict:
    """The lr the optimiser holds after nnU-Net's ``lr_scheduler.step(current_epoch)`` at each epoch start,
    through the schedule's own optimiser and scheduler (for stock: nnU-Net's SGD and PolyLRScheduler)."""
    network = torch.nn.Linear(2, 2)
    nnunet_sgd = torch.optim.SGD(network.parameters(), sched.peak_lr, weight_decay=3e-5, momentum=0.99,
                                 nesterov=True)
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    optimizer = sched.make_optimizer(nnunet_sgd, network.parameters())
    scheduler = sched.make_lr_scheduler(optimizer, PolyLRScheduler(optimizer, sched.peak_lr, sched.num_epochs))
    lrs = {}
    for epoch in epochs:
        scheduler.step(epoch)
        lrs[epoch] = optimizer.param_groups[0]["lr"]
    return lrs


def test_stock_is_nnunets_sgd_and_poly(monkeypatch):
    sched = schedule(monkeypatch, "stock", num_epochs=100)
    assert sched.peak_lr == 1e-2     # also for a pre-trained start
    lrs = applied_lrs(sched, [0, 50, 99])
    assert lrs[0] == pytest.approx(1e-2)
    assert lrs[50] == pytest.approx(1e-2 * 0.5 ** 0.9)
    assert lrs[99] == pytest.approx(1e-2 * 0.01 ** 0.9)
    monkeypatch.delenv(SCHEDULE_ENV)
    assert FinetuneChoice().schedule_class.name == "stock"       # unset: stock


def test_warmup_pretrained_start_warms_up_to_1e3_over_5_percent_then_poly(monkeypatch):
    sched = schedule(monkeypatch, "warmup", num_epochs=1000)
    lrs = applied_lrs(sched, [0, 24, 49, 50, 525, 999])
    assert lrs[0] == pytest.approx(1e-3 / 50)            # warm-up start: nnssl's 1e-3 * (epoch + 1) / 50
    assert lrs[24] == pytest.approx(1e-3 * 25 / 50)
    assert lrs[49] == pytest.approx(1e-3)                # peak
    assert lrs[50] == pytest.approx(1e-3)                # poly starts at the peak ...
    assert lrs[525] == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert lrs[999] == pytest.approx(1e-3 * (1 / 950) ** 0.9)   # ... and ends one epoch before 0
    assert not any(sched.decoder_only(e) for e in range(1000))


def test_warmup_of_a_random_start_peaks_at_nnunets_lr(monkeypatch):
    sched = schedule(monkeypatch, "warmup", num_epochs=100, pretrained=False)
    lrs = applied_lrs(sched, [0, 4, 5])
    assert lrs[0] == pytest.approx(1e-2 / 5) and lrs[4] == pytest.approx(1e-2) and lrs[5] == pytest.approx(1e-2)


def test_peak_lr_variable_overrides_the_default(monkeypatch):
    sched = schedule(monkeypatch, "warmup", num_epochs=100, peak="3e-3")
    assert applied_lrs(sched, [4])[4] == pytest.approx(3e-3)
    assert schedule(monkeypatch, "stock", num_epochs=100, peak="2e-2").peak_lr == 2e-2


def test_decoder_first_is_the_sawtooth(monkeypatch):
    sched = schedule(monkeypatch, "decoder_first", num_epochs=1000)
    lrs = applied_lrs(sched, [0, 24, 25, 49, 50, 99, 100, 999])
    assert lrs[0] == pytest.approx(1e-3 / 25)            # decoder warm-up
    assert lrs[24] == pytest.approx(1e-3)
    assert lrs[25] == pytest.approx(1e-3)                # decoder poly decay
    assert lrs[49] == pytest.approx(1e-3 * (1 / 25) ** 0.9)
    assert lrs[50] == pytest.approx(1e-3 / 50)           # whole-network warm-up
    assert lrs[99] == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(1e-3)               # poly to the end
    assert lrs[999] == pytest.approx(1e-3 * (1 / 900) ** 0.9)
    assert all(sched.decoder_only(e) for e in range(50))
    assert not any(sched.decoder_only(e) for e in range(50, 1000))


def test_adam_cosine(monkeypatch):
    sched = schedule(monkeypatch, "adam", num_epochs=100)
    network = torch.nn.Linear(2, 2)
    optimizer = sched.make_optimizer(None, network.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["weight_decay"] == 1e-5
    lrs = applied_lrs(sched, [0, 50, 99])
    assert lrs[0] == pytest.approx(5e-4)
    assert lrs[50] == pytest.approx(5e-6 + (5e-4 - 5e-6) / 2)
    assert lrs[99] == pytest.approx(5e-6 + (5e-4 - 5e-6) * (1 + math.cos(0.99 * math.pi)) / 2)


@pytest.mark.parametrize("variable, value, fragment", [
    (SCHEDULE_ENV, "sawtooth", "'sawtooth' is not a fine-tuning schedule; use one of stock, warmup, decoder_first"),
    (PEAK_LR_ENV, "-1", "must be a positive number"),
    (PEAK_LR_ENV, "fast", "must be a positive number"),
    (PEAK_LR_ENV, "nan", "must be a positive number"),
])
def test_bad_variables_are_one_error(monkeypatch, variable, value, fragment):
    monkeypatch.setenv(variable, value)
    with pytest.raises(NnunetClError) as error:
        FinetuneChoice()
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_too_short_run_for_the_phases(monkeypatch):
    with pytest.raises(NnunetClError, match="needs at least 4 epochs"):
        schedule(monkeypatch, "decoder_first", num_epochs=3)
    assert schedule(monkeypatch, "decoder_first", num_epochs=4).decoder_epochs == 2


def test_parameters_under_counts_aliases_once():
    from tests.test_checkpoint import small_unet
    network = small_unet()
    encoder = parameters_under(network, ("encoder.",))
    assert {id(p) for p in encoder} == {id(p) for p in network.encoder.parameters()}
    assert len(encoder) == len(list(network.encoder.parameters()))


# ---------------------------------------------------------------- a real Init trainer


def other_checkpoint(context, tmp_path, method="pcl", prefixes=("encoder.",), weight_scale=1.0) -> str:
    """A checkpoint of the dataset's own architecture whose every tensor differs from the trainer's fresh init:
    weights of another seed (times ``weight_scale``), biases and norm parameters shifted by 0.5."""
    from nnunet_cl.checkpoint import save_checkpoint
    from nnunet_cl.nnunet_context import architecture_fingerprint
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    network = context.build_network()
    torch.random.set_rng_state(state)
    weights = {k: (v * weight_scale if v.ndim > 1 else v + 0.5) if v.is_floating_point() else v
               for k, v in network.state_dict().items()}
    path = str(tmp_path / f"{method}.pth")
    save_checkpoint({"network_weights": weights, "method": method, "plans_identifier": "nnUNetPlans",
                     "architecture_fingerprint": architecture_fingerprint(network),
                     "pretrained_prefixes": list(prefixes)}, path)
    return path


def make_trainer(context, name, fold=0):
    from nnunet_cl import trainers
    plans = dict(copy.deepcopy(context.plans), continue_training=False)   # as nnUNetv2_train passes them
    return getattr(trainers, name)(plans, "2d", fold, context.dataset_json, torch.device("cpu"))


def fake_batch(trainer) -> dict:
    """A batch of the trainer's patch size with a target per deep-supervision output."""
    patch = list(trainer.configuration_manager.patch_size)
    data = torch.randn(2, trainer.num_input_channels, *patch)
    with torch.no_grad():
        outputs = trainer.network(data)
    classes = trainer.label_manager.num_segmentation_heads
    target = [torch.randint(0, classes, (2, 1, *o.shape[2:])).float() for o in outputs]
    return {"data": data, "target": target}


def snapshot(parameters) -> list:
    return [p.detach().clone() for p in parameters]


def unchanged(parameters, before) -> bool:
    return all(torch.equal(p, b) for p, b in zip(parameters, before))


def moved(parameters, before) -> bool:
    """Every weight tensor changed (biases before an InstanceNorm get no gradient, so they are left out)."""
    return all(not torch.equal(p, b) for p, b in zip(parameters, before) if p.ndim > 1)


def test_decoder_only_phase_keeps_the_encoder_then_trains_it(synthetic_context, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_cl_pretrained_checkpoint", other_checkpoint(synthetic_context, tmp_path))
    monkeypatch.setenv(SCHEDULE_ENV, "decoder_first")
    monkeypatch.setenv("nnUNet_cl_num_epochs", "80")      # decoder phase: epochs 0-3, whole-network warm-up 4-7
    trainer = make_trainer(synthetic_context, "nnUNetTrainerPCLInit_10pct")
    trainer.initialize()
    assert trainer.finetune_schedule.decoder_epochs == 4
    encoder = parameters_under(trainer.network, ("encoder.",))
    # (the lowest-resolution segmentation output has deep-supervision weight 0: no gradient reaches it)
    decoder_only = [p for n, p in trainer.network.named_parameters() if n.startswith(("decoder.stages.",
                                                                                      "decoder.transpconvs."))]
    batch = fake_batch(trainer)
    start_encoder, start_decoder = snapshot(encoder), snapshot(decoder_only)
    for epoch in range(4):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.finetune_schedule.lr(epoch))
        for _ in range(2):
            trainer.train_step(batch)
    assert unchanged(encoder, start_encoder)    # neither gradient, momentum nor weight decay moved it
    assert moved(decoder_only, start_decoder)
    trainer.current_epoch = 4
    trainer.on_train_epoch_start()
    trainer.train_step(batch)
    assert moved(encoder, start_encoder)
    assert all(p.requires_grad for p in trainer.network.parameters())


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerPCLInit_10pct", "nnUNetTrainerScratch_10pct"])
def test_frozen_probe_never_trains_the_start(synthetic_context, tmp_path, monkeypatch, trainer_name):
    """frozen: nnU-Net's poly lr, and the loaded encoder (scratch: its random one) stays as it started through
    every epoch while the decoder learns."""
    monkeypatch.setenv("nnUNet_cl_pretrained_checkpoint", other_checkpoint(synthetic_context, tmp_path))
    monkeypatch.setenv(SCHEDULE_ENV, "frozen")
    monkeypatch.setenv("nnUNet_cl_num_epochs", "10")
    trainer = make_trainer(synthetic_context, trainer_name)
    trainer.initialize()
    encoder = parameters_under(trainer.network, ("encoder.",))
    decoder_only = [p for n, p in trainer.network.named_parameters() if n.startswith(("decoder.stages.",
                                                                                      "decoder.transpconvs."))]
    batch = fake_batch(trainer)
    start_encoder, start_decoder = snapshot(encoder), snapshot(decoder_only)
    for epoch in (0, 5, 9):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 - epoch / 10) ** 0.9)
        trainer.train_step(batch)
    assert unchanged(encoder, start_encoder)
    assert moved(decoder_only, start_decoder)


def test_init_trainer_loads_only_the_encoder_unless_asked_for_all(synthetic_context, tmp_path, monkeypatch):
    prefixes = ("encoder.", "decoder.transpconvs.0.", "decoder.stages.0.")
    path = other_checkpoint(synthetic_context, tmp_path, method="jcl", prefixes=prefixes)
    source = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
    monkeypatch.setenv("nnUNet_cl_pretrained_checkpoint", path)
    for parts, loaded_prefixes in (("all", prefixes), ("encoder", ("encoder.",)), (None, ("encoder.",))):
        if parts is None:                                            # unset: the default
            monkeypatch.delenv("nnUNet_cl_pretrained_parts")
        else:
            monkeypatch.setenv("nnUNet_cl_pretrained_parts", parts)
        trainer = make_trainer(synthetic_context, "nnUNetTrainerJCLInit")
        trainer.initialize()
        assert trainer.decoder_phase_frozen_prefixes() == loaded_prefixes
        for key, value in trainer.network.state_dict().items():
            if key.startswith("decoder.encoder."):
                continue                                  # aliases of encoder.*
            assert torch.equal(value, source[key]) == key.startswith(loaded_prefixes), (parts, key)


def test_init_trainer_resets_the_loaded_norms(synthetic_context, tmp_path, monkeypatch):
    from nnunet_cl.trainers.weight_norm import conv_weight_norms
    monkeypatch.setenv("nnUNet_cl_pretrained_checkpoint", other_checkpoint(synthetic_context, tmp_path,
                                                                           weight_scale=2.0))
    monkeypatch.setenv("nnUNet_cl_weight_norm_reset", "1")
    torch.manual_seed(3)
    trainer = make_trainer(synthetic_context, "nnUNetTrainerPCLInit")
    trainer.initialize()
    torch.manual_seed(3)
    fresh = conv_weight_norms(synthetic_context.build_network())    # the same seed: the trainer's own init
    norms = conv_weight_norms(trainer.network)
    encoder = [n for n in norms if n.startswith("encoder.")]
    assert encoder
    source = torch.load(os.environ["nnUNet_cl_pretrained_checkpoint"], map_location="cpu",
                        weights_only=False)["network_weights"]
    state = trainer.network.state_dict()
    for name in encoder:
        assert norms[name] == pytest.approx(fresh[name], rel=1e-5), name
        loaded, pretrained = state[f"{name}.weight"].flatten(), source[f"{name}.weight"].flatten()
        assert float(torch.nn.functional.cosine_similarity(loaded, pretrained, dim=0)) == pytest.approx(1, abs=1e-5)
        assert float(pretrained.norm()) > 1.5 * fresh[name]      # the reset did change the norm
