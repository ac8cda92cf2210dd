"""Function-preserving weight-norm reset of loaded convolutions.

A convolution followed directly by a per-sample normalisation (nnU-Net's InstanceNorm; GroupNorm) computes
the same function when its weight is scaled by a > 0: the normalisation divides the scale out, and the
per-channel bias is removed with the mean. Only the effective learning rate changes (a step moves the
weight's direction by about lr / |w|^2), so weights whose norm grew in pre-training fine-tune more slowly.
``rescale_to_norms`` puts each loaded conv weight back to a reference norm (nnU-Net's initialisation) and
refuses a convolution whose output is not normalised (e.g. the decoder's transposed convolutions): scaling
it would change the network's function.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from nnunet_cl.errors import NnunetClError

RESET_ENV = "nnUNet_cl_weight_norm_reset"


def weight_norm_reset_from_env() -> bool:
    """``nnUNet_cl_weight_norm_reset``: 1 rescales the loaded conv weights, 0 / unset keeps them."""
    value = os.environ.get(RESET_ENV) or "0"
    if value not in ("0", "1"):
        raise NnunetClError(f"{RESET_ENV}={value!r} must be 1 (rescale loaded conv weights to nnU-Net's "
                            f"initialisation norms) or 0 / unset (keep them)")
    return value == "1"


def is_scale_invariant_norm(module: nn.Module) -> bool:
    """Normalisations whose output does not change when their input is scaled: per-sample statistics only
    (BatchNorm's running statistics would no longer match in eval mode)."""
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return not module.track_running_stats
    return isinstance(module, nn.GroupNorm)


def convolutions(network: nn.Module) -> dict:
    """``{name: conv module}`` of every convolution, each under its first (state-dict) name."""
    return {name: m for name, m in network.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def conv_weight_norms(network: nn.Module) -> dict:
    """``{conv name: Frobenius norm of its weight}``."""
    return {name: float(m.weight.detach().norm()) for name, m in convolutions(network).items()}


def convolutions_of_keys(network: nn.Module, keys) -> dict:
    """The convolutions whose weight is among the state-dict ``keys`` (e.g. the keys a checkpoint loaded),
    ``{first name: module}``."""
    keys = set(keys)
    first_name = {id(m): name for name, m in convolutions(network).items()}
    found = {}
    for name, module in network.named_modules(remove_duplicate=False):
        if id(module) in first_name and f"{name}.weight" in keys:
            found[first_name[id(module)]] = module
    return found


def following_module(network: nn.Module, conv: nn.Module):
    """The module applied right after ``conv`` (dropout skipped) in a ``nn.Sequential`` that holds it (nnU-Net's
    ConvDropoutNormReLU runs ``all_modules``: conv, dropout, norm, nonlinearity), or None."""
    for container in network.modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container)
        for i, child in enumerate(children):
            if child is conv:
                rest = [c for c in children[i + 1:] if not isinstance(c, nn.modules.dropout._DropoutNd)]
                return rest[0] if rest else None
    return None


def check_followed_by_normalisation(network: nn.Module, convs: dict) -> None:
    for name, conv in convs.items():
        follower = following_module(network, conv)
        if follower is None or not is_scale_invariant_norm(follower):
            what = type(follower).__name__ if follower is not None else "no normalisation"
            raise NnunetClError(
                f"{RESET_ENV}=1 cannot rescale {name} ({type(conv).__name__}): it is followed by {what}, not by an "
                f"instance / group normalisation, so rescaling would change the network's output; load only the "
                f"encoder (nnUNet_cl_pretrained_parts=encoder, the default) or unset {RESET_ENV}")


@torch.no_grad()
def rescale_to_norms(network: nn.Module, keys, reference_norms: dict) -> dict:
    """Scale the weight of every convolution among ``keys`` to ``reference_norms[name]`` (its bias is left:
    the normalisation removes it). Checks every convolution first, then changes any. Returns
    ``{name: norm before / reference norm}``."""
    convs = convolutions_of_keys(network, keys)
    check_followed_by_normalisation(network, convs)
    ratios = {}
    for name, conv in convs.items():
        norm = float(conv.weight.norm())
        if not norm > 0:
            raise NnunetClError(f"{RESET_ENV}=1 cannot rescale {name}: its loaded weight is all zeros")
        ratios[name] = norm / reference_norms[name]
    for name, conv in convs.items():
        conv.weight.mul_(1.0 / ratios[name])
    return ratios
