"""Pre-training checkpoints: format, atomic writing, validated loading, partial weight transfer.

Format (a dict, nnU-Net style, so stock ``nnUNetv2_train -pretrained_weights`` accepts it too)::

    network_weights         complete state dict of the nnU-Net network (PlainConvUNet of the plans)
    nnunet_cl_format        1
    method                  e.g. "pcl"
    dataset_name, plans_identifier, configuration
    architecture_fingerprint  see nnunet_context.architecture_fingerprint
    pretrained_prefixes     key prefixes that pre-training actually trained (e.g. ["encoder."])
    heads                   state dict of the projection heads (outside the U-Net)
    optimizer_state, current_epoch, iteration, logging, config, world_size, rng_state   (for --c)
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import torch

from nnunet_cl.atomic import atomic_torch_save
from nnunet_cl.errors import NnunetClError
from nnunet_cl.nnunet_context import architecture_fingerprint

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("network_weights", "method", "architecture_fingerprint", "pretrained_prefixes", "plans_identifier")


def save_checkpoint(checkpoint: dict, path: str) -> None:
    checkpoint = dict(checkpoint, nnunet_cl_format=CHECKPOINT_FORMAT)
    atomic_torch_save(checkpoint, path)


def load_checkpoint(path: str, pretrain_hint: str = "") -> dict:
    """Load on CPU and validate; every failure is one clear ``NnunetClError``."""
    if not os.path.isfile(path):
        hint = f" {pretrain_hint}" if pretrain_hint else ""
        raise NnunetClError(f"pre-trained checkpoint {path} does not exist;{hint or ' run nnunet_cl pretrain first'}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise NnunetClError(f"checkpoint {path} is corrupt or not a torch file ({type(e).__name__}); "
                            "delete it and pre-train again (or resume with --c from checkpoint_latest.pth)")
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        raise NnunetClError(f"{path} is not an nnunet_cl pre-training checkpoint (missing "
                            f"{[k for k in REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]})")
    return checkpoint


def non_finite_tensors(state_dict: dict) -> list:
    """Keys of floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def select_prefixed(state_dict: dict, prefixes: Iterable[str]) -> dict:
    prefixes = tuple(prefixes)
    return {k: v for k, v in state_dict.items() if k.startswith(prefixes)}


def load_pretrained_part(network, checkpoint: dict, path: str = "checkpoint",
                         expected_method: Optional[str] = None, prefixes: Optional[Iterable[str]] = None) -> list[str]:
    """Copy the pre-trained keys of ``checkpoint`` into ``network``; everything else keeps its init.
    ``prefixes`` (default: the checkpoint's ``pretrained_prefixes``) selects a part of them.

    Refuses (clear error) a checkpoint of another method or of another architecture, naming the
    mismatched keys and the fix. Returns the loaded keys.
    """
    if expected_method is not None and checkpoint["method"] != expected_method:
        raise NnunetClError(f"{path} was pre-trained with method {checkpoint['method']!r}, not {expected_method!r}; "
                            f"point to a {expected_method} checkpoint or use the matching Init trainer")
    own = network.state_dict()
    prefixes = list(checkpoint["pretrained_prefixes"] if prefixes is None else prefixes)
    pretrained = select_prefixed(checkpoint["network_weights"], prefixes)
    mismatched = [k for k, v in pretrained.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if mismatched or checkpoint["architecture_fingerprint"] != architecture_fingerprint(network):
        detail = ", ".join(f"{k} {tuple(pretrained[k].shape)} vs "
                           f"{tuple(own[k].shape) if k in own else 'missing'}" for k in mismatched[:3])
        raise NnunetClError(
            f"{path} was pre-trained for another architecture (plans {checkpoint['plans_identifier']!r}"
            + (f"; mismatched keys: {detail}" if detail else "") + "); pre-train with the same plans as the "
            "fine-tuning run, or copy the plans with nnUNetv2_move_plans_between_datasets")
    if not pretrained:
        raise NnunetClError(f"{path} holds no weights under the prefixes {prefixes}")
    broken = non_finite_tensors(pretrained)
    if broken:
        raise NnunetClError(f"{path} holds NaN/inf weights in {len(broken)} of its {len(pretrained)} pre-trained "
                            f"tensors (e.g. {broken[0]}): it cannot initialise training; pre-train again (lower --lr)")
    network.load_state_dict(pretrained, strict=False)
    return sorted(pretrained)
