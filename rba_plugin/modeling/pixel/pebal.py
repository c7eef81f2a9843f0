"""PEBAL (Pixel-wise Energy-biased Abstention Learning, Tian et al., ECCV 2022) on a per-pixel head.

The closed-set head gets an abstention class (a (C+1)-th logit from a new 1x1 conv on the same
decoder features, so a closed-set checkpoint loads unchanged); only the final classification
block trains (the head's ``classification_block`` and the abstention row), as the official
``final`` block. Loss (Eq. 2): PAL (Eq. 3, penalty a = (-E)^2) + lambda * energy hinge
(Eqs. 6-7) + beta1 * smoothness + beta2 * sparsity (Eq. 8): the terms ``PEBALAbstention``,
``PEBALEnergyHinge``, ``PEBALSmoothness``, ``PEBALSparsity`` of
:mod:`rba_plugin.modeling.loss_terms.pebal`, config group ``MODEL.PEBAL``. Inference:
``sem_seg`` = the C inlier logits, default score their free energy (Eq. 4), smoothed 7x7.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn

from ...config import register_config_group
from ..ood.losses import inlier_energy
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

__all__ = ["PEBAL", "add_pebal_config"]


@register_config_group
def add_pebal_config(cfg: CfgNode) -> None:
    """PEBAL (Tian et al., ECCV 2022). README: "Losses: official code and papers"."""
    cfg.MODEL.PEBAL = CfgNode()
    # "official": PEBAL's code (losses.py, trainer.py); "paper": Eqs. 2-8 (per-pixel means).
    cfg.MODEL.PEBAL.FORM = "official"
    # Weight of PAL's outlier pixels; None = the form's: 0.1 (code), 1 (paper).
    cfg.MODEL.PEBAL.PAL_OUTLIER_WEIGHT = None
    # lambda: official, the trainer's 0.1 on the whole energy loss (hinge and regularisers);
    # paper, the weight of the hinge.
    cfg.MODEL.PEBAL.ENERGY_WEIGHT = 0.1
    cfg.MODEL.PEBAL.M_IN = -12.0
    cfg.MODEL.PEBAL.M_OUT = -6.0
    # Smoothness / sparsity weights; None = the form's: official 3e-6 / 5e-4 (0.5 x squared
    # differences summed / L2 norm over outlier pixels, inside lambda: effectively 3e-7 / 5e-5);
    # paper beta1 = 5e-4 / beta2 = 3e-6 (|differences| / |E| over every pixel).
    cfg.MODEL.PEBAL.SMOOTH_WEIGHT = None
    cfg.MODEL.PEBAL.SPARSITY_WEIGHT = None


@PIXEL_OOD_METHOD_REGISTRY.register()
class PEBAL(PixelOODMethod):
    """Outputs: training ``logits`` (N x (C+1) x H x W, the last channel abstains) and ``energy``
    (N x H x W inlier free energy); inference ``sem_seg`` = ``class_scores`` = the C inlier logits."""

    default_scores = ("energy",)
    training_outputs = ("logits", "energy")
    default_smoothing_kernel = 7

    @configurable
    def __init__(self, *, in_channels: int, num_classes: int, classification_block: List[str]):
        super().__init__()
        self.abstain = Conv2d(in_channels, 1, kernel_size=1)
        nn.init.kaiming_normal_(self.abstain.weight)  # as the official extra row
        nn.init.zeros_(self.abstain.bias)
        self.num_classes = num_classes
        self.classification_block = list(classification_block)

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        return {
            "in_channels": sem_seg_head.feature_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "classification_block": [f"sem_seg_head.{p}" for p in sem_seg_head.classification_block],
        }

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        return ["PEBALAbstention", "PEBALEnergyHinge", "PEBALSmoothness", "PEBALSparsity"]

    def trainable_prefixes(self) -> List[str]:
        return self.classification_block + ["ood_method.abstain"]

    def logits(self, head, dec_in: Tensor) -> Tensor:
        """N x (C+1) x H x W logits at the input size; the last channel abstains."""
        feats = head.decoder_features(dec_in)
        return head.upsample(torch.cat([head.predict(feats), self.abstain(feats)], dim=1))

    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        logits = self.logits(head, dec_in)
        if self.training:
            return {"logits": logits, "energy": inlier_energy(logits, self.num_classes)}
        inlier = logits[:, : self.num_classes]
        return {"sem_seg": inlier, "class_scores": inlier}
