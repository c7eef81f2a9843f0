"""Detectron2's DeepLabV3+ head run in the pieces of the per-pixel head protocol (see
:mod:`rba_plugin.modeling.pixel.heads`).

:class:`PixelDeepLabV3PlusHead` is Detectron2's ``DeepLabV3PlusHead`` (same parameters and
state-dict keys) with these pieces, and with the ASPP's image pooling global, as in the official
DeepLabV3+ networks of PEBAL, RPL, DenseHybrid and RAML (``AdaptiveAvgPool2d(1)``), so it runs on
any image size. Detectron2 pools over the training crop's window instead (``pool_kernel_size`` =
crop / stride): identical on training crops, but it only accepts inputs whose feature map the
window tiles (a Cityscapes 512x1024 crop refuses every 720x1280 Road Anomaly frame) and pools
locally on larger ones.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.deeplab import DeepLabV3PlusHead
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PixelDeepLabV3PlusHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class PixelDeepLabV3PlusHead(DeepLabV3PlusHead):
    """Detectron2's DeepLabV3+ head run in pieces (see :mod:`rba_plugin.modeling.pixel.heads`).

    ``layers`` goes ASPP (coarsest feature) -> for each finer level: upsample, concatenate with
    the projected low-level feature, ``fuse_conv``; then the 1x1 ``predictor``. ``decode`` stops
    before the last (finest) ``fuse_conv``; the pieces reproduce ``layers`` exactly (same ops, same
    order), so ``classify(decode(x))`` is bit-identical to ``layers(x)``.
    """

    predictor_prefix = "predictor"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.aspp.pool_kernel_size is not None:
            raise ValueError(
                "PixelDeepLabV3PlusHead pools its ASPP globally (the official networks' image pooling); "
                f"got train_size {tuple(self.aspp.pool_kernel_size)} (pass train_size=None)"
            )
        if self.decoder_only or len(self.in_features) < 2:
            raise ValueError(
                "PixelDeepLabV3PlusHead needs a predictor and at least one low-level feature "
                f"(MODEL.SEM_SEG_HEAD.IN_FEATURES of length >= 2, got {self.in_features})"
            )

    @classmethod
    def from_config(cls, cfg, input_shape):
        # Detectron2 derives a fixed pooling window from an enabled crop; the global pooling
        # needs none (and so accepts any crop type).
        without_crop = cfg.clone()
        without_crop.defrost()
        without_crop.INPUT.CROP.ENABLED = False
        return super().from_config(without_crop, input_shape)

    @property
    def finest_feature(self) -> str:
        """Backbone feature of the last decoder stage (e.g. ``"res2"``)."""
        return self.in_features[0]

    @property
    def coarse_feature(self) -> str:
        """Backbone feature the ASPP reads (e.g. ``"res5"``)."""
        return self.in_features[-1]

    @property
    def aspp_prefix(self) -> str:
        """Head-relative name of the ASPP module (RPL copies its weights)."""
        return f"decoder.{self.coarse_feature}.project_conv"

    @property
    def aspp(self) -> nn.Module:
        return self.decoder[self.coarse_feature]["project_conv"]

    @property
    def coarse_in_channels(self) -> int:
        return self.aspp.convs[0].in_channels

    @property
    def decoder_in_channels(self) -> int:
        """Channels of the last ``fuse_conv``'s input (projected low-level + upsampled coarser)."""
        return self.decoder[self.finest_feature]["fuse_conv"][0].in_channels

    @property
    def feature_channels(self) -> int:
        return self.predictor.in_channels

    @property
    def classification_block(self) -> List[str]:
        """Head-relative prefixes of the final classification block: last ``fuse_conv`` + predictor."""
        return [f"decoder.{self.finest_feature}.fuse_conv", "predictor"]

    def decode(self, features: Dict[str, Tensor]) -> Tensor:
        """The input of the last ``fuse_conv``: N x decoder_in_channels x H/s x W/s."""
        y = None
        for f in self.in_features[::-1]:
            proj_x = self.decoder[f]["project_conv"](features[f])
            if self.decoder[f]["fuse_conv"] is None:
                y = proj_x
                continue
            y = F.interpolate(y, size=proj_x.size()[2:], mode="bilinear", align_corners=False)
            y = torch.cat([proj_x, y], dim=1)
            if f != self.finest_feature:
                y = self.decoder[f]["fuse_conv"](y)
        return y

    def decoder_features(self, dec_in: Tensor) -> Tensor:
        """The last ``fuse_conv``: N x feature_channels x H/s x W/s."""
        return self.decoder[self.finest_feature]["fuse_conv"](dec_in)

    def predict(self, feats: Tensor) -> Tensor:
        """Class logits at the decoder's stride, N x C x H/s x W/s."""
        return self.predictor(feats)

    def classify(self, dec_in: Tensor) -> Tensor:
        return self.predict(self.decoder_features(dec_in))

    def upsample(self, x: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
        """From the decoder's stride to the input's, as the head itself upsamples its logits
        (bilinear, ``align_corners=False``, ``deeplab/semantic_seg.py``): by ``common_stride``.
        ``size`` (the padded input's H x W) is that size for inputs padded to the backbone's
        divisibility, and the scale factor gives the same numbers; otherwise it is the target."""
        if size is None or tuple(size) == tuple(s * self.common_stride for s in x.shape[-2:]):
            return F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
