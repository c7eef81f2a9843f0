"""RPL's loss terms (Eqs. 5-6) and CoroCL's contrastive loss (Eq. 7), config group ``MODEL.RPL``.

They read the outputs of :class:`rba_plugin.modeling.pixel.RPL`; the math is in
:mod:`rba_plugin.modeling.pixel.rpl_losses`. ``MODEL.RPL.FORM``: "official" (default) computes
what RPL's code computes (entropies of probabilities clamped at 1e-7; CoroCL's samples drawn as
``CoroCL.py`` draws them from the images that hold outliers); "paper" (exact entropies; CoroCL
on every image, each set sampled up to COROCL_MAX_VIEWS on its own, as the paper's appendix
reads: "512 pixel-wise samples from both inlier and OoD in city and COCO contexts").
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from detectron2.config import configurable

from ..pixel.rpl_losses import (
    OFFICIAL_MIN_PROB,
    corocl_loss,
    official_corocl_samples,
    positive_energy_loss,
    rpl_inlier_losses,
    sample_pixel_embeddings,
)
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, check_choice

__all__ = ["RPLInlierLoss", "RPLPositiveEnergy", "CoroCLLoss", "FORMS"]

FORMS = ("official", "paper")


@LOSS_TERM_REGISTRY.register()
class RPLInlierLoss(LossTerm):
    """Eq. 5 on inlier pixels: cross-entropy of the RPL logits against the frozen model's argmax
    (``inlier_target`` "pseudo", paper and code) or the ground truth ("gt"), and the entropy
    dis-similarity ((H(base) - H(rpl)) / t)^2 (official: probabilities clamped at 1e-7 inside H,
    ``PositiveEnergy.py``)."""

    inputs = ("rpl_logits", "closed_set_logits")

    @configurable
    def __init__(self, *, entropy_t: float = 1.0, inlier_target: str = "pseudo", form: str = "official"):
        super().__init__()
        check_choice("MODEL.RPL.INLIER_TARGET", inlier_target, ("pseudo", "gt"))
        check_choice("MODEL.RPL.FORM", form, FORMS)
        self.entropy_t = entropy_t
        self.inlier_target = inlier_target
        self.min_prob = OFFICIAL_MIN_PROB if form == "official" else None
        self.weights = {"loss_rpl_inlier_ce": 1.0, "loss_rpl_entropy_dis": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        rpl = cfg.MODEL.RPL
        return {"entropy_t": rpl.ENTROPY_T, "inlier_target": rpl.INLIER_TARGET, "form": rpl.FORM}

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: PixelTargets) -> Dict[str, torch.Tensor]:
        gt = targets.labels if self.inlier_target == "gt" else None
        ce, dis = rpl_inlier_losses(outputs["rpl_logits"], outputs["closed_set_logits"], targets.inlier,
                                    entropy_t=self.entropy_t, targets=gt, min_prob=self.min_prob)
        return {"loss_rpl_inlier_ce": ce, "loss_rpl_entropy_dis": dis}


@LOSS_TERM_REGISTRY.register()
class RPLPositiveEnergy(LossTerm):
    """``weight`` x Eq. 6: mean over outlier pixels of max(-E, 0) of the RPL logits (ENERGY_WEIGHT),
    0 without outlier pixels. The official code sums exp naively (inf for logits > 88 in float32);
    a stable logsumexp gives the same finite values."""

    inputs = ("rpl_logits",)

    @configurable
    def __init__(self, *, weight: float = 0.05):
        super().__init__()
        self.weight = weight
        self.weights = {"loss_rpl_positive_energy": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"weight": cfg.MODEL.RPL.ENERGY_WEIGHT}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        return {"loss_rpl_positive_energy": self.weight * positive_energy_loss(outputs["rpl_logits"], targets.outlier)}


@LOSS_TERM_REGISTRY.register()
class CoroCLLoss(LossTerm):
    """``weight`` x CoroCL (Eq. 7) on L2-normalised pixel embeddings at the decoder's stride;
    InfoNCE with temperature ``tau``, each anchor's terms averaged over its positives (itself
    excluded), then over anchors.

    * official (``CoroCL.py``; the model hands over only the images holding outliers and their
      raw outlier images, and none when a process has fewer than 2 such images): one count
      n = min(max_views, city outliers, city inliers, raw objects, raw background); anchors n city
      outliers + n city inliers; contrast set the anchors + n raw objects + n raw background
      (see :func:`official_corocl_samples`). 0 when n = 0 or without raw images.
    * paper: anchors up to ``max_views`` outlier and ``max_views`` inlier pixels of the batch (0
      when either set is empty); contrast set the anchors plus up to ``max_views`` object pixels
      of the raw outlier images and (``outlier_bg_as_inlier``) up to ``max_views`` of their
      background, each set drawn on its own.
    """

    inputs = ("corocl_embeddings", "corocl_labels")

    @configurable
    def __init__(self, *, weight: float = 1.0, tau: float = 0.1, max_views: int = 512, outlier_bg_as_inlier: bool = True,
                 form: str = "official"):
        super().__init__()
        check_choice("MODEL.RPL.FORM", form, FORMS)
        if form == "official" and not outlier_bg_as_inlier:
            raise ValueError("MODEL.RPL.COROCL_OUTLIER_BG_AS_INLIER False needs MODEL.RPL.FORM 'paper' "
                             "(RPL's code always contrasts with the raw images' background)")
        self.weight = weight
        self.tau = tau
        self.max_views = max_views
        self.outlier_bg_as_inlier = outlier_bg_as_inlier
        self.form = form
        self.weights = {"loss_corocl": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        rpl = cfg.MODEL.RPL
        return {"weight": rpl.COROCL_WEIGHT, "tau": rpl.COROCL_TAU, "max_views": rpl.COROCL_MAX_VIEWS,
                "outlier_bg_as_inlier": rpl.COROCL_OUTLIER_BG_AS_INLIER, "form": rpl.FORM}

    def _split(self, labels: torch.Tensor, targets: PixelTargets):
        outlier = labels == targets.ood_label
        return (labels != targets.ignore_label) & ~outlier, outlier

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        return {"loss_corocl": self.weight * self._loss(outputs, targets)}

    def _loss(self, outputs, targets: PixelTargets) -> torch.Tensor:
        if self.form == "official":
            return self._official(outputs, targets)
        return self._paper(outputs, targets)

    def _official(self, outputs, targets: PixelTargets) -> torch.Tensor:
        emb = outputs["corocl_embeddings"]
        if "corocl_outlier_embeddings" not in outputs:
            return emb.sum() * 0.0  # the official gate did not pass: no contrast this step
        raw = outputs["corocl_outlier_embeddings"]
        anchors, anchor_labels, contrast, contrast_labels = official_corocl_samples(
            emb, outputs["corocl_labels"], raw, outputs["corocl_outlier_labels"], max_views=self.max_views,
            ood_label=targets.ood_label, ignore_label=targets.ignore_label,
        )
        if anchors.shape[0] == 0:
            return emb.sum() * 0.0 + raw.sum() * 0.0
        positions = torch.arange(anchors.shape[0], device=anchors.device)
        return corocl_loss(anchors, anchor_labels, contrast, contrast_labels, tau=self.tau, anchor_positions=positions)

    def _paper(self, outputs, targets: PixelTargets) -> torch.Tensor:
        emb = outputs["corocl_embeddings"]
        city_in, city_out = self._split(outputs["corocl_labels"], targets)
        n = self.max_views
        anchors_out = sample_pixel_embeddings(emb, city_out, n)
        anchors_in = sample_pixel_embeddings(emb, city_in, n)
        if anchors_out.shape[0] == 0 or anchors_in.shape[0] == 0:
            # Both classes are needed for a contrast; keep the graph uniform across steps.
            return emb.sum() * 0.0
        anchors = torch.cat([anchors_out, anchors_in])
        anchor_labels = torch.cat([anchors.new_ones(anchors_out.shape[0]), anchors.new_zeros(anchors_in.shape[0])]).long()
        contrast, contrast_labels = [anchors], [anchor_labels]
        if "corocl_outlier_embeddings" in outputs:
            raw_emb = outputs["corocl_outlier_embeddings"]
            raw_in, raw_out = self._split(outputs["corocl_outlier_labels"], targets)
            for mask, value in ((raw_out, 1), (raw_in if self.outlier_bg_as_inlier else None, 0)):
                if mask is None:
                    continue
                sampled = sample_pixel_embeddings(raw_emb, mask, n)
                contrast.append(sampled)
                contrast_labels.append(torch.full((sampled.shape[0],), value, dtype=torch.long, device=sampled.device))
        positions = torch.arange(anchors.shape[0], device=anchors.device)
        return corocl_loss(anchors, anchor_labels, torch.cat(contrast), torch.cat(contrast_labels), tau=self.tau,
                           anchor_positions=positions)
