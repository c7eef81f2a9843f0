"""RAML's MCA conv, one registered structure per network (``MODEL.MCA.CONV``): the 1x1 conv from
the C closed-set logits to the MCA channels (known classes, then K meta channels).

* :class:`HeadMetaConv` (official): the head's own ``conv3`` (RAML's ``DeepLabHeadV3Plus_Metric``,
  ``incremental/network/utils.py`` line 30, czifan/RAML @ 670be90: ``Conv2d(num_classes, 20, 1)``),
  so released RAML checkpoints (``classifier.conv3.*``) load 1:1 and the MCA stage trains it with
  the head;
* :class:`MethodConv`: a conv of the method's own, ``ood_method.mca`` (C -> C + K), for heads
  without one (Detectron2's DeepLabV3+).

A structure is built with ``cls(cfg, head)``; ``pre(head, logits)`` gives the N x (C + K) x h x w
pre-activations.
"""
from __future__ import annotations

from typing import Dict, List

from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..loss_terms.raml import mca_num_meta

__all__ = ["RAML_MCA_CONV_REGISTRY", "HeadMetaConv", "MethodConv", "build_mca_conv"]

RAML_MCA_CONV_REGISTRY = Registry("RAML_MCA_CONV")
RAML_MCA_CONV_REGISTRY.__doc__ = """
RAML's MCA conv per network (``MODEL.MCA.CONV``), built with ``cls(cfg, head)``.
"""


@RAML_MCA_CONV_REGISTRY.register()
class HeadMetaConv(nn.Module):
    """The head's MCA conv (``head.meta``, ``head.meta_prefix``): no module of its own."""

    @configurable
    def __init__(self, *, head: nn.Module, num_classes: int, num_meta: int):
        super().__init__()
        conv = getattr(head, "meta_prefix", None) and head.get_submodule(head.meta_prefix)
        if conv is None:
            raise ValueError(
                f"MODEL.MCA.CONV=HeadMetaConv uses the head's MCA conv; {type(head).__name__} has none "
                f"(RAMLDeepLabV3PlusHead has conv3): use MethodConv"
            )
        if (conv.in_channels, conv.out_channels) != (num_classes, num_classes + num_meta):
            raise ValueError(
                f"MODEL.MCA.CONV=HeadMetaConv: the head's {head.meta_prefix} maps {conv.in_channels} -> "
                f"{conv.out_channels} channels, the MCA needs MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} -> "
                f"{num_classes} + {num_meta} meta (MODEL.MCA.NUM_META): set MODEL.RAML_HEAD.META_OUTPUTS to "
                f"{num_classes + num_meta} (the official network has 20: train with the known classes only)"
            )

    @classmethod
    def from_config(cls, cfg, head) -> Dict:
        return {"head": head, "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "num_meta": mca_num_meta(cfg)}

    def pre(self, head: nn.Module, logits: Tensor) -> Tensor:
        return head.meta(logits)

    def trainable_prefixes(self, own_prefix: str) -> List[str]:
        return []  # part of the head, which the MCA stage trains


@RAML_MCA_CONV_REGISTRY.register()
class MethodConv(Conv2d):
    """A 1x1 conv C -> C + K of the method (``ood_method.mca``)."""

    @configurable
    def __init__(self, *, num_classes: int, num_meta: int):
        super().__init__(num_classes, num_classes + num_meta, kernel_size=1)

    @classmethod
    def from_config(cls, cfg, head) -> Dict:
        return {"num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "num_meta": mca_num_meta(cfg)}

    def pre(self, head: nn.Module, logits: Tensor) -> Tensor:
        return self(logits)

    def trainable_prefixes(self, own_prefix: str) -> List[str]:
        return [own_prefix]


def build_mca_conv(cfg, head: nn.Module) -> nn.Module:
    """The structure named by ``MODEL.MCA.CONV``; a ValueError lists the registered ones."""
    name = cfg.MODEL.MCA.CONV
    if name not in RAML_MCA_CONV_REGISTRY:
        known = sorted(k for k, _ in RAML_MCA_CONV_REGISTRY)
        raise ValueError(f"MODEL.MCA.CONV={name!r} is not registered; known: {known}")
    return RAML_MCA_CONV_REGISTRY.get(name)(cfg, head)
