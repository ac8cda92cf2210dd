"""Value checks shared by the CLI, the trainers' environment variables, the method options and the benchmark
(folds: ``splits.check_fold_exists``).

Every user-given number goes through one of these functions before any file or folder is touched, so a
rule ("an integer >= 1", "finite and > 0") and its message live in one place.
Each failure is one ``NnunetClError`` line naming the flag / variable / option, the value and the fix.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from nnunet_cl.errors import NnunetClError


def _say(name: str, value) -> str:
    """``--epochs 0`` for flags, ``temperature=0.0`` for options and variables."""
    return f"{name} {value!r}" if name.startswith("-") else f"{name}={value!r}"


def int_at_least(value, minimum: int, name: str, why: str = "", maximum: Optional[int] = None) -> int:
    """``value`` as an int >= ``minimum`` (and <= ``maximum``); bools and non-integral floats are refused."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        where = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise NnunetClError(f"{_say(name, value)} must be an integer {where}" + (f" ({why})" if why else ""))
    return number


def positive_int(value, name: str, why: str = "") -> int:
    return int_at_least(value, 1, name, why)


def finite_float(value, name: str, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False, why: str = "") -> float:
    """``value`` as a finite float in [low, high] (``low_open`` / ``high_open``: that end excluded)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or below or above:
        if low is not None and high is not None:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f"{'<' if high_open else '<='} {high:g}"
        else:
            where = "a number"
        raise NnunetClError(f"{_say(name, value)} must be finite and {where}" + (f" ({why})" if why else ""))
    return number


def positive_finite_float(value, name: str, why: str = "") -> float:
    return finite_float(value, name, low=0.0, low_open=True, why=why)


def one_of(value, choices, name: str) -> object:
    if value not in choices:
        raise NnunetClError(f"{_say(name, value)} must be one of: {', '.join(str(c) for c in choices)}")
    return value


def int_env(variable: str, minimum: int = 1) -> Optional[int]:
    """An ``nnUNet_cl_*`` integer variable: None when unset or empty, else an integer >= ``minimum``."""
    value = os.environ.get(variable)
    if value is None or value == "":
        return None
    return int_at_least(value.strip(), minimum, variable, "or unset for the default")


def positive_int_env(variable: str) -> Optional[int]:
    return int_env(variable, 1)


def loss_weights(options: dict, keys, owner: str) -> None:
    """Weights of a method's loss terms: each finite and >= 0 (0 switches its term off), not all 0."""
    for key in keys:
        finite_float(options[key], f"{owner} option {key}", low=0.0, why="0 switches its term off")
    if all(float(options[key]) == 0 for key in keys):
        raise NnunetClError(f"{owner} options {', '.join(keys)} are all 0: no loss term is left; set one > 0")


PRETRAIN_FLAGS = {"epochs": "--epochs", "iters_per_epoch": "--iters-per-epoch", "batch_size": "--batch-size"}


def check_pretrain_budget(epochs, iters_per_epoch, batch_size, flags: dict = PRETRAIN_FLAGS) -> tuple:
    """The pre-training budget (``nnunet_cl pretrain`` and the benchmark's --pretrain-* flags name theirs)."""
    return (positive_int(epochs, flags["epochs"]), positive_int(iters_per_epoch, flags["iters_per_epoch"]),
            int_at_least(batch_size, 2, flags["batch_size"], "a contrastive batch needs negatives"))


def writable_file_path(path: str, name: str) -> str:
    """A file we may create at ``path``: its nearest existing ancestor is a writable folder, it is not a folder."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise NnunetClError(f"{_say(name, path)} is a folder; give a file name inside it")
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise NnunetClError(f"{_say(name, path)} cannot be created: {ancestor} is a file, not a folder; "
                            "choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise NnunetClError(f"{_say(name, path)} cannot be created: {ancestor} is not writable for you")
    return path
