"""The DeepLabV3+ decoder of NVIDIA's WideResNet-38 ``DeepWV3Plus`` (PEBAL, RPL, DenseHybrid).

Reproduces ``_AtrousSpatialPyramidPoolingModule`` and the decoder part of ``DeepWV3Plus`` in
``code/model/wide_network.py`` (tianyu0207/PEBAL @ 0293bee); the same modules are in
``rpl_corocl.code/model/wide_network.py`` (yyliu01/RPL) and ``models/deeplabv3/deeplabv3.py``
(matejgrcic/DenseHybrid). Unlike Detectron2's ``DeepLabV3PlusHead`` this decoder

- runs at the stride of the *fine* feature (``mod2``, stride 2), not stride 4;
- keeps the ASPP output as the concatenation [image pool, 1x1, r12, r24, r36] (1280 channels,
  no projection), reduced by ``bot_aspp`` (1x1, no BN) and fused with ``bot_fine`` (1x1, no BN);
- classifies with ``final`` = 3x3 conv - BN - ReLU - 3x3 conv - BN - ReLU - 1x1 conv, no biases;
- upsamples bilinearly with ``align_corners=True`` everywhere.

State-dict keys are exactly the official ones: ``aspp.features.{0..3}.{0,1}.*``,
``aspp.img_conv.{0,1}.*``, ``bot_fine.weight``, ``bot_aspp.weight``, ``final.{0,1,3,4,6}.*``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

__all__ = ["DeepWV3PlusHead", "WiderASPP", "aspp_rates_for_stride", "upsample_align_corners"]


def upsample_align_corners(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of B x C x h x w to ``size`` with ``align_corners=True`` (the official
    ``mynn.Upsample`` that every WRN-38 model uses)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def aspp_rates_for_stride(stride: int, base_rates: Sequence[int] = (6, 12, 18)) -> Tuple[int, ...]:
    """ASPP dilation rates for a feature at ``stride``: the base rates at 16, doubled at 8.

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
    [image pool, 1x1, rate 1, rate 2, rate 3]: B x 5*channels x h x w, non-negative.
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
    def out_channels(self) -> int:
        return self.img_conv[0].out_channels * (1 + len(self.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = upsample_align_corners(self.img_conv(self.img_pooling(x)), x.shape[-2:])
        return torch.cat([pooled] + [branch(x) for branch in self.features], dim=1)


@SEM_SEG_HEADS_REGISTRY.register()
class DeepWV3PlusHead(nn.Module):
    """WRN-38 DeepLabV3+ decoder with access to its inside.

    The forward pass is split so per-pixel OOD methods can read or alter the decoder input:

    - :meth:`decode` ``(features) -> {"aspp", "dec0"}``: ``aspp`` is the 1280-channel ASPP output
      at the coarse stride (8), ``dec0`` the 304-channel decoder input
      ``cat(bot_fine(fine) [48], upsample(bot_aspp(aspp)) [256])`` at the fine stride (2).
    - :meth:`classify` ``(dec0) -> logits`` at the fine stride: ``final(dec0)``. RPL calls it
      twice (on ``dec0`` and on ``dec0 + residual``); DenseHybrid reads ``dec0`` for its OOD head.
    - :meth:`upsample` ``(logits, size)``: bilinear, ``align_corners=True``, to the image size.

    ``forward`` chains them as the official ``DeepWV3Plus.forward`` (Detectron2 head protocol).
    """

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
            num_classes: outputs of ``final`` (PEBAL's released model: 20 = 19 + abstention).
            ignore_value: label ignored by the training loss.
            loss_weight: weight of the cross-entropy training loss.
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
        self.fine_stride = fine.stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight

        self.aspp_rates = aspp_rates_for_stride(coarse.stride)
        self.aspp = WiderASPP(coarse.channels, aspp_channels, self.aspp_rates, norm)
        self.bot_fine = nn.Conv2d(fine.channels, fine_channels, kernel_size=1, bias=False)
        self.bot_aspp = nn.Conv2d(self.aspp.out_channels, decoder_channels, kernel_size=1, bias=False)
        self.decoder_in_channels = fine_channels + decoder_channels
        self.final = nn.Sequential(
            nn.Conv2d(self.decoder_in_channels, decoder_channels, 3, padding=1, bias=False),
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
        wrn = cfg.MODEL.get("WIDE_RESNET", None)
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
            # The official code uses one Norm2d for trunk and decoder: follow the trunk's setting.
            "norm": "SyncBN" if wrn is not None and wrn.DIST_BN else "BN",
        }

    def decode(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Backbone features -> ``{"aspp": B x 1280 x h8 x w8, "dec0": B x 304 x h2 x w2}``."""
        fine, coarse = (features[name] for name in self.in_features)
        aspp = self.aspp(coarse)
        coarse_up = upsample_align_corners(self.bot_aspp(aspp), fine.shape[-2:])
        return {"aspp": aspp, "dec0": torch.cat([self.bot_fine(fine), coarse_up], dim=1)}

    def classify(self, dec0: torch.Tensor) -> torch.Tensor:
        """Decoder input B x 304 x h x w -> logits B x num_classes x h x w (same size)."""
        return self.final(dec0)

    def upsample(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Resize B x C x h x w logits to ``size`` (bilinear, ``align_corners=True``)."""
        return upsample_align_corners(logits, size)

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        targets: Optional[torch.Tensor] = None,
        output_size: Optional[Sequence[int]] = None,
    ):
        """Detectron2 head protocol.

        Args:
            features: backbone outputs with the two ``in_features``.
            targets: B x H x W integer labels (training only).
            output_size: (H, W) of the logits in inference; the image size gives the official
                output. Defaults to the targets' size, else the fine feature size times its
                stride (exact for image sides that are multiples of the coarse stride).

        Returns:
            training: ``(None, {"loss_sem_seg": cross-entropy})``; inference: ``(logits
            B x num_classes x H x W, {})``.
        """
        logits = self.classify(self.decode(features)["dec0"])
        if output_size is None:
            output_size = targets.shape[-2:] if targets is not None else [s * self.fine_stride for s in logits.shape[-2:]]
        logits = self.upsample(logits, output_size)
        if self.training:
            return None, self.losses(logits, targets)
        return logits, {}

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Mean cross-entropy over non-ignored pixels of full-size logits, times ``loss_weight``."""
        loss = F.cross_entropy(logits, targets, reduction="mean", ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}
