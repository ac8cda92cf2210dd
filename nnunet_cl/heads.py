"""Projection heads. They live outside the nnU-Net network so that ``network_weights`` stays a plain
PlainConvUNet state dict that stock nnU-Net can load."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_cl import distributed
from nnunet_cl.precision import at_least_float32, float32_region


class GlobalBatchStandardization(nn.Module):
    """Batch normalisation over the *global* batch (all ranks under torchrun), always in batch mode.

    ``y = weight * (x - mean) / sqrt(var + eps) + bias`` with mean and (biased) variance of each feature
    over every row of every rank, gathered with gradients, so two processes compute what one process
    computes on the concatenated batch (``nn.SyncBatchNorm`` needs CUDA; plain ``BatchNorm1d`` would use
    each rank's rows only). No running statistics: the layer lives in a projection head that only ever
    sees contrastive batches and is dropped after pre-training.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        batch = distributed.gather(x)
        if batch.shape[0] < 2:
            raise ValueError("batch standardisation needs at least 2 rows in the (global) batch")
        mean = batch.mean(dim=0)
        var = batch.var(dim=0, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class InstanceProjectionHead(nn.Module):
    """Global average pool -> Linear -> batch standardisation -> ReLU -> Linear.

    The standardisation (SimCLR's head has batch norm too; PCL's has none) is what makes instance
    contrast work on nnU-Net's networks: every stage ends in InstanceNorm, so each channel of each slice
    is zero-mean and unit-variance before the LeakyReLU, and the pooled bottleneck is nearly the same
    vector for every slice (cosine ~0.997 between different Hippocampus slices, at initialisation and
    after pre-training; ``scripts/diag_instance_head.py``). Without it the instance loss stays at
    chance, ln(2N - 1), for the whole ``cpu`` budget. Centring over the batch removes the common part
    and brings the per-slice differences to unit scale.
    """

    def __init__(self, in_channels: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        # no bias before the standardisation: it would be subtracted again (and get a zero gradient)
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden_dim, bias=False),
                                 GlobalBatchStandardization(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, feature_map):
        # The whole head in float32 under mixed precision: the pooled features of different slices differ by
        # ~0.2 % (see above), below bfloat16's resolution (0.4 %), and the standardisation amplifies them.
        with float32_region(feature_map):
            pooled = at_least_float32(feature_map).mean(dim=tuple(range(2, feature_map.dim())))
            return self.mlp(pooled)


class PixelProjectionHead(nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv: one embedding per pixel of a feature map."""

    def __init__(self, in_channels: int, hidden_dim: int = 128, out_dim: int = 64, conv_op=nn.Conv2d):
        super().__init__()
        self.net = nn.Sequential(conv_op(in_channels, hidden_dim, 1), nn.ReLU(inplace=True),
                                 conv_op(hidden_dim, out_dim, 1))

    def forward(self, feature_map):
        return self.net(feature_map)
