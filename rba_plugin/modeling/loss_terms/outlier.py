"""RbA's outlier loss and the alternatives of the RbA paper's Table 4, on Mask2Former's class
scores L (input ``class_scores``: B x C x h x w at mask resolution).

RbA's keys select them: ``MODEL.MASK_FORMER.OUTLIER_SUPERVISION`` turns the loss on,
``OUTLIER_LOSS_FUNC`` picks the function, ``OUTLIER_LOSS_TARGET`` + ``SCORE_NORM`` the score s it
acts on (computed at mask resolution, then upsampled to the labels with ``align_corners=True``),
``INLIER_UPPER_THRESHOLD`` / ``OUTLIER_LOWER_THRESHOLD`` the margins and ``OUTLIER_WEIGHT`` the
weight of ``loss_outlier``. ``OUTLIER_LOSS_FORM`` (ours): "official" (default) computes what RbA's
``criterion.py`` computes (batch means over inliers and outliers, halved on batches with outlier
pixels, Table 4's functions as coded); "paper" computes the paper's Eqs. 6, 8-11 (outlier pixels
only, no 0.5). The math is in :mod:`rba_plugin.modeling.ood.losses`.
"""
from __future__ import annotations

from typing import Dict, List, Mapping

import torch
from detectron2.config import configurable

from ..ood import losses as L
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, check_choice, register_term_alias

__all__ = [
    "outlier_loss_score_name",
    "OutlierScoreLoss",
    "SquaredHingeOutlierLoss",
    "MSEOutlierLoss",
    "L1OutlierLoss",
    "BCEOutlierLoss",
    "KLOutlierLoss",
    "RBA_OUTLIER_LOSS_FUNCS",
    "FORMS",
]

FORMS = ("official", "paper")

# RbA's OUTLIER_LOSS_FUNC values -> registered terms.
RBA_OUTLIER_LOSS_FUNCS = {
    "squared_hinge": "SquaredHingeOutlierLoss",
    "mse": "MSEOutlierLoss",
    "l1": "L1OutlierLoss",
    "binary_cross_entropy": "BCEOutlierLoss",
    "kl": "KLOutlierLoss",
}


def outlier_loss_score_name(target: str, norm: str) -> str:
    """RbA's (OUTLIER_LOSS_TARGET, SCORE_NORM) pair as a registered score name (RbA
    ``criterion.py``: the norm matters for "nls" only).

    Raises:
        ValueError: an unknown target or norm, naming the keys.
    """
    check_choice("MODEL.MASK_FORMER.SCORE_NORM", norm, ("none", "tanh", "sigmoid"))
    if target == "nls":
        return {"tanh": "rba", "sigmoid": "neg_sigmoid_sum", "none": "neg_logit_sum"}[norm]
    table = {"energy": "energy", "softmax_entropy": "entropy", "sum_entropy": "sum_entropy"}
    if target not in table:
        raise ValueError(
            f"MODEL.MASK_FORMER.OUTLIER_LOSS_TARGET must be one of nls, energy, softmax_entropy, sum_entropy "
            f"(with OUTLIER_SUPERVISION), got {target!r}"
        )
    return table[target]


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
    """``loss_outlier``: a function of an anomaly score s of L.

    Args:
        score_name: registered score the loss acts on ("rba" for RbA).
        weight: factor of ``loss_outlier`` (OUTLIER_WEIGHT).
        gamma_in / gamma_out: INLIER_UPPER_THRESHOLD / OUTLIER_LOWER_THRESHOLD (alpha of the paper).
        form: "official" or "paper" (OUTLIER_LOSS_FORM).
    """

    inputs = ("class_scores",)

    @configurable
    def __init__(self, *, score_name: str = "rba", weight: float = 1.0, gamma_in: float = 0.0,
                 gamma_out: float = 5.0, form: str = "official"):
        super().__init__()
        check_choice("MODEL.MASK_FORMER.OUTLIER_LOSS_FORM", form, FORMS)
        self.score_name = score_name
        self.gamma_in = gamma_in
        self.gamma_out = gamma_out
        self.form = form
        self.weights = {"loss_outlier": weight}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {
            "score_name": outlier_loss_score_name(mf.OUTLIER_LOSS_TARGET, mf.SCORE_NORM),
            "weight": mf.OUTLIER_WEIGHT,
            "gamma_in": mf.INLIER_UPPER_THRESHOLD,
            "gamma_out": mf.OUTLIER_LOWER_THRESHOLD,
            "form": mf.OUTLIER_LOSS_FORM,
        }

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: PixelTargets) -> Dict[str, torch.Tensor]:
        class_scores = outputs["class_scores"]
        inlier, outlier = L.split_labels(targets.labels, class_scores.shape[1], targets.ood_label, targets.ignore_label)
        return {"loss_outlier": self.loss(class_scores, targets, inlier, outlier)}

    def score(self, class_scores: torch.Tensor, targets: PixelTargets) -> torch.Tensor:
        return L.outlier_score_map(class_scores, targets.labels, self.score_name)

    def loss(self, class_scores, targets, inlier, outlier) -> torch.Tensor:
        raise NotImplementedError


class _MarginLoss(OutlierScoreLoss):
    kind = ""

    def loss(self, class_scores, targets, inlier, outlier):
        score = self.score(class_scores, targets)
        if self.form == "official":
            return L.official_outlier_loss(self.kind, score, inlier, outlier, gamma_in=self.gamma_in,
                                           gamma_out=self.gamma_out)
        paper = {"squared_hinge": L.squared_hinge_outlier_loss, "mse": L.mse_outlier_loss, "l1": L.l1_outlier_loss}
        return paper[self.kind](score, outlier, alpha=self.gamma_out)


@LOSS_TERM_REGISTRY.register()
class SquaredHingeOutlierLoss(_MarginLoss):
    """RbA's loss. Official: 0.5 (mean_I max(0, s - gamma_in)^2 + mean_O max(0, gamma_out - s)^2)
    (the inlier part alone without outlier pixels); paper Eq. 6: mean_O max(0, alpha - s)^2."""

    kind = "squared_hinge"


@LOSS_TERM_REGISTRY.register()
class MSEOutlierLoss(_MarginLoss):
    """Table 4 "MSE". Official: two-sided (s - gamma_in)^2 on inliers and (s - gamma_out)^2 on
    outliers, halved as the hinge; paper Eq. 8: mean_O (s - alpha)^2."""

    kind = "mse"


@LOSS_TERM_REGISTRY.register()
class L1OutlierLoss(_MarginLoss):
    """Table 4 "L1". Official: as MSE with |.|; paper Eq. 9: mean_O |s - alpha|."""

    kind = "l1"


@LOSS_TERM_REGISTRY.register()
class BCEOutlierLoss(OutlierScoreLoss):
    """Table 4 "BCE" with s as the outlier logit. Official: 0.5 x mean over every pixel (void as
    inlier); paper Eq. 10: mean over non-void pixels, no 0.5."""

    def loss(self, class_scores, targets, inlier, outlier):
        score = self.score(class_scores, targets)
        if self.form == "official":
            return L.official_bce_outlier_loss(score, outlier)
        return L.bce_outlier_loss(score, inlier, outlier)


@LOSS_TERM_REGISTRY.register()
class KLOutlierLoss(OutlierScoreLoss):
    """Table 4 "KL" on the class scores. Official: RbA's code, which reads no class label (see
    :func:`rba_plugin.modeling.ood.losses.official_kl_outlier_loss`); paper Eq. 11: 0.5 (CE to the
    true class on inliers + KL(U || softmax(L)) on outliers)."""

    def loss(self, class_scores, targets, inlier, outlier):
        upsampled = L.resize_to_labels(class_scores, targets.labels)
        if self.form == "official":
            return L.official_kl_outlier_loss(upsampled, inlier, outlier)
        return L.kl_outlier_loss(upsampled, targets.labels, inlier, outlier)
