"""Making our trainers discoverable by ``nnUNetv2_train -tr`` / ``nnUNetv2_predict -tr``.

nnU-Net >= 2.8.0 scans every directory in ``nnUNet_extTrainer`` (os.pathsep-separated). We point it at a
shim directory inside the installed package that re-exports ``nnunet_cl.trainers``.
"""

from __future__ import annotations

import os
import shlex

SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext_trainer_shim")


def ext_trainer_value(existing: str | None = None) -> str:
    """``nnUNet_extTrainer`` with our shim first, keeping the user's own directories."""
    existing = os.environ.get("nnUNet_extTrainer", "") if existing is None else existing
    others = [d for d in existing.split(os.pathsep) if d and os.path.abspath(d) != SHIM_DIR]
    return os.pathsep.join([SHIM_DIR] + others)


def export_lines() -> str:
    return f"export nnUNet_extTrainer={shlex.quote(ext_trainer_value())}"


def enable_in_this_process() -> None:
    os.environ["nnUNet_extTrainer"] = ext_trainer_value()
