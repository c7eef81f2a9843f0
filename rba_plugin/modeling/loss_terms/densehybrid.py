"""DenseHybrid's objective inside Mask2Former (RbA paper appendix C.3, Eqs. 16-18): cross-entropy
of L on inliers, the outlier head's cross-entropy (beta1) and the density term (beta2).

RbA's keys select it: ``MODEL.MASK_FORMER.DENSE_HYBRID_LOSS`` (which also adds the outlier head),
``DENSE_HYBRID_BETA`` (beta2) and ``DENSE_HYBRID_WEIGHT`` (the factor of each of the three outputs);
ours: ``DENSE_HYBRID_HEAD_WEIGHT`` (beta1; None = 10 x beta2 as RbA's code) and
``DENSE_HYBRID_FORM`` ("official": RbA's ``criterion.py`` ``loss_densehybrid``; "paper": appendix
C.3, see :func:`rba_plugin.modeling.ood.losses.densehybrid_loss`) and
``DENSE_HYBRID_KEEP_MASK_LOSSES`` (False, as RbA's code: the term replaces Mask2Former's class,
mask and dice losses; True keeps them beside it, see ``docs/loss_fidelity.md``).
"""
from __future__ import annotations

from typing import Dict, List, Mapping

import torch
from detectron2.config import configurable

from ..ood.losses import densehybrid_loss
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, check_choice, register_term_alias

__all__ = ["MaskFormerDenseHybridLoss", "DenseHybridLoss"]


@register_term_alias
def maskformer_densehybrid_terms(cfg) -> List[str]:
    """RbA's DENSE_HYBRID_LOSS as a term name; PEBAL's GAMBLER_LOSS is its alternative."""
    mf = cfg.MODEL.MASK_FORMER
    if not mf.DENSE_HYBRID_LOSS:
        return []
    if mf.GAMBLER_LOSS:
        raise ValueError("MODEL.MASK_FORMER.GAMBLER_LOSS and DENSE_HYBRID_LOSS are alternatives; set one")
    return ["MaskFormerDenseHybridLoss"]


@LOSS_TERM_REGISTRY.register()
class MaskFormerDenseHybridLoss(LossTerm):
    """``loss_dh_ce``, ``loss_dh_outlier`` (beta1 x head CE), ``loss_dh_density`` (beta2 x density
    term) of :func:`rba_plugin.modeling.ood.losses.densehybrid_loss`. The outlier head has one
    output, so only the final prediction is supervised."""

    inputs = ("class_scores", "outlier_logits")
    deep_supervision = False
    replaces_mask_losses = True
    form_key = "MODEL.MASK_FORMER.DENSE_HYBRID_FORM"  # named in errors

    @configurable
    def __init__(self, *, beta1: float = 0.3, beta2: float = 0.03, weight: float = 1.0, form: str = "official",
                 keep_mask_losses: bool = False):
        super().__init__()
        check_choice(self.form_key, form, ("official", "paper"))
        # RbA's code replaces Mask2Former's class and mask losses by this one (the default);
        # keep_mask_losses (ours) trains with both, as RbA's own fine-tune keeps them.
        self.replaces_mask_losses = not keep_mask_losses
        self.beta1 = beta1
        self.beta2 = beta2
        self.form = form
        self.weights = {k: weight for k in ("loss_dh_ce", "loss_dh_outlier", "loss_dh_density")}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        beta1 = 10.0 * mf.DENSE_HYBRID_BETA if mf.DENSE_HYBRID_HEAD_WEIGHT is None else mf.DENSE_HYBRID_HEAD_WEIGHT
        return {"beta1": beta1, "beta2": mf.DENSE_HYBRID_BETA, "weight": mf.DENSE_HYBRID_WEIGHT,
                "form": mf.DENSE_HYBRID_FORM, "keep_mask_losses": mf.DENSE_HYBRID_KEEP_MASK_LOSSES}

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: PixelTargets) -> Dict[str, torch.Tensor]:
        return densehybrid_loss(
            outputs["class_scores"], outputs["outlier_logits"], targets.labels, beta1=self.beta1, beta2=self.beta2,
            form=self.form, ood_label=targets.ood_label, ignore_label=targets.ignore_label,
        )


@LOSS_TERM_REGISTRY.register()
class DenseHybridLoss(MaskFormerDenseHybridLoss):
    """DenseHybrid's per-pixel objective (``MODEL.DENSE_HYBRID``), the same three outputs on the
    per-pixel logits and the ``logits_ood`` head at the labels' size: ``loss_seg + beta * loss_ood
    + 10 beta * loss_th`` of ``experiments/semseg_negatives_joint_th.py`` lines 113-129
    (matejgrcic/DenseHybrid @ 742ceab): ``loss_dh_ce`` = loss_seg (mean CE over inliers; outliers
    and void ignored), ``loss_dh_outlier`` = 10 beta x loss_th (the 2-way CE of ``logits_ood``
    over every pixel, void counted as inlier), ``loss_dh_density`` = beta x loss_ood (mean over
    outlier pixels of logsumexp(logits) minus the detached mean of every logit)."""

    form_key = "MODEL.DENSE_HYBRID.FORM"

    @classmethod
    def from_config(cls, cfg) -> Dict:
        dh = cfg.MODEL.DENSE_HYBRID
        beta1 = 10.0 * dh.BETA if dh.HEAD_WEIGHT is None else dh.HEAD_WEIGHT
        return {"beta1": beta1, "beta2": dh.BETA, "weight": 1.0, "form": dh.FORM}
