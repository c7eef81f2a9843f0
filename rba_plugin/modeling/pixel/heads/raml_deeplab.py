"""RAML's DeepLabV3+ metric head (``DeepLabHeadV3Plus_Metric``), in the pieces of the per-pixel
head protocol (:mod:`rba_plugin.modeling.pixel.heads`).

Reproduces ``DeepLabHeadV3Plus_Metric`` and the output part of ``_SimpleSegmentationModel_Metric``
in ``incremental/network/utils.py`` (czifan/RAML @ 670be90, lines 9-67 and 176-200; VainF's
DeepLabV3Plus-Pytorch with RAML's additions):

- ``project``: 1x1 conv 256 -> 48 + BN + ReLU on the stride-4 ``layer1`` feature;
- ``aspp``: VainF / torchvision ASPP on ``layer4`` with the pooling branch last
  (``convs.0`` 1x1, ``convs.1-3`` dilated 3x3, ``convs.4`` image pool) and a 1x1 projection
  1280 -> 256 + BN + ReLU + Dropout(0.1); rates 6/12/18 at stride 16, 12/24/36 at stride 8;
- ``conv1`` (3x3 304 -> 256, no bias) + ``bn`` + ReLU give the 256-d feature at stride 4 (the
  protocol's ``decoder_features``); ``conv2`` (1x1 256 -> N, bias) the closed-set logits;
- ``conv3`` (1x1 N -> 20, bias; the official code hard-codes 20, ``MODEL.RAML_HEAD.META_OUTPUTS``)
  maps the *logits* to RAML's MCA channels (known classes, then meta channels), which the RAML
  method reads (sigmoid before upsampling);
- every resize is bilinear with ``align_corners=False``.

The ASPP is torchvision's ``torchvision.models.segmentation.deeplabv3.ASPP`` (same structure and
keys as VainF's) with its projection dropout set to VainF's 0.1 (torchvision uses 0.5). Keys are
the official ``classifier.*`` keys below ``classifier.`` (``official_key_prefix``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from ....config import register_config_group
from .wider_deeplab import aspp_rates_for_stride

__all__ = ["RAMLDeepLabV3PlusHead", "add_raml_head_config"]


@register_config_group
def add_raml_head_config(cfg: CfgNode) -> None:
    """``MODEL.RAML_HEAD``: RAML's DeepLabV3+ metric head."""
    cfg.MODEL.RAML_HEAD = CfgNode()
    # Outputs of conv3, the MCA conv on the logits: known classes + meta channels. The official
    # code hard-codes 20 (16 known + 4 meta in the 16+3 setting, 19 + 1 on plain Cityscapes).
    cfg.MODEL.RAML_HEAD.META_OUTPUTS = 20
    cfg.MODEL.RAML_HEAD.ASPP_DROPOUT = 0.1  # VainF's (torchvision's ASPP: 0.5)


@SEM_SEG_HEADS_REGISTRY.register()
class RAMLDeepLabV3PlusHead(nn.Module):
    """RAML's DeepLabV3+ metric head in the per-pixel pieces.

    - :meth:`decode`: ``cat(project(layer1) [48], upsample(aspp(layer4)) [256])`` at stride 4;
    - :meth:`decoder_features`: ``relu(bn(conv1(.)))``, the 256-d feature the official forward
      returns as ``features``; :meth:`predict`: ``conv2``; :meth:`meta`: ``conv3`` on the logits;
    - :meth:`upsample`: bilinear, ``align_corners=False``, to the input size.
    """

    official_key_prefix = "classifier."
    predictor_prefix = "conv2"
    meta_prefix = "conv3"
    aspp_prefix = "aspp"

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
            raise ValueError(
                f"RAMLDeepLabV3PlusHead: needs a low-level and a coarse feature, got {sorted(input_shape)}"
            )
        (fine_name, fine), (coarse_name, coarse) = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [fine_name, coarse_name]
        self.common_stride = fine.stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight

        self.project = nn.Sequential(
            nn.Conv2d(fine.channels, project_channels, 1, bias=False),
            nn.BatchNorm2d(project_channels),
            nn.ReLU(inplace=True),
        )
        self.aspp = ASPP(coarse.channels, list(aspp_rates_for_stride(coarse.stride)), decoder_channels)
        self.aspp.project[-1].p = aspp_dropout
        self.conv1 = nn.Conv2d(project_channels + decoder_channels, decoder_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(decoder_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(decoder_channels, num_classes, 1)
        self.conv3 = nn.Conv2d(num_classes, meta_outputs, 1)
        for module in self.modules():  # DeepLabHeadV3Plus_Metric._init_weight
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "meta_outputs": cfg.MODEL.RAML_HEAD.META_OUTPUTS,
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
            "aspp_dropout": cfg.MODEL.RAML_HEAD.ASPP_DROPOUT,
        }

    # ------------------------------------------------------------------ protocol attributes
    @property
    def finest_feature(self) -> str:
        return self.in_features[0]

    @property
    def coarse_feature(self) -> str:
        return self.in_features[1]

    @property
    def coarse_in_channels(self) -> int:
        return self.aspp.convs[0][0].in_channels

    @property
    def decoder_in_channels(self) -> int:
        return self.conv1.in_channels

    @property
    def feature_channels(self) -> int:
        return self.conv2.in_channels

    @property
    def classification_block(self) -> List[str]:
        return ["conv1", "bn", "conv2"]

    # ------------------------------------------------------------------ pieces
    def decode(self, features: Dict[str, Tensor]) -> Tensor:
        """Backbone features -> B x 304 x h4 x w4, the input of ``conv1``."""
        fine, coarse = (features[name] for name in self.in_features)
        low_level = self.project(fine)
        context = F.interpolate(self.aspp(coarse), size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([low_level, context], dim=1)

    def decoder_features(self, dec_in: Tensor) -> Tensor:
        """The 256-d feature at stride 4 (non-negative): ``relu(bn(conv1(dec_in)))``."""
        return self.relu(self.bn(self.conv1(dec_in)))

    def predict(self, feats: Tensor) -> Tensor:
        """``conv2``: closed-set logits B x N x h4 x w4."""
        return self.conv2(feats)

    def classify(self, dec_in: Tensor) -> Tensor:
        return self.predict(self.decoder_features(dec_in))

    def meta(self, logits: Tensor) -> Tensor:
        """``conv3`` on the logits: B x META_OUTPUTS x h x w pre-activations of the MCA channels."""
        return self.conv3(logits)

    def upsample(self, x: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
        """To ``size`` (the input's H x W; ``common_stride`` x x's size when None), bilinear with
        ``align_corners=False`` as every resize of RAML's model."""
        if size is None:
            size = [s * self.common_stride for s in x.shape[-2:]]
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, features: Dict[str, Tensor], targets: Optional[Tensor] = None):
        """Detectron2's head protocol on the closed-set logits: ``(logits, {})`` in inference,
        ``(None, {"loss_sem_seg": cross-entropy})`` in training."""
        logits = self.classify(self.decode(features))
        if self.training:
            logits = self.upsample(logits, targets.shape[-2:])
            loss = F.cross_entropy(logits, targets, reduction="mean", ignore_index=self.ignore_value)
            return None, {"loss_sem_seg": loss * self.loss_weight}
        return self.upsample(logits), {}
