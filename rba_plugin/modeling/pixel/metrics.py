"""Metrics of the per-pixel branch that the OOD evaluator does not compute: RAML's incremental
mIoU (old / novel / harmonic mean) and VCA's class-agnostic IoU of predicted unknown pixels."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
from torch import Tensor

__all__ = ["confusion_matrix", "incremental_miou", "UnknownIoU"]


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
