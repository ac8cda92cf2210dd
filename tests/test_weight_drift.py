"""scripts/weight_drift.py: cosine and norm ratio of fine-tuned convs to their pre-trained start."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "weight_drift.py")
SCALED, NEGATED, HALF_TURNED = ("encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.1.conv",
                                "encoder.stages.1.0.convs.0.conv")


@pytest.fixture(scope="module")
def start_and_finetuned(synthetic_context, tmp_path_factory):
    """A pre-trained checkpoint and a hand-made 'fine-tuned' state: one conv scaled by 2 (cosine 1, ratio 2),
    one negated (cosine -1, ratio 1), one plus an orthogonal part of its own norm (cosine 1/sqrt 2, ratio sqrt 2),
    the rest unchanged (cosine 1, ratio 1)."""
    from nnunet_cl.checkpoint import save_checkpoint
    from nnunet_cl.nnunet_context import architecture_fingerprint
    folder = tmp_path_factory.mktemp("drift")
    torch.manual_seed(3)
    network = synthetic_context.build_network()
    start = str(folder / "checkpoint_final.pth")
    save_checkpoint({"network_weights": network.state_dict(), "method": "pcl", "plans_identifier": "nnUNetPlans",
                     "architecture_fingerprint": architecture_fingerprint(network),
                     "pretrained_prefixes": ["encoder."]}, start)
    modules = dict(network.named_modules())
    with torch.no_grad():
        modules[SCALED].weight.mul_(2)
        modules[NEGATED].weight.neg_()
        weight = modules[HALF_TURNED].weight
        other = torch.randn_like(weight)
        other -= (other * weight).sum() / (weight * weight).sum() * weight
        weight += other * (weight.norm() / other.norm())
    finetuned = str(folder / "finetuned.pth")
    torch.save({"network_weights": network.state_dict()}, finetuned)
    return start, finetuned


def run(synthetic_env, *args):
    return subprocess.run([sys.executable, SCRIPT, "-d", "990", *args], env=synthetic_env.env(training=False),
                          capture_output=True, text=True, timeout=600)


def test_table_by_hand(synthetic_env, start_and_finetuned):
    start, finetuned = start_and_finetuned
    proc = run(synthetic_env, start, f"mine={finetuned}")
    assert proc.returncode == 0, proc.stderr
    cells = {line.split("`")[1]: line.split("|")[2].strip() for line in proc.stdout.splitlines()
             if line.startswith("| `")}
    assert len(cells) == 8 and all(name.startswith("encoder.") for name in cells)    # only the pre-trained convs
    assert cells[SCALED] == "1.000 (2.00)"
    assert cells[NEGATED] == "-1.000 (1.00)"
    assert cells[HALF_TURNED] == f"{1 / math.sqrt(2):.3f} ({math.sqrt(2):.2f})"
    assert sum(cell == "1.000 (1.00)" for cell in cells.values()) == 5
    assert "| layer | mine |" in proc.stdout


@pytest.mark.parametrize("make_argument, message", [
    (lambda start, finetuned, folder: finetuned, "is not LABEL=FINETUNED_CHECKPOINT"),
    (lambda start, finetuned, folder: f"x={folder}/missing.pth", "does not exist"),
    (lambda start, finetuned, folder: f"x={folder}/garbage.pth", "is corrupt or not a torch file"),
    (lambda start, finetuned, folder: f"x={folder}/foreign.pth", "does not fit the plans' network"),
], ids=["no-label", "missing", "corrupt", "foreign"])
def test_bad_input_is_one_line(synthetic_env, start_and_finetuned, tmp_path, make_argument, message):
    start, finetuned = start_and_finetuned
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    torch.save({"network_weights": {"conv.weight": torch.zeros(1)}}, tmp_path / "foreign.pth")
    proc = run(synthetic_env, start, make_argument(start, finetuned, tmp_path))
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
        proc.stderr
    assert proc.stdout == ""
