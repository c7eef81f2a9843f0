"""PEBAL (Pixel-wise Energy-biased Abstention Learning) on DeepLabV3+.

The closed-set head gets an abstention class (a (C+1)-th logit from a new 1x1 conv on the same
decoder features, so a closed-set checkpoint loads unchanged); only the final classification
block trains: the last ``fuse_conv`` (3x3 conv + norm twice), the predictor and the abstention
row, as the official ``final`` block. Loss (Eq. 2): PAL (Eq. 3, penalty a = (-E)^2)
+ lambda * energy hinge (Eqs. 6-7) + beta1 * smoothness + beta2 * sparsity (Eq. 8), with the
shared implementations of ``rba_plugin.modeling.ood.losses``. Inference: ``sem_seg`` = the C
inlier logits, ``ood_score`` = smoothed inlier free energy (Eq. 4).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.structures import ImageList
from torch import Tensor, nn

from ..ood.losses import energy_hinge_loss, energy_smoothness_loss, energy_sparsity_loss, inlier_energy, pal_loss
from .deeplab_parts import classification_block_prefixes, decoder_features, decoder_input, upsample_to_input
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod
from .scoring import score_map

__all__ = ["PEBAL"]


@PIXEL_OOD_METHOD_REGISTRY.register()
class PEBAL(PixelOODMethod):
    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        classification_block: List[str],
        ood_label: int,
        ignore_value: int,
        pal_outlier_weight: float = 1.0,
        pal_outlier_classes: str = "all",
        detach_penalty: bool = False,
        energy_weight: float = 0.1,
        m_in: float = -12.0,
        m_out: float = -6.0,
        smooth_weight: float = 5e-4,
        sparsity_weight: float = 3e-6,
        smooth_norm: str = "l1",
        sparsity_norm: str = "l1",
        sparsity_on: str = "all",
        reg_reduction: str = "sum",
        smooth_kernel: int = 7,
        smooth_sigma: float = 1.0,
    ):
        super().__init__()
        for key, value, allowed in (
            ("SPARSITY_ON", sparsity_on, ("all", "outlier")),
            ("SMOOTH_NORM", smooth_norm, ("l1", "l2")),
            ("SPARSITY_NORM", sparsity_norm, ("l1", "l2")),
            ("REG_REDUCTION", reg_reduction, ("sum", "mean")),
            ("PAL_OUTLIER_CLASSES", pal_outlier_classes, ("all", "inlier")),
        ):
            if value not in allowed:
                raise ValueError(f"MODEL.PEBAL.{key} must be one of {allowed}, got {value!r}")
        self.abstain = Conv2d(in_channels, 1, kernel_size=1)
        nn.init.kaiming_normal_(self.abstain.weight)  # as the official extra row
        nn.init.zeros_(self.abstain.bias)
        self.num_classes = num_classes
        self.classification_block = list(classification_block)
        self.ood_label = ood_label
        self.ignore_value = ignore_value
        self.pal_outlier_weight = pal_outlier_weight
        self.pal_outlier_classes = pal_outlier_classes
        self.detach_penalty = detach_penalty
        self.energy_weight = energy_weight
        self.m_in = m_in
        self.m_out = m_out
        self.smooth_weight = smooth_weight
        self.sparsity_weight = sparsity_weight
        self.smooth_norm = smooth_norm
        self.sparsity_norm = sparsity_norm
        self.sparsity_on = sparsity_on
        self.reg_reduction = reg_reduction
        self.smooth_kernel = smooth_kernel
        self.smooth_sigma = smooth_sigma

    @classmethod
    def from_config(cls, cfg, sem_seg_head):
        p = cfg.MODEL.PEBAL
        return {
            "in_channels": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "classification_block": classification_block_prefixes("sem_seg_head", sem_seg_head),
            "ood_label": cfg.INPUT.OOD_LABEL,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "pal_outlier_weight": p.PAL_OUTLIER_WEIGHT,
            "pal_outlier_classes": p.PAL_OUTLIER_CLASSES,
            "detach_penalty": p.DETACH_PENALTY,
            "energy_weight": p.ENERGY_WEIGHT,
            "m_in": p.M_IN,
            "m_out": p.M_OUT,
            "smooth_weight": p.SMOOTH_WEIGHT,
            "sparsity_weight": p.SPARSITY_WEIGHT,
            "smooth_norm": p.SMOOTH_NORM,
            "sparsity_norm": p.SPARSITY_NORM,
            "sparsity_on": p.SPARSITY_ON,
            "reg_reduction": p.REG_REDUCTION,
            "smooth_kernel": cfg.MODEL.PIXEL_OOD.SMOOTH_KERNEL,
            "smooth_sigma": cfg.MODEL.PIXEL_OOD.SMOOTH_SIGMA,
        }

    def trainable_prefixes(self, head_prefix: str = "sem_seg_head") -> List[str]:
        return self.classification_block + ["ood_method.abstain"]

    def logits(self, head: nn.Module, features: Dict[str, Tensor]) -> Tensor:
        """N x (C+1) x H x W logits at the input size; the last channel abstains."""
        feats = decoder_features(head, decoder_input(head, features))
        return upsample_to_input(torch.cat([head.predictor(feats), self.abstain(feats)], dim=1), head)

    def losses(self, head, features, images, targets, batched_inputs, segmentor) -> Dict[str, Tensor]:
        logits = self.logits(head, features)
        energy = inlier_energy(logits, self.num_classes)
        labels = dict(ood_label=self.ood_label, ignore_label=self.ignore_value)
        pal = pal_loss(
            logits.softmax(dim=1),
            energy.detach() if self.detach_penalty else energy,
            targets,
            outlier_weight=self.pal_outlier_weight,
            outlier_classes=self.pal_outlier_classes,
            **labels,
        )
        hinge = energy_hinge_loss(energy, targets, m_in=self.m_in, m_out=self.m_out, **labels)
        smooth = energy_smoothness_loss(energy, norm=self.smooth_norm, reduction=self.reg_reduction)
        sparse_mask = None if self.sparsity_on == "all" else targets == self.ood_label
        sparse = energy_sparsity_loss(energy, sparse_mask, norm=self.sparsity_norm, reduction=self.reg_reduction)
        return {
            "loss_pebal_pal": pal,
            "loss_pebal_energy": self.energy_weight * hinge,
            "loss_pebal_smooth": self.smooth_weight * smooth,
            "loss_pebal_sparsity": self.sparsity_weight * sparse,
        }

    def inference(self, head: nn.Module, features: Dict[str, Tensor], images: ImageList) -> Tuple[Tensor, Tensor, Dict]:
        logits = self.logits(head, features)[:, : self.num_classes]
        return logits, score_map("energy", logits, self.smooth_kernel, self.smooth_sigma), {}
