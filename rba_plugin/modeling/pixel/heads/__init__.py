"""Decoder heads of the per-pixel branch: the parts a per-pixel OOD method builds on.

A head of this branch (``MODEL.SEM_SEG_HEAD.NAME``) runs in pieces, so that a method can tap or
alter its inside (RPL adds a residual to the decoder input, PEBAL fine-tunes the classification
block, DenseHybrid reads the decoder input, RAML and VCA read the final features) without
knowing which network it is:

* ``decode(features) -> dec_in``: the input of the final classification block, N x
  ``decoder_in_channels`` x h x w at the stride ``common_stride`` of the backbone feature
  ``finest_feature``;
* ``decoder_features(dec_in) -> feats``: the classification block without its last 1x1 conv
  (``predictor_prefix``), N x ``feature_channels`` x h x w;
* ``predict(feats) -> logits`` and ``classify(dec_in) = predict(decoder_features(dec_in))``;
* ``upsample(x, size=None)``: from the decoder's stride to the input's, as the network upsamples
  its logits: to ``size`` (the padded batch's H x W), or by ``common_stride`` when None;
* ``coarse_feature`` / ``coarse_in_channels`` / ``aspp`` / ``aspp_prefix``: the backbone feature
  the ASPP reads, its channels, the ASPP module and its head-relative name;
* ``classification_block``: the parameter prefixes (head-relative) of the classification block;
  ``predictor_prefix``: the head-relative name of its last 1x1 conv.

A head may declare ``official_key_prefix``: where its keys sit in the official checkpoints of its
network (see :mod:`rba_plugin.modeling.official_keys`).

Heads: :class:`PixelDeepLabV3PlusHead` (Detectron2's ``DeepLabV3PlusHead``, same parameters and
keys), :class:`DeepWV3PlusHead` (NVIDIA's WideResNet-38 DeepLabV3+ of PEBAL, RPL and DenseHybrid),
:class:`RAMLDeepLabV3PlusHead` (RAML's DeepLabV3+ metric head, with its MCA conv ``conv3``).
"""
from __future__ import annotations

from torch import nn

from .deeplab import PixelDeepLabV3PlusHead
from .raml_deeplab import RAMLDeepLabV3PlusHead
from .wider_deeplab import DeepWV3PlusHead, WiderASPP

__all__ = [
    "PIXEL_HEAD_METHODS",
    "check_pixel_head",
    "PixelDeepLabV3PlusHead",
    "DeepWV3PlusHead",
    "WiderASPP",
    "RAMLDeepLabV3PlusHead",
]

# What the per-pixel segmentor needs of its head.
PIXEL_HEAD_METHODS = ("decode", "decoder_features", "predict", "classify", "upsample")


def check_pixel_head(head: nn.Module) -> None:
    """Raise a ValueError naming MODEL.SEM_SEG_HEAD.NAME when ``head`` lacks the per-pixel pieces."""
    missing = [m for m in PIXEL_HEAD_METHODS if not callable(getattr(head, m, None))]
    if missing:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NAME={type(head).__name__!r} is not a head of the per-pixel branch (it lacks "
            f"{', '.join(missing)}); use 'PixelDeepLabV3PlusHead', 'DeepWV3PlusHead', 'RAMLDeepLabV3PlusHead' or "
            "another head with those pieces"
        )
