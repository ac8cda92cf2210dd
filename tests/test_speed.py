"""The speed benchmark's instruments (no timing assertions: speed is measured by `nnunet_cl speed`)."""

import json
import statistics
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
    args = types.SimpleNamespace(dataset="990", plans="nnUNetPlans", methods=[method], batch_size=4, warmup=1,
                                 repeats=3, cache_cases=1, device="cpu", output=str(out), loader_workers=[0, 1],
                                 loader_rounds=3, loader_batches=2)
    run_speed(args)
    text = out.read_text()
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["supervised (nnU-Net)", method]
    for row in rows:
        # the warm-up iteration is not timed; the reported numbers are the medians of the timed ones
        assert len(row["step_times"]) == len(row["batch_times"]) == 3
        assert row["step_s"] == statistics.median(row["step_times"])
        assert row["batch_s"] == statistics.median(row["batch_times"])
        assert row["batch_over_step"] == pytest.approx(row["batch_s"] / row["step_s"])
        # both losses (Dice + CE; the contrastive loss) take time of their own outside the U-Net, within the step
        assert 0.0 < row["loss_share"] < 1.0
    supervised = rows[0]["step_s"]
    assert f"| supervised (nnU-Net) | {supervised:.3f} | 1.00 |" in text
    assert f"| {method} | {rows[1]['step_s']:.3f} | {rows[1]['step_s'] / supervised:.2f} |" in text
    assert "loader batches/s (0 / 1 workers) | 1 / 0 workers | iteration, in-process (s) | iteration, 1 workers (s)" in text
    loader = rows[1]
    assert set(loader["loader_batches_per_s"]) == {"0", "1"} and all(v > 0 for v in loader["loader_batches_per_s"].values())
    rounds = loader["loader_rounds"]
    assert len(rounds["0"]) == len(rounds["1"]) == 3
    assert loader["loader_batches_per_s"] == {k: statistics.median(v) for k, v in rounds.items()}
    # paired by round: the median of the per-round ratios, not the ratio of the medians
    assert loader["loader_speedup"] == statistics.median(b / a for a, b in zip(rounds["0"], rounds["1"]))
    assert loader["iteration_overlapped_s"] > 0


def test_speed_rejects_bad_arguments():
    args = types.SimpleNamespace(dataset="990", plans="nnUNetPlans", methods=None, batch_size=1, warmup=0,
                                 repeats=1, cache_cases=1, device="cpu", output="x.md", loader_workers=[0],
                                 loader_rounds=1, loader_batches=1)
    with pytest.raises(NnunetClError, match="batch-size"):
        run_speed(args)
    args.batch_size, args.loader_batches = 4, 0
    with pytest.raises(NnunetClError, match="--loader-batches >= 1"):
        run_speed(args)
