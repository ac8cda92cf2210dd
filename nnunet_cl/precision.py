"""Mixed precision of the pre-training step, and the float32 regions inside it.

``--precision`` of ``nnunet_cl pretrain``:

* ``auto`` (default): on CUDA, float16 autocast with a gradient scaler, as nnU-Net's trainer; on CPU
  float32 (CPU autocast is slower than float32 on most CPUs and is only worth it where bfloat16 units exist);
* ``float32``: no autocast;
* ``bfloat16``: bfloat16 autocast (CPU, or a CUDA device that supports it), no gradient scaler
  (bfloat16 has float32's exponent range);
* ``float16``: float16 autocast with a gradient scaler (CUDA only).

Autocast runs convolutions and matrix products in the low precision. The loss code's numerically
sensitive parts opt out with :func:`float32_region`: the contrastive kernel (normalisation, similarity
matrix, log-sum-exp, the pairwise log-sum-exp's custom backward), the instance projection head (pooling
and batch standardisation of nearly equal slice features), JCL's L_ER, and
the nearest-neighbour graphs that turn similarities into weak labels (a rounding difference there flips
an ``argmax``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

from nnunet_cl.errors import NnunetClError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Precision:
    name: str                          # the resolved setting: float32, bfloat16 or float16
    dtype: Optional[torch.dtype]       # autocast dtype; None: no autocast
    uses_grad_scaler: bool

    def autocast(self, device: torch.device):
        """The autocast context of a training step's forward pass (a no-op context for float32)."""
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``--precision`` for ``device``, or a one-line error for a combination the device cannot run."""
    if requested not in PRECISIONS:
        raise NnunetClError(f"--precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if requested == "auto":
        requested = "float16" if cuda else "float32"
    if requested == "float32":
        return Precision("float32", None, False)
    if requested == "float16":
        if not cuda:
            raise NnunetClError("--precision float16 needs -device cuda (its gradient scaler is CUDA-only); on CPU "
                                "use --precision bfloat16 or float32")
        return Precision("float16", torch.float16, True)
    if cuda and not torch.cuda.is_bf16_supported():
        raise NnunetClError("--precision bfloat16: this CUDA device does not support bfloat16; use --precision "
                            "float16 (or auto)")
    return Precision("bfloat16", torch.bfloat16, False)


@contextmanager
def float32_region(tensor: torch.Tensor):
    """Autocast off for ``tensor``'s device inside the block; the block casts its inputs with
    :func:`at_least_float32`."""
    with torch.autocast(tensor.device.type, enabled=False):
        yield


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32; float32 and float64 (the distributed test's precision) unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
