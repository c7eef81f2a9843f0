"""RAML's DeepLabV3+ metric head (``DeepLabHeadV3Plus_Metric``) as a Detectron2 head.

Reproduces ``DeepLabHeadV3Plus_Metric`` and the output part of ``_SimpleSegmentationModel_Metric``
in ``incremental/network/utils.py`` (czifan/RAML @ 670be90, from VainF's DeepLabV3Plus-Pytorch):

- ``project``: 1x1 conv 256 -> 48 + BN + ReLU on the stride-4 ``layer1`` feature;
- ``aspp``: VainF / torchvision ASPP on ``layer4`` with the pooling branch last
  (``convs.0`` 1x1, ``convs.1-3`` dilated 3x3, ``convs.4`` image pool) and a 1x1 projection
  1280 -> 256 + BN + ReLU + Dropout(0.1); rates 6/12/18 at stride 16, 12/24/36 at stride 8;
- ``conv1`` (3x3 304 -> 256, no bias) + ``bn`` + ReLU gives the 256-d feature at stride 4;
- ``conv2`` (1x1 256 -> N, bias) the closed-set logits, ``conv3`` (1x1 N -> 20, bias) applied to
  the *logits* and passed through a sigmoid *before* upsampling gives the 20 "meta channels"
  (channels N..19 are RAML's MCA meta channels);
- every resize is bilinear with ``align_corners=False``.

The ASPP is torchvision's ``torchvision.models.segmentation.deeplabv3.ASPP`` (same structure and
keys as VainF's) with its projection dropout set to VainF's 0.1 (torchvision uses 0.5).
State-dict keys are exactly the official ``classifier.*`` keys without ``classifier.``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from .wider_deeplab import aspp_rates_for_stride

__all__ = ["RAMLDeepLabV3PlusHead", "meta_reconstruction", "upsample_bilinear"]


def upsample_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of B x C x h x w to ``size`` with ``align_corners=False`` (RAML / VainF)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def meta_reconstruction(meta_channels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """RAML's reconstruction ``outputs3 = (outputs2.unsqueeze(1) * x.unsqueeze(2)).sum(2)``.

    Args:
        meta_channels: B x M x H x W (the upsampled sigmoid outputs, all M = 20 channels).
        image: B x 3 x H x W, the *normalised* network input.

    Returns:
        B x 3 x H x W. Note that this equals ``image * meta_channels.sum(1, keepdim=True)``: the
        official reconstruction scales each pixel by the sum of all 20 channels (known ones
        included); it is kept in the official form so it matches it to the last bit.
    """
    return (meta_channels.unsqueeze(1) * image.unsqueeze(2)).sum(2)


@SEM_SEG_HEADS_REGISTRY.register()
class RAMLDeepLabV3PlusHead(nn.Module):
    """RAML's DeepLabV3+ metric head.

    API for the method code:

    - :meth:`decode` ``(features) -> B x 256 x h4 x w4``: the decoder feature (after
      ``conv1``-``bn``-ReLU) at the stride of the low-level feature, not upsampled.
    - :meth:`classify` ``(feature) -> B x N x h4 x w4`` logits (``conv2``).
    - :meth:`meta` ``(logits) -> B x M x h4 x w4`` = sigmoid(``conv3(logits)``), in (0, 1).
    - :meth:`predict` ``(features, output_size) -> {"logits", "meta_channels", "features"}``: the
      official outputs 1, 2 and 3 (logits and meta channels upsampled, features not).
    - ``forward``: the Detectron2 head protocol on the logits.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        meta_outputs: int = 20,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        aspp_dropout: float = 0.1,
        project_channels: int = 48,
        decoder_channels: int = 256,
    ):
        """
        Args:
            input_shape: exactly two features: the finer (``layer1``, 256 ch, stride 4) is
                projected to 48 channels, the coarser (``layer4``, 2048 ch) feeds the ASPP,
                whose rates follow its stride (6/12/18 at 16, 12/24/36 at 8).
            num_classes: N, outputs of ``conv2`` (RAML: 16 in the 16+3 setting, 19 closed-set).
            meta_outputs: outputs of ``conv3``; the official code hard-codes 20.
            ignore_value, loss_weight: of the cross-entropy training loss in ``forward``.
            aspp_dropout: dropout after the ASPP projection (VainF: 0.1).
            project_channels, decoder_channels: the official 48 and 256.

        Raises:
            ValueError: for a number of input features other than two or an ASPP stride other
                than 8 or 16.
        """
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"RAMLDeepLabV3PlusHead: needs a low-level and a coarse feature, got {sorted(input_shape)}")
        (fine_name, fine), (coarse_name, coarse) = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [fine_name, coarse_name]
        self.fine_stride = fine.stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight

        self.project = nn.Sequential(
            nn.Conv2d(fine.channels, project_channels, 1, bias=False),
            nn.BatchNorm2d(project_channels),
            nn.ReLU(inplace=True),
        )
        self.aspp = ASPP(coarse.channels, aspp_rates_for_stride(coarse.stride), decoder_channels)
        self.aspp.project[-1].p = aspp_dropout
        self.conv1 = nn.Conv2d(project_channels + decoder_channels, decoder_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(decoder_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(decoder_channels, num_classes, 1)
        self.conv3 = nn.Conv2d(num_classes, meta_outputs, 1)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        raml_head = cfg.MODEL.get("RAML_HEAD", None)
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "meta_outputs": raml_head.META_OUTPUTS if raml_head is not None else 20,
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
        }

    def decode(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone features -> the B x 256 x h4 x w4 decoder feature (non-negative)."""
        fine, coarse = (features[name] for name in self.in_features)
        low_level = self.project(fine)
        context = upsample_bilinear(self.aspp(coarse), low_level.shape[-2:])
        return self.relu(self.bn(self.conv1(torch.cat([low_level, context], dim=1))))

    def classify(self, feature: torch.Tensor) -> torch.Tensor:
        """Decoder feature -> closed-set logits B x N x h x w (same size)."""
        return self.conv2(feature)

    def meta(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits B x N x h x w -> sigmoid(conv3(logits)), B x M x h x w in (0, 1)."""
        return torch.sigmoid(self.conv3(logits))

    def predict(self, features: Dict[str, torch.Tensor], output_size: Sequence[int]) -> Dict[str, torch.Tensor]:
        """The official outputs for an image of ``output_size`` (H, W).

        Returns:
            ``logits`` B x N x H x W, ``meta_channels`` B x M x H x W (sigmoid taken at stride 4,
            then upsampled, so values stay in (0, 1)), ``features`` B x 256 x h4 x w4.
        """
        feature = self.decode(features)
        logits = self.classify(feature)
        meta = self.meta(logits)
        return {
            "logits": upsample_bilinear(logits, output_size),
            "meta_channels": upsample_bilinear(meta, output_size),
            "features": feature,
        }

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        targets: Optional[torch.Tensor] = None,
        output_size: Optional[Sequence[int]] = None,
    ):
        """Detectron2 head protocol on the closed-set logits.

        ``output_size`` defaults to the targets' size, else the low-level feature size times its
        stride. Returns ``(None, {"loss_sem_seg": ...})`` in training and ``(logits
        B x N x H x W, {})`` in inference.
        """
        logits = self.classify(self.decode(features))
        if output_size is None:
            output_size = targets.shape[-2:] if targets is not None else [s * self.fine_stride for s in logits.shape[-2:]]
        logits = upsample_bilinear(logits, output_size)
        if self.training:
            loss = F.cross_entropy(logits, targets, reduction="mean", ignore_index=self.ignore_value)
            return None, {"loss_sem_seg": loss * self.loss_weight}
        return logits, {}
