"""Building the pixel decoder named by ``MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``.

Pixel decoders live in Detectron2's ``SEM_SEG_HEADS_REGISTRY`` under Mask2Former's names.
"""
from __future__ import annotations

from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

__all__ = ["build_pixel_decoder"]


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The configured pixel decoder; it must provide ``forward_features(features)``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    try:
        decoder_cls = SEM_SEG_HEADS_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME: no pixel decoder named '{name}'") from e
    model = decoder_cls(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME: '{name}' has no forward_features(); it is "
            "not a pixel decoder"
        )
    return model
