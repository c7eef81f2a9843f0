"""DenseHybrid's outlier head on Mask2Former (RbA paper appendix C.3, Eq. 16; RbA's code
``mask2former_transformer_decoder.py`` ``BNReluConv``, kept by the decoder as ``ood_pred``)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DenseHybridOutlierHead"]


class DenseHybridOutlierHead(nn.Module):
    """D(x) = Conv(ReLU(BatchNorm(x))): inlier / outlier logits for every pixel of the pixel
    decoder's mask features.

    Args:
        in_channels: channels of the mask features.
        kernel_size: 1 (RbA's code) or 3 (the paper's Eq. 16).
        momentum: BatchNorm momentum (RbA's code: 0.01).

    Input B x C x H x W; output B x 2 x H x W (channel 1 = outlier).
    """

    def __init__(self, in_channels: int, kernel_size: int = 1, momentum: float = 0.01):
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"MODEL.MASK_FORMER.DENSE_HYBRID_HEAD_KERNEL must be 1 or 3, got {kernel_size}")
        self.norm = nn.BatchNorm2d(in_channels, momentum=momentum)
        self.conv = nn.Conv2d(in_channels, 2, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.norm(features)))
