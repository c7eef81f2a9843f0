"""DenseHybrid's outlier head on Mask2Former (RbA paper, appendix C.3, Eq. 16)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DenseHybridOutlierHead"]


class DenseHybridOutlierHead(nn.Module):
    """D(x) = Conv3x3(ReLU(BatchNorm(x))): inlier / outlier logits for every pixel of the pixel
    decoder's highest-resolution features.

    Input B x C x H x W; output B x 2 x H x W (channel 1 = outlier).
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, 2, kernel_size=3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.norm(features)))
