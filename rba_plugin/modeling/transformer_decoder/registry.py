"""Registry of transformer decoders (the mask-classification predictors)."""
from __future__ import annotations

from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders of mask classification, named by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME.
They are called as ``decoder(cfg, in_channels, mask_classification)``.
"""


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True) -> nn.Module:
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    try:
        decoder_cls = TRANSFORMER_DECODER_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME: no transformer decoder named '{name}'") from e
    return decoder_cls(cfg, in_channels, mask_classification)
