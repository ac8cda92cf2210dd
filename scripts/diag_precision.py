#!/usr/bin/env python
"""Diagnostic (not a test): how far do low-precision gradients of one pre-training step fall from float32 ones?

For each method: one batch (the engine's loader, iteration 0), the engine's network and heads at their
initialisation; the loss and the gradient of every parameter once in float32 and once under CPU autocast
in each low precision (the float32 regions of ``nnunet_cl.precision`` apply as in training). Prints the
loss of each and the cosine between the concatenated gradients (1 = same direction) and their norm ratio.
CPU float16 autocast stands in for CUDA's here (same rounding of the operands; the accumulation may differ).

    nnUNet_raw=... nnUNet_preprocessed=... python scripts/diag_precision.py -d 4 -m pcl supercl --batch-size 32
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def gradient(trainer, batch, dtype):
    parameters = list(trainer.network.parameters()) + list(trainer.method.parameters())
    for parameter in parameters:
        parameter.grad = None
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss, _ = trainer.method.compute_loss(trainer.network, batch)
    loss.backward()
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in parameters])
    return float(loss.detach()), flat


def main() -> None:
    from nnunet_cl.pretraining.engine import PretrainConfig, Pretrainer
    from nnunet_cl.pretraining.loader import BatchLoader

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", dest="dataset", required=True)
    parser.add_argument("-m", dest="methods", nargs="+", default=["pcl"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for name in args.methods:
        trainer = Pretrainer(PretrainConfig(dataset=args.dataset, method=name, batch_size=args.batch_size, epochs=1,
                                            iters_per_epoch=1, seed=args.seed, device="cpu"))
        batch = next(BatchLoader(trainer.method, trainer.slices, args.batch_size, seed=args.seed, rank=0,
                                 first_iteration=0, epochs=1, iters_per_epoch=1, workers=0))
        reference_loss, reference = gradient(trainer, batch, None)
        for dtype in (torch.float16, torch.bfloat16):
            loss, low = gradient(trainer, batch, dtype)
            print(f"{name} batch {args.batch_size} {str(dtype).split('.')[-1]:>8}: loss {loss:.4f} (float32 "
                  f"{reference_loss:.4f}), gradient cosine {float(F.cosine_similarity(reference, low, dim=0)):.4f}, "
                  f"norm ratio {float(low.norm() / reference.norm()):.4f}", flush=True)


if __name__ == "__main__":
    main()
