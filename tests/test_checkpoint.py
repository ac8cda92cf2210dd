"""Checkpoint format, atomic writes, validated loading and partial (encoder-only) weight transfer."""

import os

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_cl.checkpoint import load_checkpoint, load_pretrained_part, save_checkpoint
from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import architecture_fingerprint


def small_unet(features=(8, 16, 32), num_classes=3):
    return PlainConvUNet(1, len(features), list(features), torch.nn.Conv2d, 3, [1] + [2] * (len(features) - 1),
                         [2] * len(features), num_classes, [2] * (len(features) - 1), conv_bias=True,
                         norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def pretrained_checkpoint(network, prefixes=("encoder.",), method="pcl"):
    return {"network_weights": network.state_dict(), "method": method, "plans_identifier": "nnUNetPlans",
            "architecture_fingerprint": architecture_fingerprint(network), "pretrained_prefixes": list(prefixes)}


def test_encoder_loaded_decoder_untouched():
    torch.manual_seed(0)
    source, target = small_unet(), small_unet()
    with torch.no_grad():  # a "trained" source: every tensor differs from a fresh init
        for parameter in source.parameters():
            parameter.add_(torch.randn_like(parameter))
    decoder_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("decoder.stages")}
    loaded = load_pretrained_part(target, pretrained_checkpoint(source))
    assert loaded and all(k.startswith("encoder.") for k in loaded)
    src, tgt = source.state_dict(), target.state_dict()
    for key in tgt:
        if key.startswith("encoder.") or key.startswith("decoder.encoder."):  # decoder.encoder aliases encoder
            assert torch.equal(tgt[key], src[key]), key
        elif key.startswith("decoder.stages"):
            assert torch.equal(tgt[key], decoder_before[key]) and not torch.equal(tgt[key], src[key]), key


def test_fingerprint_ignores_class_count_but_not_architecture():
    assert architecture_fingerprint(small_unet(num_classes=2)) == architecture_fingerprint(small_unet(num_classes=5))
    assert architecture_fingerprint(small_unet((8, 16, 32))) != architecture_fingerprint(small_unet((8, 16, 64)))


def test_other_architecture_is_refused_with_the_fix():
    with pytest.raises(NnunetClError, match="another architecture.*nnUNetv2_move_plans_between_datasets"):
        load_pretrained_part(small_unet((8, 16, 32)), pretrained_checkpoint(small_unet((8, 16, 64))))


def test_other_method_is_refused():
    with pytest.raises(NnunetClError, match="method 'simclr', not 'pcl'"):
        load_pretrained_part(small_unet(), pretrained_checkpoint(small_unet(), method="simclr"), expected_method="pcl")


def test_save_is_atomic_and_round_trips(tmp_path):
    path = str(tmp_path / "checkpoint_final.pth")
    save_checkpoint(pretrained_checkpoint(small_unet()), path)
    assert os.listdir(tmp_path) == ["checkpoint_final.pth"]  # no temp file left behind
    checkpoint = load_checkpoint(path)
    assert checkpoint["nnunet_cl_format"] == 1 and checkpoint["pretrained_prefixes"] == ["encoder."]


def test_missing_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(NnunetClError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    corrupt = tmp_path / "corrupt.pth"
    save_checkpoint(pretrained_checkpoint(small_unet()), str(corrupt))
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated, as after a crash mid-write without atomicity
    with pytest.raises(NnunetClError, match="corrupt"):
        load_checkpoint(str(corrupt))
    foreign = tmp_path / "foreign.pth"
    torch.save({"network_weights": {}}, foreign)
    with pytest.raises(NnunetClError, match="not an nnunet_cl pre-training checkpoint"):
        load_checkpoint(str(foreign))


def test_error_exits_with_one_line_and_code_1():
    error = NnunetClError("something is wrong; do X")
    assert isinstance(error, SystemExit) and error.code == "nnunet_cl: error: something is wrong; do X"


def test_interrupted_atomic_write_leaves_only_a_temp_that_remove_stale_temps_deletes(tmp_path):
    from nnunet_cl.atomic import atomic_target, remove_stale_temps
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(b"old")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")        # not of the temp naming: left alone
    with pytest.raises(KeyboardInterrupt):
        with atomic_target(str(path)) as tmp:
            open(tmp, "wb").write(b"half")
            stale = tmp_path / ("." + path.name + ".killed.tmp")
            os.link(tmp, stale)                            # what a SIGKILL here would leave behind
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    copy = tmp_path / ".pcl__nnUNetPlans__2d.killed.tmp"    # a folder copy killed midway (benchmark adoption)
    copy.mkdir()
    (copy / "checkpoint_final.pth").write_bytes(b"half")
    assert remove_stale_temps(str(tmp_path)) == sorted([stale.name, copy.name])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_latest.pth", "keep.tmp"]


def test_trainer_checkpoint_holds_exactly_nnunets_keys_and_values(synthetic_context, tmp_path, monkeypatch,
                                                                 one_torch_thread):
    """nnUNetTrainerCL writes its checkpoint itself (once, atomically): it must be what nnU-Net's own
    save_checkpoint writes, key by key, so nnUNetv2_train --c and nnUNetv2_predict read it."""
    import copy

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_cl import trainers
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    plans = dict(copy.deepcopy(synthetic_context.plans), continue_training=False)   # as nnUNetv2_train passes them
    trainer = trainers.nnUNetTrainerScratch_10pct(plans, "2d", 0,
                                                  synthetic_context.dataset_json, torch.device("cpu"))
    trainer.initialize()
    ours, stock = str(tmp_path / "ours.pth"), str(tmp_path / "stock.pth")
    trainer.save_checkpoint(ours)
    nnUNetTrainer.save_checkpoint(trainer, stock)
    ours, stock = (torch.load(p, map_location="cpu", weights_only=False) for p in (ours, stock))
    assert list(ours) == list(stock)
    for key in stock:
        if key == "network_weights":
            assert all(torch.equal(ours[key][k], v) for k, v in stock[key].items())
        elif key != "optimizer_state":
            assert ours[key] == stock[key], key
    assert ours["optimizer_state"]["param_groups"] == stock["optimizer_state"]["param_groups"]
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
