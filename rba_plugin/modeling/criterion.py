"""Mask2Former's set criterion: losses of matched query/target pairs, with deep supervision.

* ``loss_ce``: cross-entropy of every query's class logits against its matched target class
  (unmatched queries: "no object", weighted by ``eos_coef``);
* ``loss_mask`` / ``loss_dice``: sigmoid BCE and dice of each matched mask, evaluated on
  ``num_points`` points per mask chosen PointRend-style (``oversample_ratio * num_points``
  random candidates, the ``importance_sample_ratio`` share most uncertain, i.e. logits closest
  to 0, plus uniformly random ones), averaged over the number of target masks in the batch.

Targets are dicts with "labels" (T), "masks" (T x H x W) and, for the loss terms, the per-pixel
"sem_seg" (H x W, 254 = pasted outlier, 255 = ignore). A loss named ``x`` is the method
``loss_x``. Further objectives (RbA's outlier loss and the other outlier losses) are loss terms
(:mod:`rba_plugin.modeling.loss_terms`) read from the config by :func:`build_set_criterion`; they
read the semantic scores L of each supervised prediction, computed once per prediction.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import get_uncertain_point_coords_with_randomness, point_sample
from detectron2.utils.comm import get_world_size
from torch import nn

from .loss_terms import LossTerm, PixelTargets, aliased_term_names, build_loss_terms, check_term_inputs
from .matcher import HungarianMatcher
from .ood.losses import inlier_energy, resize_to_labels

__all__ = [
    "SetCriterion",
    "build_set_criterion",
    "batched_semantic_scores",
    "dice_loss",
    "sigmoid_ce_loss",
    "calculate_uncertainty",
    "TERM_INPUTS",
]

# Named inputs the criterion computes for loss terms from each supervised prediction.
TERM_INPUTS = {
    "class_scores": "B x C x h x w semantic scores L at mask resolution",
    "class_scores_and_no_object": "B x (C+1) x H x W: L with the no-object column, at the labels' size",
    "energy": "B x H x W: -logsumexp of the C inlier columns of class_scores_and_no_object",
    "outlier_logits": "B x 2 x h x w DenseHybrid outlier-head logits (final prediction, with the head)",
}


def batched_semantic_scores(pred_logits: torch.Tensor, pred_masks: torch.Tensor, keep_no_object: bool = False):
    """B x Q x (C+1), B x Q x h x w -> B x C x h x w semantic scores L = sum_q softmax(class_q)[:C]
    sigmoid(mask_q) (B x (C+1) x h x w when ``keep_no_object``, PEBAL's abstention column)."""
    # Half-precision predictions (AMP) are scored in float32; float64 stays float64.
    dtype = torch.promote_types(pred_logits.dtype, torch.float32)
    probs = F.softmax(pred_logits.to(dtype), dim=-1)
    if not keep_no_object:
        probs = probs[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, pred_masks.to(dtype).sigmoid())


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """inputs: N x P logits; targets: N x P in [0, 1]. Sum over masks of 1 - (2|X∩Y|+1)/(|X|+|Y|+1), / num_masks."""
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """inputs: N x P logits; targets: N x P. Sum over masks of the mean BCE over points, / num_masks."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """N x 1 x P logits -> N x 1 x P uncertainty: -|logit| (largest at the decision boundary)."""
    if logits.shape[1] != 1:
        raise ValueError(f"calculate_uncertainty takes class-agnostic N x 1 x P logits, got {tuple(logits.shape)}")
    return -torch.abs(logits)


class SetCriterion(nn.Module):
    """Matches predictions to targets with ``matcher`` and sums the requested ``losses``, for the
    final prediction and (suffix ``_i``) every auxiliary prediction."""

    def __init__(
        self,
        num_classes: int,
        matcher: Callable,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        terms: Sequence[LossTerm] = (),
        ood_label: int = 254,
        ignore_label: int = 255,
    ):
        super().__init__()
        for name in losses:
            if not callable(getattr(self, f"loss_{name}", None)):
                raise ValueError(f"SetCriterion: unknown loss '{name}'")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # A buffer (not a constant) because official checkpoints carry "criterion.empty_weight".
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.terms = nn.ModuleList(terms)
        self.ood_label = ood_label
        self.ignore_label = ignore_label

    def loss_labels(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Weighted CE over all B x Q queries (mean weighted by class weight, as F.cross_entropy)."""
        src_logits = outputs["pred_logits"].float()
        batch_idx, src_idx = self._src_permutation_idx(indices)
        target_classes = torch.full(src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device)
        target_classes[batch_idx, src_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        return {"loss_ce": F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Point-sampled BCE and dice of matched masks (targets zero-padded to a common size)."""
        batch_idx, src_idx = self._src_permutation_idx(indices)
        src_masks = outputs["pred_masks"][batch_idx, src_idx][:, None]  # N x 1 x h x w
        target_masks = torch.cat(
            [self._pad_masks(t["masks"], targets)[j] for t, (_, j) in zip(targets, indices)]
        ).to(src_masks)[:, None]  # N x 1 x H x W
        with torch.no_grad():
            point_coords = self.sample_points(src_masks)
            point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
        point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def sample_points(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """N x 1 x h x w mask logits -> N x num_points x 2 points in [0, 1]^2: the most uncertain
        of ``oversample_ratio * num_points`` random candidates (share ``importance_sample_ratio``)
        plus uniformly random ones."""
        return get_uncertain_point_coords_with_randomness(
            mask_logits, calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
        )

    @staticmethod
    def _pad_masks(masks: torch.Tensor, targets) -> torch.Tensor:
        """Zero-pad T x H x W to the largest target size of the batch."""
        h = max(t["masks"].shape[-2] for t in targets)
        w = max(t["masks"].shape[-1] for t in targets)
        return F.pad(masks, (0, w - masks.shape[-1], 0, h - masks.shape[-2]))

    @staticmethod
    def _src_permutation_idx(indices) -> Tuple[torch.Tensor, torch.Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def get_loss(self, name: str, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        return getattr(self, f"loss_{name}")(outputs, targets, indices, num_masks)

    def term_inputs(self, outputs: Dict[str, object], labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The named inputs of the loss terms for one prediction (see :data:`TERM_INPUTS`),
        computed once and only when a term reads them."""
        needed = {name for term in self.terms for name in term.inputs}
        inputs: Dict[str, torch.Tensor] = {}
        if "class_scores" in needed:
            inputs["class_scores"] = batched_semantic_scores(outputs["pred_logits"], outputs["pred_masks"])
        if needed & {"class_scores_and_no_object", "energy"}:
            full = batched_semantic_scores(outputs["pred_logits"], outputs["pred_masks"], keep_no_object=True)
            inputs["class_scores_and_no_object"] = resize_to_labels(full, labels)
            inputs["energy"] = inlier_energy(inputs["class_scores_and_no_object"], self.num_classes)
        if "outlier_logits" in needed and "pred_outlier" in outputs:
            logits = outputs["pred_outlier"]
            inputs["outlier_logits"] = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return inputs

    def term_losses(self, outputs: Dict[str, object], targets: Optional[PixelTargets], auxiliary: bool):
        """Every loss term on one prediction (auxiliary ones: the deep-supervised terms only)."""
        terms = [t for t in self.terms if t.deep_supervision or not auxiliary]
        if not terms:
            return {}
        inputs = self.term_inputs(outputs, targets.labels)
        losses = {}
        for term in terms:
            missing = [name for name in term.inputs if name not in inputs]
            if missing:
                raise ValueError(f"loss term {type(term).__name__}: the prediction has no {', '.join(missing)}")
            losses.update(term(inputs, targets))
        return losses

    def pixel_targets(self, targets: List[Dict[str, torch.Tensor]]) -> Optional[PixelTargets]:
        """The per-pixel labels the loss terms read (None when no term is configured)."""
        if not len(self.terms):
            return None
        if any("sem_seg" not in t for t in targets):
            raise ValueError(
                "outlier losses need per-pixel labels: training inputs must carry 'sem_seg' "
                "(use INPUT.DATASET_MAPPER_NAME 'mask_former_semantic_coco_mix')"
            )
        labels = torch.stack([t["sem_seg"] for t in targets]).long()
        return PixelTargets(labels, ood_label=self.ood_label, ignore_label=self.ignore_label)

    def forward(self, outputs: Dict[str, object], targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: "pred_logits" B x Q x (C+1), "pred_masks" B x Q x h x w, optional "aux_outputs"
                and "pred_outlier".
            targets: per image {"labels": T, "masks": T x H x W, "sem_seg": H x W (with terms)}.

        Returns:
            unweighted losses: loss_ce, loss_mask, loss_dice, the terms' losses, and their ``_i``
            auxiliary copies.
        """
        main_outputs = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.matcher(main_outputs, targets)
        # Average over all target masks of all ranks, so every rank's loss has the same scale.
        device = outputs["pred_logits"].device
        num_masks = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
        num_masks = torch.clamp(num_masks / get_world_size(), min=1).item()
        pixel_targets = self.pixel_targets(targets)
        losses = {}
        for name in self.losses:
            losses.update(self.get_loss(name, main_outputs, targets, indices, num_masks))
        losses.update(self.term_losses(main_outputs, pixel_targets, auxiliary=False))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux, targets)
            terms = {}
            for name in self.losses:
                terms.update(self.get_loss(name, aux, targets, aux_indices, num_masks))
            terms.update(self.term_losses(aux, pixel_targets, auxiliary=True))
            losses.update({f"{k}_{i}": v for k, v in terms.items()})
        return losses


def build_set_criterion(cfg, num_classes: int, training_outputs: Sequence[str] = ("class_scores",)) -> SetCriterion:
    """Mask2Former's criterion from the config: its class and mask losses, plus the loss terms
    that RbA's keys ask for (OUTLIER_SUPERVISION, GAMBLER_LOSS, DENSE_HYBRID_LOSS, ...) and
    ``MODEL.LOSS_TERMS``. Terms that replace the class and mask losses (RbA's PEBAL and
    DenseHybrid variants) remove them, as in RbA's code.

    Args:
        training_outputs: the term inputs the model can provide (``TERM_INPUTS`` keys; the
            DenseHybrid head adds "outlier_logits").

    Raises:
        ValueError: an unknown term, a bad key of a term, or a term reading an input the model
            does not provide.
    """
    mf = cfg.MODEL.MASK_FORMER
    terms = build_loss_terms(cfg, aliased_term_names(cfg) + list(cfg.MODEL.LOSS_TERMS))
    check_term_inputs(terms, training_outputs, "Mask2Former")
    replaced = any(t.replaces_mask_losses for t in terms)
    losses = [] if replaced else ["labels", "masks"]
    main_weights = {} if replaced else {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
    aux_weights = dict(main_weights)
    for term in terms:
        main_weights.update(term.weights)
        if term.deep_supervision:
            aux_weights.update(term.weights)
    weight_dict = dict(main_weights)
    if mf.DEEP_SUPERVISION:
        # One auxiliary prediction per decoder layer: DEC_LAYERS - 1 of them.
        for i in range(mf.DEC_LAYERS - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in aux_weights.items()})
    matcher = HungarianMatcher(
        cost_class=mf.CLASS_WEIGHT, cost_mask=mf.MASK_WEIGHT, cost_dice=mf.DICE_WEIGHT, num_points=mf.TRAIN_NUM_POINTS
    )
    return SetCriterion(
        num_classes,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=mf.NO_OBJECT_WEIGHT,
        losses=losses,
        num_points=mf.TRAIN_NUM_POINTS,
        oversample_ratio=mf.OVERSAMPLE_RATIO,
        importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        terms=terms,
        ood_label=cfg.INPUT.OOD_LABEL,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )
