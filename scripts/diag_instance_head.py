#!/usr/bin/env python
"""Diagnostic (not a test): how similar are the encoder's globally pooled features of *different* slices?

nnU-Net's PlainConvUNet ends every stage in InstanceNorm + LeakyReLU, so each channel of each slice is
normalised to zero mean and unit variance before the non-linearity; a global average pool then gives
nearly the same vector for every slice. This script prints, per encoder stage, the mean and minimum
cosine similarity between the pooled features of N random slices (different slices, no augmentation)
and, for comparison, between the flattened feature maps, at a random initialisation and for each
pre-training checkpoint given. Cosines near 1 mean an instance head that only pools and applies an
MLP sees (almost) one vector; ``nnunet_cl.heads.InstanceProjectionHead`` explains how it avoids that.

    nnUNet_raw=... nnUNet_preprocessed=... python scripts/diag_instance_head.py -d 4 [checkpoint_final.pth ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_cl.nnunet_context import add_dataset_arguments, load_dataset_context


def cosine_stats(vectors: torch.Tensor) -> tuple[float, float]:
    unit = F.normalize(vectors.flatten(1), dim=1)
    similarity = unit @ unit.T
    off_diagonal = similarity[~torch.eye(len(unit), dtype=torch.bool)]
    return float(off_diagonal.mean()), float(off_diagonal.min())


def report(name: str, network, images: torch.Tensor) -> None:
    network.eval()
    with torch.no_grad():
        for stage, features in enumerate(network.encoder(images)):
            pooled_mean, pooled_min = cosine_stats(features.mean(dim=tuple(range(2, features.dim()))))
            flat_mean, _ = cosine_stats(features)
            print(f"{name:>10} stage {stage} {str(tuple(features.shape[1:])):>16}: pooled cosine mean "
                  f"{pooled_mean:.4f} min {pooled_min:.4f} | flattened map cosine mean {flat_mean:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser, configuration=False)
    parser.add_argument("-n", "--slices", type=int, default=64)
    parser.add_argument("checkpoints", nargs="*")
    args = parser.parse_args()

    from nnunet_cl.pretraining.slices import PreprocessedSlices

    torch.manual_seed(0)
    context = load_dataset_context(args.dataset, args.plans)
    slices = PreprocessedSlices(context.data_folder, context.patch_size)
    windows = slices.sample_windows(args.slices, np.random.default_rng(0))
    images = torch.as_tensor(np.asarray(slices.images(windows)), dtype=torch.float32)
    network = context.build_network(deep_supervision=False)
    print(f"{context.dataset_name}: {args.slices} random slices, patch {tuple(context.patch_size)}")
    report("random", network, images)
    for path in args.checkpoints:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        network.load_state_dict(checkpoint["network_weights"])
        report(checkpoint["method"], network, images)


if __name__ == "__main__":
    main()
