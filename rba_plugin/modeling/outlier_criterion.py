"""Mask2Former's set criterion with outlier supervision: RbA and its alternatives, PEBAL and
DenseHybrid inside mask classification (RbA paper, Sec. 3.4 and appendix C).

The outlier terms read the per-pixel labels of the targets ("sem_seg", 254 = pasted outlier,
255 = void) and the semantic scores L = sum_q softmax(class_q)[:C] sigmoid(mask_q), computed from
every supervised decoder output (the final one and, with deep supervision, each auxiliary one)
at mask resolution; see :mod:`rba_plugin.modeling.ood.losses` for the pixel normalisation.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .ood.losses import (
    densehybrid_loss,
    energy_hinge_loss,
    energy_smoothness_loss,
    energy_sparsity_loss,
    inlier_energy,
    outlier_score_loss,
    pal_loss,
    resize_to_labels,
)

__all__ = ["OutlierSetCriterion", "build_set_criterion", "outlier_loss_score_name"]


def batched_semantic_scores(pred_logits: torch.Tensor, pred_masks: torch.Tensor, keep_no_object: bool = False):
    """B x Q x (C+1), B x Q x h x w -> B x C x h x w semantic scores (B x (C+1) x h x w when
    ``keep_no_object``, PEBAL's abstention column)."""
    probs = F.softmax(pred_logits.float(), dim=-1)
    if not keep_no_object:
        probs = probs[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, pred_masks.float().sigmoid())


def outlier_loss_score_name(target: str, norm: str) -> str:
    """RbA's (OUTLIER_LOSS_TARGET, SCORE_NORM) pair as a score of the registry."""
    table = {("nls", "tanh"): "rba", ("nls", "none"): "neg_logit_sum", ("energy", "none"): "energy",
             ("energy", "tanh"): "energy", ("softmax_entropy", "none"): "entropy"}
    if (target, norm) not in table:
        raise ValueError(
            f"MODEL.MASK_FORMER.OUTLIER_LOSS_TARGET='{target}' with SCORE_NORM='{norm}' is not supported; "
            "use nls+tanh (RbA), nls+none, energy or softmax_entropy+none"
        )
    return table[target, norm]


class OutlierSetCriterion(SetCriterion):
    """:class:`SetCriterion` plus the losses "outlier" (RbA family), "pebal" and "densehybrid".

    Args (beyond SetCriterion's):
        outlier_loss_func: "squared_hinge" (RbA), "mse", "l1", "binary_cross_entropy", "kl".
        outlier_score: score the outlier loss acts on ("rba" for RbA).
        outlier_alpha: alpha of RbA's hinge (OUTLIER_LOWER_THRESHOLD, 5 in the paper).
        inlier_threshold: optional inlier hinge threshold (INLIER_UPPER_THRESHOLD; None = off).
        pebal: dict of PEBAL weights (outlier_weight, m_in, m_out, energy_weight,
            smoothness_weight, sparsity_weight); densehybrid: dict (beta1, beta2).
        ood_label / ignore_label: label values of outlier and void pixels.
    """

    def __init__(
        self,
        *args,
        outlier_loss_func: str = "squared_hinge",
        outlier_score: str = "rba",
        outlier_alpha: float = 5.0,
        inlier_threshold: Optional[float] = None,
        pebal: Optional[Dict[str, float]] = None,
        densehybrid: Optional[Dict[str, float]] = None,
        ood_label: int = 254,
        ignore_label: int = 255,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.outlier_loss_func = outlier_loss_func
        self.outlier_score = outlier_score
        self.outlier_alpha = outlier_alpha
        self.inlier_threshold = inlier_threshold
        self.pebal = dict(pebal or {})
        self.densehybrid = dict(densehybrid or {})
        self.ood_label = ood_label
        self.ignore_label = ignore_label

    def _pixel_labels(self, targets: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
        if any("sem_seg" not in t for t in targets):
            raise ValueError(
                "outlier losses need per-pixel labels: training inputs must carry 'sem_seg' "
                "(use INPUT.DATASET_MAPPER_NAME 'mask_former_semantic_coco_mix')"
            )
        return torch.stack([t["sem_seg"] for t in targets]).long()

    def loss_outlier(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        labels = self._pixel_labels(targets)
        scores = batched_semantic_scores(outputs["pred_logits"], outputs["pred_masks"])
        loss = outlier_score_loss(
            self.outlier_loss_func, scores, labels, score_name=self.outlier_score, alpha=self.outlier_alpha,
            inlier_threshold=self.inlier_threshold, ood_label=self.ood_label, ignore_label=self.ignore_label,
        )
        return {"loss_outlier": loss}

    def loss_pebal(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """PAL with the no-object column as the abstention class, energy hinge, regularisers."""
        labels = self._pixel_labels(targets)
        full = batched_semantic_scores(outputs["pred_logits"], outputs["pred_masks"], keep_no_object=True)
        full = resize_to_labels(full, labels)
        energy = inlier_energy(full, self.num_classes)
        p = self.pebal
        common = {"ood_label": self.ood_label, "ignore_label": self.ignore_label}
        return {
            "loss_pal": pal_loss(full, energy, labels, outlier_weight=p["outlier_weight"], **common),
            "loss_pebal_energy": p["energy_weight"]
            * energy_hinge_loss(energy, labels, m_in=p["m_in"], m_out=p["m_out"], **common),
            "loss_smoothness": p["smoothness_weight"] * energy_smoothness_loss(energy, norm="l1"),
            "loss_sparsity": p["sparsity_weight"] * energy_sparsity_loss(energy, norm="l1"),
        }

    def loss_densehybrid(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """DenseHybrid's objective; the outlier head has one output, so only the final
        prediction (which carries "pred_outlier") is supervised."""
        if "pred_outlier" not in outputs:
            return {}
        labels = self._pixel_labels(targets)
        scores = batched_semantic_scores(outputs["pred_logits"], outputs["pred_masks"])
        return densehybrid_loss(
            scores, outputs["pred_outlier"].float(), labels, beta1=self.densehybrid["beta1"],
            beta2=self.densehybrid["beta2"], ood_label=self.ood_label, ignore_label=self.ignore_label,
        )


def build_set_criterion(cfg, num_classes: int) -> SetCriterion:
    """The criterion the config asks for: Mask2Former's losses, plus RbA's outlier loss
    (OUTLIER_SUPERVISION), or PEBAL (GAMBLER_LOSS) / DenseHybrid (DENSE_HYBRID_LOSS), which
    replace the class and mask losses as in RbA's code."""
    mf = cfg.MODEL.MASK_FORMER
    if (mf.SMOOTHNESS_LOSS or mf.SPARSITY_LOSS) and not mf.GAMBLER_LOSS:
        raise ValueError(
            "MODEL.MASK_FORMER.SMOOTHNESS_LOSS / SPARSITY_LOSS are PEBAL's regularisers here: "
            "set MODEL.MASK_FORMER.GAMBLER_LOSS too"
        )
    if mf.GAMBLER_LOSS and mf.DENSE_HYBRID_LOSS:
        raise ValueError("MODEL.MASK_FORMER.GAMBLER_LOSS and DENSE_HYBRID_LOSS are alternatives; set one")
    replaced = mf.GAMBLER_LOSS or mf.DENSE_HYBRID_LOSS
    losses = [] if replaced else ["labels", "masks"]
    base_weights = {} if replaced else {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
    if mf.OUTLIER_SUPERVISION:
        losses.append("outlier")
        base_weights["loss_outlier"] = mf.OUTLIER_WEIGHT
    if mf.GAMBLER_LOSS:
        losses.append("pebal")
        base_weights.update(
            {"loss_pal": mf.GAMBLER_WEIGHT, "loss_pebal_energy": 1.0, "loss_smoothness": 1.0, "loss_sparsity": 1.0}
        )
    weight_dict = dict(base_weights)
    if mf.DEEP_SUPERVISION:
        # One auxiliary prediction per decoder layer: DEC_LAYERS - 1 of them.
        for i in range(mf.DEC_LAYERS - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in base_weights.items()})
    if mf.DENSE_HYBRID_LOSS:
        losses.append("densehybrid")
        weight_dict.update({k: mf.DENSE_HYBRID_WEIGHT for k in ("loss_dh_ce", "loss_dh_outlier", "loss_dh_density")})
    matcher = HungarianMatcher(
        cost_class=mf.CLASS_WEIGHT, cost_mask=mf.MASK_WEIGHT, cost_dice=mf.DICE_WEIGHT, num_points=mf.TRAIN_NUM_POINTS
    )
    inlier_threshold = mf.INLIER_UPPER_THRESHOLD
    return OutlierSetCriterion(
        num_classes,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=mf.NO_OBJECT_WEIGHT,
        losses=losses,
        num_points=mf.TRAIN_NUM_POINTS,
        oversample_ratio=mf.OVERSAMPLE_RATIO,
        importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        outlier_loss_func=mf.OUTLIER_LOSS_FUNC,
        outlier_score=outlier_loss_score_name(mf.OUTLIER_LOSS_TARGET, mf.SCORE_NORM) if mf.OUTLIER_SUPERVISION else "rba",
        outlier_alpha=mf.OUTLIER_LOWER_THRESHOLD,
        inlier_threshold=inlier_threshold,
        pebal={
            "outlier_weight": mf.PEBAL_OOD_REG,
            "m_in": mf.PEBAL_M_IN,
            "m_out": mf.PEBAL_M_OUT,
            "energy_weight": mf.PEBAL_ENERGY_WEIGHT,
            "smoothness_weight": mf.SMOOTHNESS_WEIGHT if mf.SMOOTHNESS_LOSS else 0.0,
            "sparsity_weight": mf.SPARSITY_WEIGHT if mf.SPARSITY_LOSS else 0.0,
        },
        densehybrid={"beta1": mf.DENSE_HYBRID_HEAD_WEIGHT, "beta2": mf.DENSE_HYBRID_BETA},
        ood_label=cfg.INPUT.OOD_LABEL,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )
