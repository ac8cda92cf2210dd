"""Projection heads. They live outside the nnU-Net network so that ``network_weights`` stays a plain
PlainConvUNet state dict that stock nnU-Net can load."""

from __future__ import annotations

from torch import nn


class InstanceProjectionHead(nn.Module):
    """Global average pool -> Linear -> ReLU -> Linear (the PCL/SimCLR head)."""

    def __init__(self, in_channels: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, feature_map):
        pooled = feature_map.mean(dim=tuple(range(2, feature_map.dim())))
        return self.mlp(pooled)


class PixelProjectionHead(nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv: one embedding per pixel of a feature map."""

    def __init__(self, in_channels: int, hidden_dim: int = 128, out_dim: int = 64, conv_op=nn.Conv2d):
        super().__init__()
        self.net = nn.Sequential(conv_op(in_channels, hidden_dim, 1), nn.ReLU(inplace=True),
                                 conv_op(hidden_dim, out_dim, 1))

    def forward(self, feature_map):
        return self.net(feature_map)
