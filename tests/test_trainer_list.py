"""``nnunet_cl trainers`` through the console script: every generated trainer, one line each."""

import subprocess

from nnunet_cl.pretraining.methods import METHODS
from tests.conftest import console_script


def test_trainers_command_lists_every_generated_trainer_once():
    from nnunet_cl.trainers import GENERATED_TRAINERS

    proc = subprocess.run([console_script("nnunet_cl"), "trainers"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("nnUNetTrainer")}
    assert len(lines) == len(GENERATED_TRAINERS) == len(proc.stdout.splitlines()) - 1
    assert set(lines) == {cls.__name__ for cls in GENERATED_TRAINERS}
    assert lines["nnUNetTrainerScratch_10pct"].split()[1:4] == ["-", "10", "%"]
    assert "loads nothing" in lines["nnUNetTrainerScratch_10pct"]
    for method in METHODS.values():
        fractions = method.label_fractions or (1.0, 0.1, 0.25)
        for fraction in fractions:
            suffix = {1.0: "", 0.1: "_10pct", 0.25: "_25pct"}[fraction]
            line = lines[f"nnUNetTrainer{method.trainer_name}Init{suffix}"]
            assert line.split()[1:4] == [method.name, f"{fraction * 100:g}", "%"], line
            assert line.split()[4] == "nnU-Net" and "loads the encoder of nnunet_cl/" + method.name in line, line
    assert "semi_local_frac25_fold<fold>__<plans>__2d/checkpoint_final.pth" in lines["nnUNetTrainerSemiLocalInit_25pct"]
    intra = lines["nnUNetTrainerPseudoLabelCLIntra_10pct"]
    assert "pseudo-label CL (intra)" in intra and "loads nothing" in intra
    assert "nnunet_cl/supercl__<plans>__2d" in lines["nnUNetTrainerPseudoLabelCLSuperCLInit_25pct"]
