"""RAML's incremental few-shot stage: MCA candidate channels, aggregation, novel prototypes from
L shots, theta_novel assignment, and its evaluation (mIoU old / novel / harmonic mean).

An evaluation protocol on top of a trained model (so it lives with the experiments, not the
model). Usage with a trained MCA + RAML-head model (``PixelOODSegmentor`` with method ``RAML``)::

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

from ..evaluation.sem_seg_metrics import confusion_matrix, incremental_miou
from ..modeling.pixel.regions import aggregate_channels, fill_and_label

__all__ = [
    "NOVEL_SETTINGS",
    "select_candidate_channels",
    "novel_prototype",
    "assign_novel_classes",
    "IncrementalFewShot",
    "pick_shots",
    "evaluate_incremental",
    "run_incremental_setting",
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
        closed, feats = method.closed_set(head, head.decode(features))
        size = images.tensor.shape[-2:]
        meta = method.meta_channels(closed, head, size)[0, method.num_known :] > self.channel_thresh
        logits = head.upsample(closed, size)
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


def pick_shots(inputs: Sequence[dict], novel_id: int, num_shots: int, seed: int = 0, min_pixels: int = 1) -> List[Tuple[dict, Tensor]]:
    """L annotated images of a novel class: a seeded choice among the inputs whose ``sem_seg``
    holds at least ``min_pixels`` of it; returns (input, H x W bool mask) pairs."""
    candidates = [i for i, x in enumerate(inputs) if int((x["sem_seg"] == novel_id).sum()) >= min_pixels]
    if len(candidates) < num_shots:
        raise ValueError(f"class {novel_id}: {len(candidates)} images contain it, {num_shots} shots asked")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:num_shots]
    return [(inputs[candidates[i]], inputs[candidates[i]]["sem_seg"] == novel_id) for i in order.tolist()]


def evaluate_incremental(
    learner: "IncrementalFewShot", inputs: Iterable[dict], num_classes: int, novel_ids: Sequence[int], ignore_label: int = 255
) -> Dict[str, float]:
    """Pooled confusion of ``learner.predict`` against each input's ``sem_seg`` (train ids), then
    :func:`incremental_miou` (mIoU_old, mIoU_novel, mIoU_harmonic, mIoU_all, percent)."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for inp in inputs:
        pred = learner.predict(inp)
        gt = inp["sem_seg"][: pred.shape[0], : pred.shape[1]]
        conf += confusion_matrix(pred, gt, num_classes, ignore_label)
    return incremental_miou(conf, novel_ids)


def run_incremental_setting(
    cfg,
    model,
    shot_pool: Sequence[dict],
    test_inputs: Iterable[dict],
    setting: str = "16+3",
    num_shots: int = 5,
    seed: int = 0,
    novel_ids: Optional[Sequence[int]] = None,
) -> Dict[str, float]:
    """RAML's incremental few-shot evaluation in one call.

    ``model``: a trained RAML model (MCA fine-tuned, then its RAML head trained), in which the
    setting's classes were held out (``MODEL.PIXEL_OOD.HELD_OUT_CLASSES``). ``shot_pool`` and
    ``test_inputs``: model input dicts with ``"sem_seg"`` ground truth (train ids). Returns
    :func:`incremental_miou`'s keys. ``novel_ids`` replaces the setting's novel classes with a
    subset of them (a benchmark without one of them, e.g. no truck in the synthetic scenes).
    """
    if setting not in NOVEL_SETTINGS:
        raise ValueError(f"setting must be one of {sorted(NOVEL_SETTINGS)}, got {setting!r}")
    if novel_ids is None:
        novel_ids = NOVEL_SETTINGS[setting]
    elif not novel_ids or not set(novel_ids) <= set(NOVEL_SETTINGS[setting]):
        raise ValueError(f"novel_ids {list(novel_ids)} must be a non-empty subset of {setting}'s "
                         f"{list(NOVEL_SETTINGS[setting])}")
    novel_ids = tuple(novel_ids)
    learner = IncrementalFewShot.from_config(cfg, model)
    for offset, novel_id in enumerate(novel_ids):
        learner.add_shots(novel_id, pick_shots(shot_pool, novel_id, num_shots, seed=seed + offset))
    return evaluate_incremental(
        learner, test_inputs, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, novel_ids, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    )
