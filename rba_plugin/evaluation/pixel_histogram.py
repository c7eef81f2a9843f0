"""Exact pixel-level anomaly metrics from histograms keyed on the float16 bit pattern.

Scores are quantised to float16 (as the official Segment-Me-If-You-Can pipeline stores them) and
each valid pixel increments one of 65536 bins per class, the bin being an order-preserving integer
key of its float16 value. Every distinct score value therefore has its own bin, so the curves and
metrics are exactly those of scikit-learn on the float16 scores, while memory stays at 1 MiB
whatever the number of images, and two histograms merge by addition (across processes too).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

__all__ = ["PixelHistogram", "PixelCurves", "float16_sort_key", "key_to_float16", "NUM_KEYS"]

NUM_KEYS = 1 << 16
_SIGN = np.uint16(0x8000)
# Offset of each label value in the joint (class, key) index: 0 -> in-distribution block,
# 1 -> anomaly block, 255 -> void block, any other value -> a block that must stay empty.
_CLASS_OFFSET = np.full(256, 3 * NUM_KEYS, dtype=np.int32)
_CLASS_OFFSET[0], _CLASS_OFFSET[1], _CLASS_OFFSET[255] = 0, NUM_KEYS, 2 * NUM_KEYS


def _build_key_table() -> np.ndarray:
    bits = np.arange(NUM_KEYS, dtype=np.uint32).astype(np.uint16)
    negative = (bits & _SIGN) != 0
    keys = np.where(negative, ~bits, bits | _SIGN).astype(np.uint16)
    keys[0x8000] = keys[0x0000]  # -0 shares +0's bin (they compare equal)
    return keys


# Order-preserving key of every float16 bit pattern: positive numbers get the sign bit set,
# negative ones have all bits flipped. NaN patterns land above +inf's key or below -inf's.
_KEY_TABLE = _build_key_table()
_KEY_TABLE_INT32 = _KEY_TABLE.astype(np.int32)
_KEY_POS_INF = int(_KEY_TABLE[0x7C00])
_KEY_NEG_INF = int(_KEY_TABLE[0xFC00])


def float16_sort_key(score: np.ndarray) -> np.ndarray:
    """Order-preserving uint16 key of float16 values: key(a) < key(b) iff a < b (-0 == +0)."""
    return _KEY_TABLE[np.asarray(score, dtype=np.float16).view(np.uint16)]


def key_to_float16(key: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float16_sort_key` (for keys of non-negative zero)."""
    key = np.asarray(key, dtype=np.uint16)
    positive = (key & _SIGN) != 0
    bits = np.where(positive, key & np.uint16(0x7FFF), ~key).astype(np.uint16)
    return bits.view(np.float16)


@dataclass
class PixelCurves:
    """Operating points over the distinct score thresholds, in descending threshold order.

    Point k counts pixels with score >= thresholds[k]; arrays have length K (distinct values).
    """

    thresholds: np.ndarray  # (K,) float16 values, descending
    tp: np.ndarray  # (K,) int64 cumulative anomaly pixels with score >= threshold
    fp: np.ndarray  # (K,) int64 cumulative in-distribution pixels with score >= threshold
    num_pos: int
    num_neg: int

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.num_pos

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.num_neg

    @property
    def precision(self) -> np.ndarray:
        return self.tp / (self.tp + self.fp)


class PixelHistogram:
    """Per-class (in-distribution / anomaly) histograms of float16 score keys.

    ``update(score, label)`` takes an H x W score (higher = more anomalous) and an H x W label in
    the 0 / 1 / 255 convention; only pixels labelled 0 or 1 are counted.
    """

    def __init__(self):
        # counts[0] in-distribution, counts[1] anomaly; int64 so 1e9+ pixels cannot overflow.
        self.counts = np.zeros((2, NUM_KEYS), dtype=np.int64)

    def update(self, score: np.ndarray, label: np.ndarray) -> None:
        score = np.asarray(score)
        label = np.asarray(label)
        if score.shape != label.shape:
            raise ValueError(f"score shape {score.shape} differs from label shape {label.shape}")
        if label.dtype != np.uint8:
            if label.size and (label.min() < 0 or label.max() > 255):
                raise ValueError(f"label values must be 0, 1 or 255; got values in [{label.min()}, {label.max()}]")
            label = label.astype(np.uint8)
        # One bincount over key + 65536 * block (in-distribution, anomaly, void, invalid) avoids
        # gathering the valid pixels first.
        index = _KEY_TABLE_INT32[np.asarray(score, dtype=np.float16).view(np.uint16)]
        index += _CLASS_OFFSET[label]
        counts = np.bincount(index.ravel(), minlength=4 * NUM_KEYS)
        if counts[3 * NUM_KEYS:].any():
            bad = sorted(set(np.unique(label).tolist()) - {0, 1, 255})
            raise ValueError(f"label values must be 0, 1 or 255; got {bad}")
        counts = counts[: 2 * NUM_KEYS].reshape(2, NUM_KEYS)
        if counts[:, _KEY_POS_INF + 1:].any() or counts[:, :_KEY_NEG_INF].any():
            raise ValueError("anomaly score contains NaN")
        self.counts += counts

    def merge(self, other: "PixelHistogram") -> None:
        self.counts += other.counts

    @property
    def num_pos(self) -> int:
        return int(self.counts[1].sum())

    @property
    def num_neg(self) -> int:
        return int(self.counts[0].sum())

    def curves(self) -> PixelCurves:
        """Cumulative counts at every distinct score value, from the highest down."""
        neg = self.counts[0][::-1]
        pos = self.counts[1][::-1]
        present = (neg + pos) > 0
        keys = np.arange(NUM_KEYS - 1, -1, -1, dtype=np.uint16)[present]
        return PixelCurves(
            thresholds=key_to_float16(keys),
            tp=np.cumsum(pos[present]),
            fp=np.cumsum(neg[present]),
            num_pos=self.num_pos,
            num_neg=self.num_neg,
        )

    def best_f1_threshold(self) -> Optional[float]:
        """The score t maximising pixel F1 of the prediction ``score >= t`` (None without data)."""
        c = self.curves()
        if c.num_pos == 0 or len(c.thresholds) == 0:
            return None
        f1 = 2 * c.tp / (2 * c.tp + c.fp + (c.num_pos - c.tp))
        return float(c.thresholds[int(np.argmax(f1))])

    def metrics(self) -> Dict[str, float]:
        """AP (sklearn step rule), AUROC (trapezoid), FPR at 95% TPR, best pixel F1.

        FPR95 is the FPR at the first (highest) threshold whose TPR is >= 0.95; a tie block of
        equal scores is counted whole, as every threshold-based definition must. NaN (with a
        warning) when the data lacks anomaly or in-distribution pixels.
        """
        c = self.curves()
        nan = float("nan")
        if c.num_pos == 0 or c.num_neg == 0:
            missing = "anomaly" if c.num_pos == 0 else "in-distribution"
            warnings.warn(f"no {missing} pixels were evaluated; pixel metrics are NaN", RuntimeWarning)
            return {"AP": nan, "AUROC": nan, "FPR95": nan, "pixel_F1": nan}
        recall = c.tpr
        ap = float(np.sum(np.diff(recall, prepend=0.0) * c.precision))
        fpr = np.concatenate([[0.0], c.fpr])
        tpr = np.concatenate([[0.0], recall])
        auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        first = int(np.searchsorted(recall, 0.95, side="left"))
        fpr95 = float(c.fpr[first]) if first < len(recall) else 1.0
        f1 = 2 * c.tp / (2 * c.tp + c.fp + (c.num_pos - c.tp))
        return {"AP": ap, "AUROC": auroc, "FPR95": fpr95, "pixel_F1": float(f1.max())}
