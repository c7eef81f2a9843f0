"""The interface every per-pixel OOD method implements, and the registry that builds them."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from detectron2.structures import ImageList
from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = ["PIXEL_OOD_METHOD_REGISTRY", "PixelOODMethod", "build_pixel_ood_method", "split_targets"]

PIXEL_OOD_METHOD_REGISTRY = Registry("PIXEL_OOD_METHOD")
PIXEL_OOD_METHOD_REGISTRY.__doc__ = """
Registry of per-pixel OOD methods (RPL, PEBAL, RAML, VCA, the closed-set baseline) used by
:class:`PixelOODSegmentor`. A method is built with ``from_config(cfg, sem_seg_head)``.
"""


class PixelOODMethod(nn.Module):
    """Base class. A method owns its extra modules; the segmentor owns backbone and head.

    Methods receive the head as an argument (never store it as a submodule), so each parameter
    has exactly one name in the segmentor (``backbone.*``, ``sem_seg_head.*``, ``ood_method.*``).
    """

    def trainable_prefixes(self, head_prefix: str = "sem_seg_head") -> Optional[List[str]]:
        """Parameter prefixes (segmentor-relative) that train; ``None`` = everything trains."""
        return None

    def losses(
        self,
        head: nn.Module,
        features: Dict[str, Tensor],
        images: ImageList,
        targets: Tensor,
        batched_inputs: List[dict],
        segmentor: nn.Module,
    ) -> Dict[str, Tensor]:
        """Training losses. ``targets``: N x H x W long (255 void, OOD_LABEL pasted outliers).
        ``segmentor`` gives access to ``backbone`` and ``preprocess_image`` for extra images."""
        raise NotImplementedError

    def inference(
        self, head: nn.Module, features: Dict[str, Tensor], images: ImageList
    ) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """Returns (logits N x C x H x W, ood_score N x H x W, extra N x H x W maps by name),
        all at the padded input size."""
        raise NotImplementedError

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> None:
        """Hook called before loading a state dict; may add keys a base checkpoint lacks."""


def split_targets(targets: Tensor, ood_label: int, ignore_value: int) -> Tuple[Tensor, Tensor]:
    """(inlier mask, outlier mask), both N x H x W bool: inliers are neither void nor pasted."""
    outlier = targets == ood_label
    inlier = ~outlier & (targets != ignore_value)
    return inlier, outlier


def build_pixel_ood_method(cfg, sem_seg_head: nn.Module) -> PixelOODMethod:
    name = cfg.MODEL.PIXEL_OOD.METHOD
    if name not in PIXEL_OOD_METHOD_REGISTRY:
        raise ValueError(
            f"MODEL.PIXEL_OOD.METHOD={name!r} is not registered; known: {sorted(k for k, _ in PIXEL_OOD_METHOD_REGISTRY)}"
        )
    return PIXEL_OOD_METHOD_REGISTRY.get(name)(cfg, sem_seg_head)
