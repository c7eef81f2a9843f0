"""PEBAL's loss terms (Tian et al., ECCV 2022): pixel-wise anomaly abstention (PAL), the energy
hinge, and the smoothness and sparsity regularisers of the energy map.

Each term exists for both branches: the per-pixel PEBAL (config group ``MODEL.PEBAL``; inputs
``logits``, the C+1 logits whose last channel abstains, and ``energy``) and PEBAL inside
Mask2Former (RbA paper appendix C.3; RbA's keys ``MODEL.MASK_FORMER.GAMBLER_*`` / ``PEBAL_*`` /
``SMOOTHNESS_*`` / ``SPARSITY_*``; inputs ``class_scores_and_no_object``, L with the no-object
column kept as the abstention class, and ``energy``). The math is in
:mod:`rba_plugin.modeling.ood.losses`.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
from detectron2.config import configurable

from ..ood.losses import energy_hinge_loss, energy_smoothness_loss, energy_sparsity_loss, pal_loss
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, check_choice, register_term_alias

__all__ = [
    "PEBALAbstention",
    "PEBALEnergyHinge",
    "PEBALSmoothness",
    "PEBALSparsity",
    "MaskFormerPEBALAbstention",
    "MaskFormerPEBALEnergyHinge",
    "MaskFormerEnergySmoothness",
    "MaskFormerEnergySparsity",
]


@register_term_alias
def maskformer_pebal_terms(cfg) -> List[str]:
    """RbA's GAMBLER_LOSS (+ SMOOTHNESS_LOSS, SPARSITY_LOSS) as term names."""
    mf = cfg.MODEL.MASK_FORMER
    if (mf.SMOOTHNESS_LOSS or mf.SPARSITY_LOSS) and not mf.GAMBLER_LOSS:
        raise ValueError(
            "MODEL.MASK_FORMER.SMOOTHNESS_LOSS / SPARSITY_LOSS are PEBAL's regularisers here: "
            "set MODEL.MASK_FORMER.GAMBLER_LOSS too"
        )
    if not mf.GAMBLER_LOSS:
        return []
    names = ["MaskFormerPEBALAbstention", "MaskFormerPEBALEnergyHinge"]
    if mf.SMOOTHNESS_LOSS:
        names.append("MaskFormerEnergySmoothness")
    if mf.SPARSITY_LOSS:
        names.append("MaskFormerEnergySparsity")
    return names


# --- per-pixel PEBAL (MODEL.PEBAL) -----------------------------------------------------------


@LOSS_TERM_REGISTRY.register()
class PEBALAbstention(LossTerm):
    """PAL (PEBAL Eq. 3 with the penalty a = E^2 of Eq. 5) on softmax(``logits``).

    Args:
        outlier_weight: weight of the outlier pixels' part (PAL_OUTLIER_WEIGHT).
        outlier_classes: "all" Y+1 labels (paper) or the Y "inlier" ones (PAL_OUTLIER_CLASSES).
        detach_penalty: stop gradients through the penalty (DETACH_PENALTY).
        key / weight: the output key and its factor.
    """

    inputs = ("logits", "energy")

    @configurable
    def __init__(
        self,
        *,
        outlier_weight: float = 1.0,
        outlier_classes: str = "all",
        detach_penalty: bool = False,
        key: str = "loss_pebal_pal",
        weight: float = 1.0,
    ):
        super().__init__()
        check_choice("MODEL.PEBAL.PAL_OUTLIER_CLASSES", outlier_classes, ("all", "inlier"))
        self.outlier_weight = outlier_weight
        self.outlier_classes = outlier_classes
        self.detach_penalty = detach_penalty
        self.key = key
        self.weights = {key: weight}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        p = cfg.MODEL.PEBAL
        return {
            "outlier_weight": p.PAL_OUTLIER_WEIGHT,
            "outlier_classes": p.PAL_OUTLIER_CLASSES,
            "detach_penalty": p.DETACH_PENALTY,
        }

    def probabilities(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """N x (C+1) x H x W class probabilities, the last one abstaining."""
        return outputs["logits"].softmax(dim=1)

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: PixelTargets) -> Dict[str, torch.Tensor]:
        energy = outputs["energy"]
        loss = pal_loss(
            self.probabilities(outputs),
            energy.detach() if self.detach_penalty else energy,
            targets.labels,
            outlier_weight=self.outlier_weight,
            outlier_classes=self.outlier_classes,
            ood_label=targets.ood_label,
            ignore_label=targets.ignore_label,
        )
        return {self.key: loss}


@LOSS_TERM_REGISTRY.register()
class PEBALEnergyHinge(LossTerm):
    """``weight`` x (PEBAL Eqs. 6-7): mean_in max(0, E - m_in)^2 + mean_out max(0, m_out - E)^2."""

    inputs = ("energy",)

    @configurable
    def __init__(self, *, m_in: float, m_out: float, weight: float = 0.1, key: str = "loss_pebal_energy"):
        super().__init__()
        self.m_in = m_in
        self.m_out = m_out
        self.weight = weight
        self.key = key
        self.weights = {key: 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        p = cfg.MODEL.PEBAL
        return {"m_in": p.M_IN, "m_out": p.M_OUT, "weight": p.ENERGY_WEIGHT}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        hinge = energy_hinge_loss(outputs["energy"], targets.labels, m_in=self.m_in, m_out=self.m_out,
                                  ood_label=targets.ood_label, ignore_label=targets.ignore_label)
        return {self.key: self.weight * hinge}


@LOSS_TERM_REGISTRY.register()
class PEBALSmoothness(LossTerm):
    """``weight`` x smoothness of the energy map (PEBAL Eq. 8, beta_1 term); ``norm`` "l1"
    (paper) or "l2" (official code, 0.5 squared), ``reduction`` "sum" or "mean"."""

    inputs = ("energy",)

    @configurable
    def __init__(self, *, weight: float, norm: str = "l1", reduction: str = "sum", key: str = "loss_pebal_smooth"):
        super().__init__()
        check_choice("MODEL.PEBAL.SMOOTH_NORM", norm, ("l1", "l2"))
        check_choice("MODEL.PEBAL.REG_REDUCTION", reduction, ("sum", "mean"))
        self.weight = weight
        self.norm = norm
        self.reduction = reduction
        self.key = key
        self.weights = {key: 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        p = cfg.MODEL.PEBAL
        return {"weight": p.SMOOTH_WEIGHT, "norm": p.SMOOTH_NORM, "reduction": p.REG_REDUCTION}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        smooth = energy_smoothness_loss(outputs["energy"], norm=self.norm, reduction=self.reduction)
        return {self.key: self.weight * smooth}


@LOSS_TERM_REGISTRY.register()
class PEBALSparsity(LossTerm):
    """``weight`` x sparsity of the energy map (PEBAL Eq. 8, beta_2 term) over every pixel
    (``on`` "all", paper) or the outlier pixels ("outlier", official code)."""

    inputs = ("energy",)

    @configurable
    def __init__(
        self, *, weight: float, norm: str = "l1", on: str = "all", reduction: str = "sum", key: str = "loss_pebal_sparsity"
    ):
        super().__init__()
        check_choice("MODEL.PEBAL.SPARSITY_NORM", norm, ("l1", "l2"))
        check_choice("MODEL.PEBAL.SPARSITY_ON", on, ("all", "outlier"))
        check_choice("MODEL.PEBAL.REG_REDUCTION", reduction, ("sum", "mean"))
        self.weight = weight
        self.norm = norm
        self.on = on
        self.reduction = reduction
        self.key = key
        self.weights = {key: 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        p = cfg.MODEL.PEBAL
        return {"weight": p.SPARSITY_WEIGHT, "norm": p.SPARSITY_NORM, "on": p.SPARSITY_ON, "reduction": p.REG_REDUCTION}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        mask: Optional[torch.Tensor] = None if self.on == "all" else targets.outlier
        sparse = energy_sparsity_loss(outputs["energy"], mask, norm=self.norm, reduction=self.reduction)
        return {self.key: self.weight * sparse}


# --- PEBAL inside Mask2Former (RbA's keys) ----------------------------------------------------


@LOSS_TERM_REGISTRY.register()
class MaskFormerPEBALAbstention(PEBALAbstention):
    """PAL on Mask2Former: L with the no-object column as the class probabilities (RbA's
    GAMBLER_LOSS, weight GAMBLER_WEIGHT, outlier part PEBAL_OOD_REG)."""

    inputs = ("class_scores_and_no_object", "energy")
    replaces_mask_losses = True

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {"outlier_weight": mf.PEBAL_OOD_REG, "key": "loss_pal", "weight": mf.GAMBLER_WEIGHT}

    def probabilities(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return outputs["class_scores_and_no_object"]


@LOSS_TERM_REGISTRY.register()
class MaskFormerPEBALEnergyHinge(PEBALEnergyHinge):
    """The energy hinge on Mask2Former (PEBAL_M_IN / PEBAL_M_OUT, weight PEBAL_ENERGY_WEIGHT)."""

    replaces_mask_losses = True

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {"m_in": mf.PEBAL_M_IN, "m_out": mf.PEBAL_M_OUT, "weight": mf.PEBAL_ENERGY_WEIGHT}


@LOSS_TERM_REGISTRY.register()
class MaskFormerEnergySmoothness(PEBALSmoothness):
    """Smoothness on Mask2Former (SMOOTHNESS_LOSS, weight SMOOTHNESS_WEIGHT; L1, summed)."""

    replaces_mask_losses = True

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"weight": cfg.MODEL.MASK_FORMER.SMOOTHNESS_WEIGHT, "key": "loss_smoothness"}


@LOSS_TERM_REGISTRY.register()
class MaskFormerEnergySparsity(PEBALSparsity):
    """Sparsity on Mask2Former (SPARSITY_LOSS, weight SPARSITY_WEIGHT; L1 over every pixel)."""

    replaces_mask_losses = True

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"weight": cfg.MODEL.MASK_FORMER.SPARSITY_WEIGHT, "key": "loss_sparsity"}
