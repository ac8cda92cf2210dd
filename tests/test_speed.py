"""The speed benchmark's instruments (no timing assertions: speed is measured by `nnunet_cl speed`)."""

import json
import types

import pytest
import torch

from nnunet_cl.errors import NnunetClError
from nnunet_cl.pretraining.methods import METHODS
from nnunet_cl.tools.speed import ModuleTimer, run_speed, unet_stage_modules


def test_hooked_modules_hold_every_unet_parameter_once(synthetic_context):
    network = synthetic_context.build_network(deep_supervision=True)
    hooked = [p for m in unet_stage_modules(network) for p in m.parameters()]
    assert len({id(p) for p in hooked}) == len(hooked)                  # no module nested in another
    assert {id(p) for p in hooked} == {id(p) for p in network.parameters()}


def test_module_timer_counts_only_unet_forward_time(synthetic_context):
    network = synthetic_context.build_network()
    timer = ModuleTimer(network, torch.device("cpu"))
    x = torch.zeros(2, 1, *synthetic_context.patch_size)
    network(x)
    assert timer.total > 0
    after_forward = timer.total
    torch.zeros(1000, 1000) @ torch.zeros(1000, 1000)                   # not inside the U-Net: not counted
    assert timer.total == after_forward
    timer.remove()
    network(x)
    assert timer.total == after_forward


@pytest.mark.integration
def test_speed_table_for_one_method(synthetic_context, tmp_path):
    method = "simclr" if "simclr" in METHODS else next(iter(METHODS))
    out = tmp_path / "speed.md"
    args = types.SimpleNamespace(dataset="990", plans="nnUNetPlans", methods=[method], batch_size=4, warmup=0,
                                 repeats=1, cache_cases=1, device="cpu", output=str(out))
    run_speed(args)
    text = out.read_text()
    assert "| supervised (nnU-Net) |" in text and f"| {method} |" in text
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["supervised (nnU-Net)", method]
    assert all(r["step_s"] > 0 and 0.0 <= r["loss_share"] <= 1.0 for r in rows)


def test_speed_rejects_bad_arguments():
    args = types.SimpleNamespace(dataset="990", plans="nnUNetPlans", methods=None, batch_size=1, warmup=0,
                                 repeats=1, cache_cases=1, device="cpu", output="x.md")
    with pytest.raises(NnunetClError, match="batch-size"):
        run_speed(args)
