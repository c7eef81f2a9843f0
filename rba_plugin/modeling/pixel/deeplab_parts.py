"""Detectron2's ``DeepLabV3PlusHead`` run in pieces, so methods can tap or alter its inside.

``DeepLabV3PlusHead.layers`` goes ASPP (coarsest feature) -> for each finer level: upsample,
concatenate with the projected low-level feature, ``fuse_conv``; then the 1x1 ``predictor``.
RPL adds its residual to the *input* of the last (finest) ``fuse_conv`` (the 48 + 256 = 304
channel ``dec0`` of the official WideResNet model), PEBAL fine-tunes that last ``fuse_conv`` and
the predictor (the official ``final`` block), RAML and VCA read the last ``fuse_conv``'s output.
The functions below reproduce ``layers`` exactly (same ops, same order), so running them in
sequence gives bit-identical logits.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "decoder_input",
    "decoder_features",
    "head_logits",
    "finest_feature_name",
    "decoder_input_channels",
    "classification_block_prefixes",
    "aspp_feature_name",
    "upsample_to_input",
]


def _check_head(head: nn.Module) -> None:
    if not hasattr(head, "decoder") or len(head.in_features) < 2:
        raise ValueError(
            "per-pixel OOD methods need a DeepLabV3PlusHead with at least one low-level feature "
            f"(MODEL.SEM_SEG_HEAD.NAME='DeepLabV3PlusHead', IN_FEATURES of length >= 2); got {type(head).__name__}"
        )


def finest_feature_name(head: nn.Module) -> str:
    """Name of the backbone feature of the last decoder stage (e.g. ``"res2"``)."""
    _check_head(head)
    return head.in_features[0]


def aspp_feature_name(head: nn.Module) -> str:
    """Name of the backbone feature the ASPP reads (e.g. ``"res5"``)."""
    _check_head(head)
    return head.in_features[-1]


def decoder_input_channels(head: nn.Module) -> int:
    """Channels of the last ``fuse_conv``'s input (projected low-level + upsampled coarser)."""
    first_conv = head.decoder[finest_feature_name(head)]["fuse_conv"][0]
    return first_conv.in_channels


def classification_block_prefixes(head_prefix: str, head: nn.Module) -> list:
    """Parameter prefixes of the final classification block: last ``fuse_conv`` + predictor."""
    name = finest_feature_name(head)
    return [f"{head_prefix}.decoder.{name}.fuse_conv", f"{head_prefix}.predictor"]


def decoder_input(head: nn.Module, features: Dict[str, Tensor]) -> Tensor:
    """The input of the last ``fuse_conv``: N x (project_channels[0] + decoder width) x H/s x W/s."""
    _check_head(head)
    y = None
    for f in head.in_features[::-1]:
        proj_x = head.decoder[f]["project_conv"](features[f])
        if head.decoder[f]["fuse_conv"] is None:
            y = proj_x
            continue
        y = F.interpolate(y, size=proj_x.size()[2:], mode="bilinear", align_corners=False)
        y = torch.cat([proj_x, y], dim=1)
        if f != head.in_features[0]:
            y = head.decoder[f]["fuse_conv"](y)
    return y


def decoder_features(head: nn.Module, dec_in: Tensor) -> Tensor:
    """The last ``fuse_conv`` on :func:`decoder_input`'s output: N x CONVS_DIM x H/s x W/s."""
    return head.decoder[finest_feature_name(head)]["fuse_conv"](dec_in)


def head_logits(head: nn.Module, dec_in: Tensor) -> Tensor:
    """Class logits at the decoder's stride, N x C x H/s x W/s (``predictor(fuse_conv(dec_in))``)."""
    return head.predictor(decoder_features(head, dec_in))


def upsample_to_input(logits: Tensor, head: nn.Module) -> Tensor:
    """Logits upsampled by the head's ``common_stride`` as the head itself does."""
    return F.interpolate(logits, scale_factor=head.common_stride, mode="bilinear", align_corners=False)
