"""Registry of pre-training methods. A new method is a module here that calls ``register``; the CLI,
the Init trainers and the benchmark pick it up from the registry."""

from __future__ import annotations

from nnunet_cl.errors import NnunetClError

METHODS: dict = {}


def register(cls):
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
