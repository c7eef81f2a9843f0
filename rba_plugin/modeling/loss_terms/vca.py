"""The VCA prototype baseline's loss terms (config group ``MODEL.VCA``): open-set cross-entropy
with pasted outliers as the unknown class, and the optional supervised contrastive loss."""
from __future__ import annotations

from typing import Dict

import torch
from detectron2.config import configurable
from torch.nn import functional as F

from ..pixel.contrastive import supcon_loss
from ..pixel.rpl_losses import sample_pixel_embeddings
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, check_choice

__all__ = ["VCACrossEntropy", "VCASupCon", "open_set_labels"]


def open_set_labels(targets: PixelTargets, num_known: int) -> torch.Tensor:
    """A copy of the labels with pasted outliers as class ``num_known`` (the unknown class)."""
    return targets.labels.masked_fill(targets.outlier, num_known)


@LOSS_TERM_REGISTRY.register()
class VCACrossEntropy(LossTerm):
    """Cross-entropy (mean over labelled pixels, void ignored) of the C+1 ``open_set_logits``,
    upsampled to the label size with ``upsampling`` ("nearest": official
    ``appearance_ca_mahalanobis.py:106``, F.interpolate's default; "bilinear": align_corners
    False), pasted outliers as class C: ``loss_vca_ce``.

    The official loss relabels the outliers in place on the caller's label tensor (line 102);
    here the labels are copied, the caller's tensor stays as it is.
    """

    inputs = ("open_set_logits",)

    @configurable
    def __init__(self, *, upsampling: str = "nearest"):
        super().__init__()
        check_choice("MODEL.VCA.LOSS_UPSAMPLING", upsampling, ("nearest", "bilinear"))
        self.upsampling = upsampling
        self.weights = {"loss_vca_ce": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"upsampling": cfg.MODEL.VCA.LOSS_UPSAMPLING}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        logits = outputs["open_set_logits"]
        labels = open_set_labels(targets, logits.shape[1] - 1)
        if logits.shape[-2:] != labels.shape[-2:]:
            if self.upsampling == "nearest":
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="nearest")
            else:
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return {"loss_vca_ce": F.cross_entropy(logits, labels, ignore_index=targets.ignore_label)}


@LOSS_TERM_REGISTRY.register()
class VCASupCon(LossTerm):
    """``weight`` x SupCon over up to ``max_views`` sampled pixel embeddings per class (the
    unknown class included), at the embeddings' stride: ``loss_vca_supcon``."""

    inputs = ("supcon_embeddings", "open_set_logits")

    @configurable
    def __init__(self, *, weight: float, tau: float = 0.07, max_views: int = 512):
        super().__init__()
        self.weight = weight
        self.tau = tau
        self.max_views = max_views
        self.weights = {"loss_vca_supcon": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        v = cfg.MODEL.VCA
        return {"weight": v.SUPCON_WEIGHT, "tau": v.SUPCON_TAU, "max_views": v.SUPCON_MAX_VIEWS}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        z = outputs["supcon_embeddings"]
        num_known = outputs["open_set_logits"].shape[1] - 1
        labels = open_set_labels(targets, num_known)
        small = F.interpolate(labels[:, None].float(), size=z.shape[-2:], mode="nearest")[:, 0].long()
        samples, sample_labels = [], []
        for k in range(num_known + 1):
            picked = sample_pixel_embeddings(z, small == k, self.max_views)
            samples.append(picked)
            sample_labels.append(torch.full((picked.shape[0],), k, dtype=torch.long, device=z.device))
        loss = self.weight * supcon_loss(torch.cat(samples), torch.cat(sample_labels), self.tau) + z.sum() * 0.0
        return {"loss_vca_supcon": loss}
