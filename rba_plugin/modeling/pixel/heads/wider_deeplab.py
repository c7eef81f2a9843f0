"""The DeepLabV3+ decoder of NVIDIA's WideResNet-38 ``DeepWV3Plus`` (PEBAL, RPL, DenseHybrid),
in the pieces of the per-pixel head protocol (:mod:`rba_plugin.modeling.pixel.heads`).

Reproduces ``_AtrousSpatialPyramidPoolingModule`` and the decoder part of ``DeepWV3Plus`` in
``code/model/wide_network.py`` (tianyu0207/PEBAL @ 0293bee, lines 9-66 and 69-158); the same
modules are in ``rpl_corocl.code/model/wide_network.py`` (yyliu01/RPL @ 1a327d5) and
``models/deeplabv3/deeplabv3.py`` (matejgrcic/DenseHybrid @ 742ceab, ``DeepWV3PlusTH``). Unlike
Detectron2's ``DeepLabV3PlusHead`` this decoder

- runs at the stride of the *fine* feature (``mod2``, stride 2), not stride 4;
- keeps the ASPP output as the concatenation [image pool, 1x1, r12, r24, r36] (1280 channels,
  no projection), reduced by ``bot_aspp`` (1x1, no BN) and fused with ``bot_fine`` (1x1, no BN);
- classifies with ``final`` = 3x3 conv - BN - ReLU - 3x3 conv - BN - ReLU - 1x1 conv, no biases;
- upsamples bilinearly with ``align_corners=True`` everywhere (the official ``mynn.Upsample``).

State-dict keys are exactly the official ones: ``aspp.features.{0..3}.{0,1}.*``,
``aspp.img_conv.{0,1}.*``, ``bot_fine.weight``, ``bot_aspp.weight``, ``final.{0,1,3,4,6}.*``; in the
official checkpoints they sit at the top level (``official_key_prefix`` "").
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DeepWV3PlusHead", "WiderASPP", "aspp_rates_for_stride", "upsample_align_corners"]


def upsample_align_corners(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of B x C x h x w to ``size`` with ``align_corners=True`` (the official
    ``mynn.Upsample`` that every WRN-38 model uses, ``code/model/mynn.py``)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def aspp_rates_for_stride(stride: int, base_rates: Sequence[int] = (6, 12, 18)) -> Tuple[int, ...]:
    """ASPP dilation rates for a feature at ``stride``: the base rates at 16, doubled at 8
    (``_AtrousSpatialPyramidPoolingModule.__init__``).

    Raises:
        ValueError: for any other stride (the official module refuses them too).
    """
    if stride == 16:
        return tuple(base_rates)
    if stride == 8:
        return tuple(2 * r for r in base_rates)
    raise ValueError(f"ASPP: output stride {stride} not supported (8 or 16)")


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int, norm: str) -> nn.Sequential:
    padding = dilation if kernel_size == 3 else 0
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        get_norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


class WiderASPP(nn.Module):
    """ASPP of DeepWV3Plus (``_AtrousSpatialPyramidPoolingModule``), also RPL's ``atten_aspp``.

    Branches: ``img_conv`` on the global average (upsampled back, ``align_corners=True``), a 1x1
    convolution and three dilated 3x3 convolutions (``features.0`` ... ``features.3``), each
    followed by BN and ReLU. The output is their concatenation in the order
    [image pool, 1x1, rate 1, rate 2, rate 3]: B x 5*channels x h x w, non-negative. The global
    average pooling makes any input size work.
    """

    def __init__(self, in_channels: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36), norm: str = "BN"):
        super().__init__()
        self.features = nn.ModuleList(
            [_conv_norm_relu(in_channels, channels, 1, 1, norm)]
            + [_conv_norm_relu(in_channels, channels, 3, r, norm) for r in rates]
        )
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = _conv_norm_relu(in_channels, channels, 1, 1, norm)

    @property
    def in_channels(self) -> int:
        return self.img_conv[0].in_channels

    @property
    def out_channels(self) -> int:
        return self.img_conv[0].out_channels * (1 + len(self.features))

    def forward(self, x: Tensor) -> Tensor:
        pooled = upsample_align_corners(self.img_conv(self.img_pooling(x)), x.shape[-2:])
        return torch.cat([pooled] + [branch(x) for branch in self.features], dim=1)


@SEM_SEG_HEADS_REGISTRY.register()
class DeepWV3PlusHead(nn.Module):
    """WRN-38 DeepLabV3+ decoder in the per-pixel pieces.

    - :meth:`decode`: ``dec0 = cat(bot_fine(fine) [48], upsample(bot_aspp(aspp(coarse))) [256])``,
      the 304-channel input of ``final`` at the fine stride (2);
    - :meth:`decoder_features`: ``final[:6]`` (256 channels); :meth:`predict`: ``final[6]``;
      :meth:`classify` = ``final(dec0)``, the official op sequence;
    - :meth:`upsample`: bilinear, ``align_corners=True``, to the input size.

    ``forward`` chains them as the official ``DeepWV3Plus.forward`` (Detectron2's head protocol).
    """

    official_key_prefix = ""
    # NVIDIA's checkpoints also hold the training loss's class weights (DeepWV3Plus keeps its
    # criterion); PEBAL's and RPL's load_model skip them ("module.criterion.nll_loss.weight").
    official_unused_keys = ("criterion.",)
    predictor_prefix = "final.6"
    aspp_prefix = "aspp"

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        norm: str = "BN",
        aspp_channels: int = 256,
        fine_channels: int = 48,
        decoder_channels: int = 256,
    ):
        """
        Args:
            input_shape: exactly two features; the finer one (``mod2``, 128 ch, stride 2) feeds
                ``bot_fine``, the coarser one (``mod7``, 4096 ch, stride 8) the ASPP, whose rates
                follow its stride (12/24/36 at 8, 6/12/18 at 16).
            num_classes: outputs of ``final`` (a method may add rows, e.g. PEBAL's abstention).
            ignore_value: label ignored by the training loss of ``forward``.
            loss_weight: weight of that cross-entropy loss.
            norm: Detectron2 norm name of the BatchNorms (``"BN"`` or ``"SyncBN"``).
            aspp_channels, fine_channels, decoder_channels: the official 256, 48 and 256.

        Raises:
            ValueError: for a number of input features other than two or an ASPP stride other
                than 8 or 16.
        """
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"DeepWV3PlusHead: needs a fine and a coarse feature, got {sorted(input_shape)}")
        (fine_name, fine), (coarse_name, coarse) = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [fine_name, coarse_name]
        self.common_stride = fine.stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight

        self.aspp_rates = aspp_rates_for_stride(coarse.stride)
        self.aspp = WiderASPP(coarse.channels, aspp_channels, self.aspp_rates, norm)
        self.bot_fine = nn.Conv2d(fine.channels, fine_channels, kernel_size=1, bias=False)
        self.bot_aspp = nn.Conv2d(self.aspp.out_channels, decoder_channels, kernel_size=1, bias=False)
        self.final = nn.Sequential(
            nn.Conv2d(fine_channels + decoder_channels, decoder_channels, 3, padding=1, bias=False),
            get_norm(norm, decoder_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False),
            get_norm(norm, decoder_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, num_classes, kernel_size=1, bias=False),
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
            # The official code uses one Norm2d for trunk and decoder: follow the trunk's setting.
            "norm": "SyncBN" if cfg.MODEL.WIDE_RESNET.DIST_BN else "BN",
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
        return self.aspp.in_channels

    @property
    def decoder_in_channels(self) -> int:
        return self.final[0].in_channels

    @property
    def feature_channels(self) -> int:
        return self.final[6].in_channels

    @property
    def classification_block(self) -> List[str]:
        """The whole ``final`` block (PEBAL's official fine-tuning trains exactly it)."""
        return ["final"]

    # ------------------------------------------------------------------ pieces
    def decode(self, features: Dict[str, Tensor]) -> Tensor:
        """Backbone features -> ``dec0``, B x 304 x h2 x w2 (``DeepWV3Plus.forward``)."""
        fine, coarse = (features[name] for name in self.in_features)
        coarse_up = upsample_align_corners(self.bot_aspp(self.aspp(coarse)), fine.shape[-2:])
        return torch.cat([self.bot_fine(fine), coarse_up], dim=1)

    def decoder_features(self, dec_in: Tensor) -> Tensor:
        """``final`` without its last conv: B x 256 x h2 x w2."""
        return self.final[:6](dec_in)

    def predict(self, feats: Tensor) -> Tensor:
        """``final.6``: B x num_classes (+ rows a method added) x h2 x w2."""
        return self.final[6](feats)

    def classify(self, dec_in: Tensor) -> Tensor:
        """``final(dec0)``: logits at the decoder's stride."""
        return self.final(dec_in)

    def upsample(self, x: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
        """To ``size`` (the input's H x W; ``common_stride`` x x's size when None), bilinear with
        ``align_corners=True`` as the official ``Upsample(dec1, x_size[2:])``. The trunk rounds
        strides up, so for an odd input side the decoder map is one cell larger than half of it and
        only the explicit size reproduces the official output."""
        if size is None:
            size = [s * self.common_stride for s in x.shape[-2:]]
        return upsample_align_corners(x, size)

    def forward(self, features: Dict[str, Tensor], targets: Optional[Tensor] = None):
        """Detectron2's head protocol: ``(logits B x C x H x W, {})`` in inference (upsampled by
        ``common_stride``); ``(None, {"loss_sem_seg": cross-entropy})`` in training, on logits
        upsampled to the targets' size."""
        logits = self.classify(self.decode(features))
        if self.training:
            logits = self.upsample(logits, targets.shape[-2:])
            loss = F.cross_entropy(logits, targets, reduction="mean", ignore_index=self.ignore_value)
            return None, {"loss_sem_seg": loss * self.loss_weight}
        return self.upsample(logits), {}
