"""Registry of pre-training methods. A new method is one module that defines a ``PretrainingMethod``
subclass decorated with ``register``, imported at the end of this file (the only list of methods): the
CLI, the Init trainers, the benchmark, the speed tool and the tests take their methods from ``METHODS``."""

from __future__ import annotations

from nnunet_cl.errors import NnunetClError

METHODS: dict = {}


def register(cls):
    """Class decorator: add a method to ``METHODS`` under ``cls.name``."""
    if "supports_distributed" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must state supports_distributed in its own class body (True only if its "
                        "compute_loss gathers the global batch under torchrun)")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise TypeError(f"two methods are named {cls.name!r}: {METHODS[cls.name].__name__} and {cls.__name__}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str):
    if name not in METHODS:
        raise NnunetClError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


# Importing the modules registers the methods.
from nnunet_cl.pretraining.methods import instance  # noqa: E402,F401
from nnunet_cl.pretraining.methods import gcl, jcl, wcl  # noqa: E402,F401
from nnunet_cl.pretraining.methods import supercl  # noqa: E402,F401
from nnunet_cl.pretraining.methods import semi_local  # noqa: E402,F401
