"""The closed-set segmentation loss of the per-pixel branch (config group
``MODEL.SEM_SEG_HEAD``), as Detectron2's ``DeepLabV3PlusHead.losses`` computes it."""
from __future__ import annotations

from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.projects.deeplab.loss import DeepLabCE
from torch import nn

from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets

__all__ = ["SemSegLoss"]


@LOSS_TERM_REGISTRY.register()
class SemSegLoss(LossTerm):
    """``weight`` x cross-entropy of ``logits`` (N x C x H x W at the labels' size) with pasted
    outliers void: plain ("cross_entropy") or the hardest 20 % of pixels ("hard_pixel_mining",
    DeepLab's bootstrapped CE): ``loss_sem_seg``."""

    inputs = ("logits",)

    @configurable
    def __init__(self, *, loss_type: str = "cross_entropy", weight: float = 1.0, ignore_label: int = 255):
        super().__init__()
        if loss_type == "cross_entropy":
            self.loss = nn.CrossEntropyLoss(reduction="mean", ignore_index=ignore_label)
        elif loss_type == "hard_pixel_mining":
            self.loss = DeepLabCE(ignore_label=ignore_label, top_k_percent_pixels=0.2)
        else:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.LOSS_TYPE must be 'cross_entropy' or 'hard_pixel_mining', got {loss_type!r}")
        self.weight = weight
        self.weights = {"loss_sem_seg": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {"loss_type": head.LOSS_TYPE, "weight": head.LOSS_WEIGHT, "ignore_label": head.IGNORE_VALUE}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        return {"loss_sem_seg": self.loss(outputs["logits"], targets.without_outliers()) * self.weight}
