"""RAML's incremental few-shot stage (MCA candidate channels, novel prototypes, theta_novel) and
its metrics (mIoU old / novel / harmonic mean), plus VCA's class-agnostic unknown IoU.

Usage with a trained MCA + RAML-head model (``PixelOODSegmentor`` with method ``RAML``)::

    learner = IncrementalFewShot(model, kappa=0.1, theta_novel=0.8)
    learner.add_shots(novel_id, [(input_dict, novel_mask), ...])   # L shots per novel class
    label_map = learner.predict(input_dict)                       # H x W, old + novel ids
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .regions import aggregate_channels, fill_and_label

__all__ = [
    "NOVEL_SETTINGS",
    "select_candidate_channels",
    "novel_prototype",
    "assign_novel_classes",
    "incremental_miou",
    "confusion_matrix",
    "UnknownIoU",
    "IncrementalFewShot",
]

# Cityscapes train ids held out as novel in RAML's settings (13 car, 14 truck, 15 bus).
NOVEL_SETTINGS: Dict[str, Tuple[int, ...]] = {"16+1": (13,), "16+3": (13, 14, 15)}


def select_candidate_channels(meta: Tensor, novel_mask: Tensor, kappa: float, inside_mask: bool = True) -> Set[int]:
    """Appendix Eq. 13: meta channel j is a candidate if |c_j| / |y| > kappa.

    Args:
        meta: K x H x W binary meta-channel masks of one annotated image.
        novel_mask: H x W bool mask y of the novel class.
        inside_mask: count only the channel's pixels inside y (official code); else all of them.
    """
    area = novel_mask.sum()
    if area == 0:
        return set()
    meta = meta.bool()
    counted = meta & novel_mask[None] if inside_mask else meta
    ratios = counted.flatten(1).sum(dim=1).float() / area.float()
    return {int(j) for j in torch.nonzero(ratios > kappa).flatten()}


def novel_prototype(shot_embeddings: Tensor) -> Tensor:
    """Eq. 10: c_i = 1/L sum_j f_i^(j); L x E -> E."""
    if shot_embeddings.shape[0] == 0:
        raise ValueError("a novel prototype needs at least one shot")
    return shot_embeddings.mean(dim=0)


def assign_novel_classes(region_embeddings: Tensor, prototypes: Tensor, theta_novel: float) -> Tuple[Tensor, Tensor]:
    """Eqs. 11-12: region -> novel class i if s_i > theta_novel and s_i is the largest similarity.

    Args:
        region_embeddings: T x E; prototypes: M x E.
    Returns:
        (T long class indices into ``prototypes``, -1 = not assigned; T x M cosine similarities).
    """
    sims = F.normalize(region_embeddings, dim=1) @ F.normalize(prototypes, dim=1).t()
    if sims.shape[1] == 0:
        return torch.full((sims.shape[0],), -1, dtype=torch.long), sims
    best, idx = sims.max(dim=1)
    return torch.where(best > theta_novel, idx, torch.full_like(idx, -1)), sims


def confusion_matrix(pred: Tensor, gt: Tensor, num_classes: int, ignore_value: int = 255) -> np.ndarray:
    """num_classes x num_classes counts, rows = ground truth, columns = prediction."""
    valid = (gt != ignore_value) & (gt >= 0) & (gt < num_classes)
    idx = gt[valid].long() * num_classes + pred[valid].long().clamp(0, num_classes - 1)
    return np.bincount(idx.cpu().numpy(), minlength=num_classes**2).reshape(num_classes, num_classes)


def incremental_miou(confusion: np.ndarray, novel_ids: Sequence[int]) -> Dict[str, float]:
    """mIoU over old classes, over novel classes and their harmonic mean (percent).

    Classes absent from both ground truth and prediction are left out of the means.
    """
    conf = confusion.astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    novel = np.zeros(len(tp), dtype=bool)
    novel[list(novel_ids)] = True

    def mean(sel):
        sel = sel & present
        return float(iou[sel].mean() * 100) if sel.any() else float("nan")

    old_m, novel_m = mean(~novel), mean(novel)
    harmonic = 2 * old_m * novel_m / (old_m + novel_m) if old_m + novel_m > 0 else 0.0
    return {"mIoU_old": old_m, "mIoU_novel": novel_m, "mIoU_harmonic": harmonic, "mIoU_all": mean(np.ones_like(novel))}


class UnknownIoU:
    """Class-agnostic IoU of predicted unknown pixels against anomaly labels (1), pooled over a
    dataset; label 255 is void (VCA's open-set metric)."""

    def __init__(self):
        self.intersection = 0
        self.union = 0

    def update(self, pred_unknown: Tensor, labels: Tensor) -> None:
        valid = labels != 255
        gt = (labels == 1) & valid
        pred = pred_unknown.bool() & valid
        self.intersection += int((gt & pred).sum())
        self.union += int((gt | pred).sum())

    def compute(self) -> float:
        return 100.0 * self.intersection / self.union if self.union else float("nan")


class IncrementalFewShot:
    """Few-shot extension of a trained RAML model (MCA head + RAML embedding head)."""

    def __init__(
        self,
        model,
        *,
        kappa: float = 0.1,
        theta_novel: float = 0.8,
        channel_thresh: float = 0.5,
        inside_mask: bool = True,
        min_region_area: int = 1,
    ):
        self.model = model
        self.kappa = kappa
        self.theta_novel = theta_novel
        self.channel_thresh = channel_thresh
        self.inside_mask = inside_mask
        self.min_region_area = min_region_area
        self.candidates: Set[int] = set()  # meta-channel indices (0..K-1), Eq. 14
        self.novel_ids: List[int] = []
        self.prototypes: List[Tensor] = []

    @classmethod
    def from_config(cls, cfg, model) -> "IncrementalFewShot":
        m = cfg.MODEL.MCA
        return cls(
            model, kappa=m.KAPPA, theta_novel=m.THETA_NOVEL, channel_thresh=m.CHANNEL_THRESH,
            inside_mask=m.CANDIDATE_INSIDE_MASK, min_region_area=m.MIN_REGION_AREA,
        )

    @torch.no_grad()
    def _extract(self, inp: dict) -> Tuple[Tensor, Tensor, Tensor]:
        """(closed logits C x H x W, decoder features D x h x w, binary meta K x H x W) at the
        padded input size."""
        model = self.model
        model.eval()
        images = model.preprocess_image([inp])
        features = model.backbone(images.tensor)
        method, head = model.ood_method, model.sem_seg_head
        closed, feats = method.closed_set(head, features)
        meta = method.meta_channels(closed, head)[0, method.num_classes :] > self.channel_thresh
        logits = F.interpolate(closed, scale_factor=head.common_stride, mode="bilinear", align_corners=False)
        h, w = images.image_sizes[0]
        return logits[0, :, :h, :w], feats[0], meta[:, :h, :w]

    def _pad_to(self, mask: Tensor, feats: Tensor, head_stride: int) -> Tensor:
        hp, wp = feats.shape[-2] * head_stride, feats.shape[-1] * head_stride
        return F.pad(mask.float(), (0, wp - mask.shape[-1], 0, hp - mask.shape[-2]))

    @torch.no_grad()
    def add_shots(self, novel_id: int, shots: Iterable[Tuple[dict, Tensor]]) -> None:
        """Register a novel class from L annotated images (input dict, H x W bool mask)."""
        stride = self.model.sem_seg_head.common_stride
        embeddings = []
        for inp, mask in shots:
            _, feats, meta = self._extract(inp)
            self.candidates |= select_candidate_channels(meta, mask, self.kappa, self.inside_mask)
            padded = self._pad_to(mask[None], feats, stride)
            embeddings.append(self.model.ood_method.embed_regions(feats, padded)[0])
        self.novel_ids.append(novel_id)
        self.prototypes.append(novel_prototype(torch.stack(embeddings)))

    @torch.no_grad()
    def predict(self, inp: dict) -> Tensor:
        """H x W labels: the closed-set argmax, with regions assigned to a novel class painted."""
        logits, feats, meta = self._extract(inp)
        labels = logits.argmax(dim=0)
        if not self.candidates or not self.prototypes:
            return labels
        union = aggregate_channels(meta[sorted(self.candidates)]) > 0.5
        regions = fill_and_label(union, min_area=self.min_region_area)
        num = int(regions.max())
        if num == 0:
            return labels
        masks = regions[None] == torch.arange(1, num + 1)[:, None, None]
        padded = self._pad_to(masks, feats, self.model.sem_seg_head.common_stride)
        emb = self.model.ood_method.embed_regions(feats, padded)
        assigned, _ = assign_novel_classes(emb, torch.stack(self.prototypes), self.theta_novel)
        for r, cls in enumerate(assigned.tolist()):
            if cls >= 0:
                labels[masks[r]] = self.novel_ids[cls]
        return labels
