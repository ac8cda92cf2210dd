"""Where the console scripts of this installation are (``nnunet_cl``, ``nnUNetv2_train`` ...)."""

from __future__ import annotations

import os
import sys


def console_script(name: str) -> str:
    """The console script next to this interpreter (its venv's bin/), else the bare name (found on PATH)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name
