"""DenseHybrid's own modules on the WRN-38 DeepLabV3+: the OOD head and the input normalisation.

Reproduces ``_BNReluConv`` as used for ``logits_ood`` and the normalisation inside
``DeepWV3PlusTH.forward`` (``models/deeplabv3/deeplabv3.py``, matejgrcic/DenseHybrid @ 742ceab).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["DenseHybridOODHead", "ImageNormalizer", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DenseHybridOODHead(nn.Module):
    """``logits_ood = _BNReluConv(304, 2, k=1, bias=True)``: BN -> ReLU -> 1x1 conv with bias.

    Input: the decoder input ``dec0`` (B x 304 x h2 x w2, stride 2); output B x 2 x h2 x w2 logits
    of (inlier, outlier). Keys: ``norm.*`` (BatchNorm, momentum 0.01 as the official
    ``batchnorm_momentum``) and ``conv.{weight,bias}``. (``rba_plugin.modeling.heads.outlier_head``
    holds the 3x3 variant RbA uses on Mask2Former.)
    """

    def __init__(self, in_channels: int = 304, num_outputs: int = 2, kernel_size: int = 1):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, momentum=0.01)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, num_outputs, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm returns a new tensor, so the in-place ReLU never touches dec0 itself.
        return self.conv(self.relu(self.norm(x)))


class ImageNormalizer(nn.Module):
    """``(x / scale - mean) / std`` per channel, in float32, with the official operation order.

    DenseHybrid's ``DeepWV3PlusTH.forward`` receives ``ToTensor`` images in [0, 1] and computes
    ``(inp - mean) / std`` itself: use ``scale=1``. With ``scale=255`` a 0..255 image (Detectron2's
    input) gives exactly torchvision's ``Normalize(mean, std)(ToTensor()(image))``, which is what
    PEBAL, RPL and RAML feed their networks. mean / std are non-persistent buffers: no keys.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x C x H x W (float, or uint8 when scale is 255) -> normalised float32 image."""
        x = x.float()
        if self.scale != 1.0:
            x = x / self.scale
        return (x - self.mean) / self.std
