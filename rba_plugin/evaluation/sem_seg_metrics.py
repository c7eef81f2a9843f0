"""Closed-set segmentation metrics from one confusion matrix: mIoU (Detectron2's
``SemSegEvaluator`` definition), RAML's incremental mIoU (old / novel / harmonic mean) and VCA's
class-agnostic unknown IoU."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

__all__ = ["confusion_matrix", "per_class_iou", "mean_iou", "incremental_miou", "UnknownIoU"]


def _numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def confusion_matrix(pred, gt, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """num_classes x num_classes int64 counts, rows = ground truth, columns = prediction.

    Args:
        pred: H x W predicted class ids (clamped to [0, num_classes)); gt: H x W labels, pixels
            equal to ``ignore_label`` or outside [0, num_classes) are not counted.
    """
    pred, gt = _numpy(pred).astype(np.int64), _numpy(gt).astype(np.int64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and label {gt.shape} differ in size")
    valid = (gt != ignore_label) & (gt >= 0) & (gt < num_classes)
    index = gt[valid] * num_classes + np.clip(pred[valid], 0, num_classes - 1)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU of every class (NaN where the class is neither in the ground truth nor predicted)."""
    conf = confusion.astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.full(len(tp), np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


def mean_iou(confusion: np.ndarray, classes: Sequence[int] = None) -> float:
    """Mean IoU in percent over the classes (default all) that occur in the ground truth or the
    prediction: Detectron2's ``SemSegEvaluator`` mIoU (a class predicted but absent from the
    ground truth counts with IoU 0) and RAML's ``StreamSegMetrics`` (nanmean). NaN if none."""
    iou = per_class_iou(confusion)
    if classes is not None:
        iou = iou[list(classes)]
    present = ~np.isnan(iou)
    return float(iou[present].mean() * 100) if present.any() else float("nan")


def incremental_miou(confusion: np.ndarray, novel_ids: Sequence[int]) -> Dict[str, float]:
    """:func:`mean_iou` over old classes, over novel classes, their harmonic mean and over all
    classes (percent), RAML's incremental few-shot metrics."""
    novel = set(int(c) for c in novel_ids)
    old = [c for c in range(confusion.shape[0]) if c not in novel]
    old_m, novel_m = mean_iou(confusion, old), mean_iou(confusion, sorted(novel))
    harmonic = 2 * old_m * novel_m / (old_m + novel_m) if old_m + novel_m > 0 else 0.0
    return {"mIoU_old": old_m, "mIoU_novel": novel_m, "mIoU_harmonic": harmonic, "mIoU_all": mean_iou(confusion)}


class UnknownIoU:
    """Class-agnostic IoU of predicted unknown pixels against anomaly labels (1), pooled over a
    dataset; label 255 is void (VCA's open-set metric)."""

    def __init__(self):
        self.intersection = 0
        self.union = 0

    def update(self, pred_unknown, labels) -> None:
        """pred_unknown: H x W bool; labels: H x W in the 0 / 1 / 255 convention."""
        pred_unknown, labels = _numpy(pred_unknown).astype(bool), _numpy(labels)
        valid = labels != 255
        gt = (labels == 1) & valid
        pred = pred_unknown & valid
        self.intersection += int((gt & pred).sum())
        self.union += int((gt | pred).sum())

    def compute(self) -> float:
        """Percent; NaN when no pixel is predicted or labelled unknown."""
        return 100.0 * self.intersection / self.union if self.union else float("nan")
