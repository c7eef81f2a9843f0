"""RbA's outlier loss and the alternatives of the RbA paper's Table 4, on Mask2Former's class
scores L (input ``class_scores``: B x C x h x w at mask resolution).

RbA's keys select them: ``MODEL.MASK_FORMER.OUTLIER_SUPERVISION`` turns the loss on,
``OUTLIER_LOSS_FUNC`` picks the function, ``OUTLIER_LOSS_TARGET`` + ``SCORE_NORM`` the score it
acts on, ``OUTLIER_LOWER_THRESHOLD`` / ``INLIER_UPPER_THRESHOLD`` the margins and
``OUTLIER_WEIGHT`` the weight of ``loss_outlier``. The math is in
:mod:`rba_plugin.modeling.ood.losses`.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
from detectron2.config import configurable

from ..ood.losses import (
    bce_outlier_loss,
    kl_outlier_loss,
    l1_outlier_loss,
    mse_outlier_loss,
    squared_hinge_outlier_loss,
)
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, register_term_alias

__all__ = [
    "outlier_loss_score_name",
    "OutlierScoreLoss",
    "SquaredHingeOutlierLoss",
    "MSEOutlierLoss",
    "L1OutlierLoss",
    "BCEOutlierLoss",
    "KLOutlierLoss",
    "RBA_OUTLIER_LOSS_FUNCS",
]

# RbA's OUTLIER_LOSS_FUNC values -> registered terms.
RBA_OUTLIER_LOSS_FUNCS = {
    "squared_hinge": "SquaredHingeOutlierLoss",
    "mse": "MSEOutlierLoss",
    "l1": "L1OutlierLoss",
    "binary_cross_entropy": "BCEOutlierLoss",
    "kl": "KLOutlierLoss",
}


def outlier_loss_score_name(target: str, norm: str) -> str:
    """RbA's (OUTLIER_LOSS_TARGET, SCORE_NORM) pair as a registered score name."""
    table = {("nls", "tanh"): "rba", ("nls", "none"): "neg_logit_sum", ("energy", "none"): "energy",
             ("energy", "tanh"): "energy", ("softmax_entropy", "none"): "entropy"}
    if (target, norm) not in table:
        raise ValueError(
            f"MODEL.MASK_FORMER.OUTLIER_LOSS_TARGET='{target}' with SCORE_NORM='{norm}' is not supported; "
            "use nls+tanh (RbA), nls+none, energy or softmax_entropy+none"
        )
    return table[target, norm]


@register_term_alias
def rba_outlier_terms(cfg) -> List[str]:
    """RbA's OUTLIER_SUPERVISION / OUTLIER_LOSS_FUNC as a term name (none when off)."""
    mf = cfg.MODEL.MASK_FORMER
    if not mf.OUTLIER_SUPERVISION:
        return []
    if mf.OUTLIER_LOSS_FUNC not in RBA_OUTLIER_LOSS_FUNCS:
        raise ValueError(
            f"MODEL.MASK_FORMER.OUTLIER_LOSS_FUNC: unknown outlier loss '{mf.OUTLIER_LOSS_FUNC}'; "
            f"known: {', '.join(sorted(RBA_OUTLIER_LOSS_FUNCS))}"
        )
    return [RBA_OUTLIER_LOSS_FUNCS[mf.OUTLIER_LOSS_FUNC]]


class OutlierScoreLoss(LossTerm):
    """``loss_outlier``: a function of an anomaly score of L on pasted outlier pixels.

    Args:
        score_name: registered score the loss acts on ("rba" for RbA).
        weight: factor of ``loss_outlier`` (OUTLIER_WEIGHT).
        alpha: the outlier margin (OUTLIER_LOWER_THRESHOLD).
        inlier_threshold: the inlier margin (INLIER_UPPER_THRESHOLD), None = no inlier term.
    """

    inputs = ("class_scores",)

    @configurable
    def __init__(
        self,
        *,
        score_name: str = "rba",
        weight: float = 1.0,
        alpha: float = 5.0,
        inlier_threshold: Optional[float] = None,
    ):
        super().__init__()
        self.score_name = score_name
        self.alpha = alpha
        self.inlier_threshold = inlier_threshold
        self.weights = {"loss_outlier": weight}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {
            "score_name": outlier_loss_score_name(mf.OUTLIER_LOSS_TARGET, mf.SCORE_NORM),
            "weight": mf.OUTLIER_WEIGHT,
            "alpha": mf.OUTLIER_LOWER_THRESHOLD,
            "inlier_threshold": mf.INLIER_UPPER_THRESHOLD,
        }

    def loss(self, class_scores: torch.Tensor, targets: PixelTargets) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: PixelTargets) -> Dict[str, torch.Tensor]:
        return {"loss_outlier": self.loss(outputs["class_scores"], targets)}

    def _labels(self, targets: PixelTargets) -> Dict:
        return {"ood_label": targets.ood_label, "ignore_label": targets.ignore_label}


@LOSS_TERM_REGISTRY.register()
class SquaredHingeOutlierLoss(OutlierScoreLoss):
    """RbA's loss (paper Eq. 6): mean over outlier pixels of max(0, alpha - score)^2 (+ the inlier
    hinge with INLIER_UPPER_THRESHOLD)."""

    def loss(self, class_scores, targets):
        return squared_hinge_outlier_loss(
            class_scores, targets.labels, score_name=self.score_name, alpha=self.alpha,
            inlier_threshold=self.inlier_threshold, **self._labels(targets),
        )


@LOSS_TERM_REGISTRY.register()
class MSEOutlierLoss(OutlierScoreLoss):
    """RbA paper Eq. 8: mean over outlier pixels of (score - alpha)^2."""

    def loss(self, class_scores, targets):
        return mse_outlier_loss(class_scores, targets.labels, score_name=self.score_name, alpha=self.alpha,
                                **self._labels(targets))


@LOSS_TERM_REGISTRY.register()
class L1OutlierLoss(OutlierScoreLoss):
    """RbA paper Eq. 9: mean over outlier pixels of |score - alpha|."""

    def loss(self, class_scores, targets):
        return l1_outlier_loss(class_scores, targets.labels, score_name=self.score_name, alpha=self.alpha,
                               **self._labels(targets))


@LOSS_TERM_REGISTRY.register()
class BCEOutlierLoss(OutlierScoreLoss):
    """RbA paper Eq. 10: binary cross-entropy with the score as the outlier logit."""

    def loss(self, class_scores, targets):
        return bce_outlier_loss(class_scores, targets.labels, score_name=self.score_name, **self._labels(targets))


@LOSS_TERM_REGISTRY.register()
class KLOutlierLoss(OutlierScoreLoss):
    """RbA paper Eq. 11: KL to one-hot on inliers and to uniform on outliers."""

    def loss(self, class_scores, targets):
        return kl_outlier_loss(class_scores, targets.labels, **self._labels(targets))
