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

from ...config import declare_key, register_config_group
from ..ood.losses import inlier_energy
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

__all__ = ["PEBAL", "add_pebal_config"]


@register_config_group
def add_pebal_config(cfg: CfgNode) -> None:
    """PEBAL (Tian et al., ECCV 2022). Defaults follow the paper; the official code's values are
    named in the comments."""
    cfg.MODEL.PEBAL = CfgNode()
    # PAL's outlier-pixel term weight: 1 in the paper's Eq. 2; the official code uses 0.1.
    cfg.MODEL.PEBAL.PAL_OUTLIER_WEIGHT = 1.0
    # Targets of an outlier pixel in PAL: "all" Y+1 labels (paper) or the Y inlier ones (code).
    cfg.MODEL.PEBAL.PAL_OUTLIER_CLASSES = "all"
    # Stop gradients through the penalty a = (-E)^2 (official code lets them flow: False).
    cfg.MODEL.PEBAL.DETACH_PENALTY = False
    cfg.MODEL.PEBAL.ENERGY_WEIGHT = 0.1  # lambda of Eq. 2 on the energy hinge
    cfg.MODEL.PEBAL.M_IN = -12.0
    cfg.MODEL.PEBAL.M_OUT = -6.0
    # Eq. 8: beta1 on smoothness, beta2 on sparsity (paper). The official code swaps them:
    # SMOOTH_WEIGHT = 3e-6 with SMOOTH_NORM "l2", SPARSITY_WEIGHT = 5e-4 with SPARSITY_NORM "l2"
    # on outlier pixels only (SPARSITY_ON "outlier").
    cfg.MODEL.PEBAL.SMOOTH_WEIGHT = 5e-4
    cfg.MODEL.PEBAL.SPARSITY_WEIGHT = 3e-6
    cfg.MODEL.PEBAL.SMOOTH_NORM = "l1"  # paper |E - E_N|; code 0.5 (E - E_N)^2
    cfg.MODEL.PEBAL.SPARSITY_NORM = "l1"  # paper |E|; code ||E||_2
    cfg.MODEL.PEBAL.SPARSITY_ON = "all"  # paper: every pixel; code: "outlier"
    # "sum" over pixels (paper and code); "mean" makes the regularisers resolution-independent.
    cfg.MODEL.PEBAL.REG_REDUCTION = "sum"
    declare_key("MODEL.PEBAL.PAL_OUTLIER_CLASSES", choices=("all", "inlier"))
    declare_key("MODEL.PEBAL.SMOOTH_NORM", choices=("l1", "l2"))
    declare_key("MODEL.PEBAL.SPARSITY_NORM", choices=("l1", "l2"))
    declare_key("MODEL.PEBAL.SPARSITY_ON", choices=("all", "outlier"))
    declare_key("MODEL.PEBAL.REG_REDUCTION", choices=("sum", "mean"))


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
