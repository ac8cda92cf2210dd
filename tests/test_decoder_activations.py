"""scripts/decoder_activations.py: RMS of the upsampled and the skip features per decoder stage, for a checkpoint
whose first transposed convolution is 10x nnU-Net's initialisation of the same seed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "decoder_activations.py")


@pytest.fixture(scope="module")
def scaled_decoder_checkpoint(synthetic_context, tmp_path_factory):
    from nnunet_cl.checkpoint import save_checkpoint
    from nnunet_cl.nnunet_context import architecture_fingerprint
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        from decoder_activations import fresh_network
    finally:
        sys.path.pop(0)
    network = fresh_network(synthetic_context)               # the script's own init (seed 0)
    with torch.no_grad():
        for parameter in network.decoder.transpconvs[0].parameters():
            parameter.mul_(10)                               # weight and bias: the output exactly 10x
    path = str(tmp_path_factory.mktemp("jcl_like") / "checkpoint_final.pth")
    save_checkpoint({"network_weights": network.state_dict(), "method": "jcl", "plans_identifier": "nnUNetPlans",
                     "architecture_fingerprint": architecture_fingerprint(network),
                     "pretrained_prefixes": ["encoder.", "decoder.transpconvs.0.", "decoder.stages.0."]}, path)
    return path


def table(synthetic_env, checkpoint, *extra) -> list:
    """Rows of cells ``(up, skip)`` per column."""
    proc = subprocess.run([sys.executable, SCRIPT, "-d", "990", "--slices", "6", checkpoint, *extra],
                          env=synthetic_env.env(training=False), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|")[2:-1] for line in proc.stdout.splitlines() if line[:3] in {f"| {s}" for s in "0123456"}]
    assert rows and "| decoder stage | nnU-Net init | jcl (" in proc.stdout
    return [[tuple(float(x) for x in cell.split("=")[0].split("/")) for cell in row] for row in rows]


def test_loaded_transposed_conv_scales_its_stage_input(synthetic_env, scaled_decoder_checkpoint):
    rows = table(synthetic_env, scaled_decoder_checkpoint)
    (init_up, init_skip), (up, skip) = rows[0]
    assert up / init_up == pytest.approx(10, rel=0.01) and skip == init_skip       # 3 significant digits
    for (init_up, init_skip), (up, skip) in rows:
        assert skip == init_skip                     # the encoder is the init's: the same skip features


def test_encoder_parts_leave_the_decoder_at_init(synthetic_env, scaled_decoder_checkpoint):
    for init_cell, cell in table(synthetic_env, scaled_decoder_checkpoint, "--parts", "encoder"):
        assert cell == init_cell


def test_bad_slice_count_is_one_line(synthetic_env, scaled_decoder_checkpoint):
    proc = subprocess.run([sys.executable, SCRIPT, "-d", "990", "--slices", "0", scaled_decoder_checkpoint],
                          env=synthetic_env.env(training=False), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "--slices" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
