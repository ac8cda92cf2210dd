"""Distributed pre-training helpers (torch DDP semantics without wrapping the U-Net).

Launch: ``torchrun --nproc_per_node N -m nnunet_cl pretrain ...`` (gloo on CPU, NCCL on CUDA).
Each rank samples its own slices; embeddings are all-gathered *with gradients* so every contrastive loss
sees the global batch. Every rank then computes the same global loss; the backward of the differentiable
all-gather sums the gradients of all ranks for each rank's embeddings (W x dL/dz_r), and averaging the
parameter gradients over ranks (``average_gradients``) gives exactly the single-process gradient of the
global batch. The U-Net is not wrapped in DDP because methods call its encoder / decoder blocks directly.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device_type: str) -> None:
    if launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank along dim 0 (rank order), differentiably."""
    if world_size() == 1:
        return tensor
    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_gather
        parts = all_gather(tensor.contiguous())
    else:
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat(list(parts))


def gather_views(tensor: torch.Tensor, n_views: int) -> torch.Tensor:
    """Gather a view-major local batch ``[V*b, ...]`` into the view-major global batch ``[V*W*b, ...]``
    (view v of rank r's sample i lands at row v*W*b + r*b + i, the order of concatenating the ranks'
    batches per view)."""
    if world_size() == 1:
        return tensor
    gathered = gather(tensor)                                    # [W*V*b, ...], rank-major
    w, local = world_size(), tensor.shape[0] // n_views
    gathered = gathered.reshape(w, n_views, local, *tensor.shape[1:]).transpose(0, 1)
    return gathered.reshape(n_views * w * local, *tensor.shape[1:])


def average_gradients(parameters) -> None:
    w = world_size()
    if w == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= w


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights."""
    if world_size() == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
