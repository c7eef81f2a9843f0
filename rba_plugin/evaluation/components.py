"""Component-level anomaly metrics of Segment-Me-If-You-Can: sIoU, PPV and mean F1.

Per frame, the prediction (``score >= delta`` in the exact protocol; void removed) and the ground-truth anomaly mask are
split into 8-connected components; predicted components smaller than ``min_pred_size`` pixels are
dropped, ground-truth components smaller than ``min_gt_size`` become void, and all counts are then
taken over the remaining valid pixels. sIoU of a ground-truth component k is
``|k & P(k)| / |(k | P(k)) minus A(k)|`` with P(k) the union of the predicted components touching
k and A(k) the pixels of P(k) lying on other ground-truth components; PPV of a predicted component
is its fraction of ground-truth anomaly pixels. Both are pooled over the dataset; at each tau a
ground-truth component with sIoU >= tau is a TP (else FN) and a predicted component with
PPV < tau is a FP. The counts use a contingency table of component ids, so a frame costs one
labelling pass instead of a loop over components.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["ComponentStats", "frame_component_scores", "TAUS", "TRACK_SIZE_FILTERS"]

# tau = 0.25, 0.30, ..., 0.75 (11 values).
TAUS = np.linspace(0.25, 0.75, 11)
# (min predicted component size, min ground-truth component size) in pixels per SMIYC track.
TRACK_SIZE_FILTERS = {"anomaly": (500, 100), "obstacle": (50, 10)}
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    return labels, count


def _drop_small(labels: np.ndarray, count: int, min_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (relabelled map with small components set to 0 and ids 1..n, the kept-mask)."""
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_size
    keep[0] = False
    new_ids = np.zeros(count + 1, dtype=np.int64)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    return new_ids[labels], keep


def frame_component_scores(
    prediction: np.ndarray, label: np.ndarray, min_pred_size: int, min_gt_size: int,
    void_small_background: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """sIoU of every ground-truth component and PPV of every predicted component of one frame.

    Args:
        prediction: H x W bool, pixels predicted anomalous.
        label: H x W uint8 in the 0 / 1 / 255 convention.
        min_pred_size / min_gt_size: size filters in pixels (see module doc).
        void_small_background: the official code's size filter also visits label 0 of the
            ground-truth component map (everything that is not a ground-truth anomaly, void
            included) and voids it when it has fewer than ``min_gt_size`` pixels; True
            reproduces that (protocol "smiyc"; it only matters on tiny or nearly all-anomaly frames).
    Returns:
        (sIoU per kept ground-truth component, PPV per kept predicted component with valid pixels),
        float64 arrays in [0, 1].
    Source: ``default_instancer`` and ``segment_metrics`` in road-anomaly-benchmark
    ``metrics/instance_segmentation.py``.
    """
    if prediction.shape != label.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from label shape {label.shape}")
    void = label == 255
    pred_labels, n_pred = _components(prediction & ~void)
    pred_labels, _ = _drop_small(pred_labels, n_pred, min_pred_size)
    gt_labels, n_gt = _components(label == 1)
    sizes = np.bincount(gt_labels.ravel(), minlength=n_gt + 1)
    small_gt = sizes < min_gt_size
    small_gt[0] = void_small_background and sizes[0] < min_gt_size
    void = void | small_gt[gt_labels]  # small ground-truth objects become void
    gt_labels, _ = _drop_small(gt_labels, n_gt, min_gt_size)

    roi = ~void
    g = gt_labels[roi]
    p = pred_labels[roi]
    n_g = int(g.max(initial=0)) + 1
    n_p = int(p.max(initial=0)) + 1
    table = np.bincount(g * n_p + p, minlength=n_g * n_p).reshape(n_g, n_p)  # table[g, p] pixels

    gt_size = table.sum(axis=1)[1:]  # |k|
    pred_size = table.sum(axis=0)  # |p| over valid pixels, index 0 = background
    on_gt = table[1:, :]  # (n_gt, n_p) pixels of pred p on gt k
    touches = on_gt[:, 1:] > 0  # (n_gt, n_pred)
    inter = on_gt[:, 1:].sum(axis=1)  # I(k): predicted pixels inside k
    union_pred = touches.astype(np.int64) @ pred_size[1:]  # |P(k)|
    pred_on_any_gt = on_gt[:, 1:].sum(axis=0)  # per predicted comp, pixels on any gt comp
    # A(k): pixels of the touching predictions lying on other gt comps.
    other = touches.astype(np.int64) @ pred_on_any_gt - inter
    denom = union_pred + gt_size - inter - other
    with np.errstate(invalid="ignore", divide="ignore"):
        siou = np.where(inter > 0, inter / np.maximum(denom, 1), 0.0)

    valid_pred = pred_size[1:] > 0  # predicted comps lying wholly in void are not predictions
    ppv = pred_on_any_gt[valid_pred] / pred_size[1:][valid_pred]
    return siou.astype(np.float64), ppv.astype(np.float64)


@dataclass
class ComponentStats:
    """Pooled per-component scores over a dataset; mergeable by concatenation."""

    siou: List[np.ndarray] = field(default_factory=list)  # per frame, per gt component
    ppv: List[np.ndarray] = field(default_factory=list)  # per frame, per predicted component

    def add_frame(self, siou: np.ndarray, ppv: np.ndarray) -> None:
        self.siou.append(np.asarray(siou, dtype=np.float64))
        self.ppv.append(np.asarray(ppv, dtype=np.float64))

    def merge(self, other: "ComponentStats") -> None:
        self.siou.extend(other.siou)
        self.ppv.extend(other.ppv)

    def metrics(self, taus: Sequence[float] = TAUS) -> Dict[str, float]:
        """sIoU (pooled mean over gt comps), PPV (pooled mean over predicted comps), mean F1 over taus,
        and F1 / FN / FP at tau = 0.25, 0.5, 0.75. NaN (with a warning) where undefined."""
        siou = np.concatenate(self.siou) if self.siou else np.zeros(0)
        ppv = np.concatenate(self.ppv) if self.ppv else np.zeros(0)
        nan = float("nan")
        if len(siou) == 0:
            warnings.warn("no ground-truth anomaly components; sIoU and F1 are NaN", RuntimeWarning)
        if len(ppv) == 0:
            warnings.warn("no predicted anomaly components; PPV is NaN", RuntimeWarning)
        out = {
            "sIoU": float(siou.mean()) if len(siou) else nan,
            "PPV": float(ppv.mean()) if len(ppv) else nan,
        }
        f1s = []
        for tau in taus:
            tp = int((siou >= tau).sum())
            fn = len(siou) - tp
            fp = int((ppv < tau).sum())
            f1 = 2 * tp / (2 * tp + fn + fp) if (2 * tp + fn + fp) > 0 else nan
            f1s.append(f1)
            percent = int(round(tau * 100))
            if percent in (25, 50, 75):
                out[f"F1_{percent}"] = f1
                out[f"FN_{percent}"] = fn
                out[f"FP_{percent}"] = fp
        out["mean_F1"] = float(np.mean(f1s))  # NaN if any tau is undefined
        return out
