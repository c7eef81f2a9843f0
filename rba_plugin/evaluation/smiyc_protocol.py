"""Segment-Me-If-You-Can leaderboard arithmetic (protocol "smiyc"), re-implemented.

The official benchmark (road-anomaly-benchmark @ 1c7804e, ``metrics/pixel_classification.py``
metric "PixBinaryClass", ``metrics/pixel_classification_curves.py`` and
``metrics/instance_segmentation.py``, run with its pinned numpy 1.23.3 / scipy 1.9.1) does not
evaluate exact curves. What it does, and what this module reproduces:

1. Scores are stored as float16 (``Evaluation.save_output``); everything below sees float16.
2. Per frame, on the valid (label 0 / 1) pixels: bin edges are the union of
   ``[vmin - eps, vmax + eps]`` (``eps = max(0.01 * (vmax - vmin), 0.01)``, the range taken in
   float16, the rest in float64), ``np.quantile`` of the anomaly scores and of the
   in-distribution scores at ``min(384, count)`` evenly spaced levels (linear interpolation),
   deduplicated; per bin ``[e_i, e_i+1)`` (the last one closed) the anomaly and in-distribution
   counts are kept with the bin's *lower* edge as its threshold (768 = 2 x 384 quantiles).
3. The frames' (threshold, counts) entries are concatenated and sorted by descending threshold;
   cumulative sums give TP / FP. Of each run of equal thresholds only the last entry is kept,
   except that entry 0 is always kept as well: when several frames share the highest threshold,
   point 0 holds one frame's counts only, and when they do not, point 0 appears twice.
   (0, 0) is put in front (threshold max + 1) and (P, N) at the end when missing (threshold:
   the then-largest threshold minus 1).
4. AP = sum(diff(recall) * precision[1:]), precision 1 where nothing is predicted; AUROC =
   trapezoid of TPR over FPR; FPR95 = FPR at ``searchsorted(TPR, 0.95)`` (1.0 if never reached);
   best F1 and its threshold delta at the first maximum of F1 over the points.
5. Components: prediction ``score > delta`` where numpy 1.x compares a float16 map with the
   float64 delta *in float16* (delta rounded to nearest) when -65000 < delta < 65000, else in
   float32 (value-based casting); the rest is :func:`components.frame_component_scores`,
   including the official rule that voids the whole background when it is smaller than the
   ground-truth size filter (its loop over components starts at label 0).

Pinned where the official result is not determined:
* Which frame's counts form point 0 when several frames share the highest threshold depends on
  the order of the per-frame results (``imap_unordered`` in the parallel runner) and on the
  unstable ``np.argsort`` (numpy >= 1.25 on AVX-512 CPUs orders ties differently from 1.23.3).
  We use frames in name order (the order of the official single-process runner) and a stable
  descending sort, i.e. the *last* such frame's counts; a warning gives the range of AP over all
  possible choices when they differ.
* ``np.quantile`` is called as is: its float16 interpolation gives identical edges with numpy
  1.23.3 and 1.26.4 (checked on random float16 data); other numpy versions may differ.
* Frames without valid pixels are skipped (the official code raises on them).
* Maps are evaluated at the label's resolution as given (``OODEvaluator`` up-samples smaller maps
  bilinearly first); the official multi-process runner's own ``cv.resize`` of narrower maps is
  not emulated.
* Where the official aggregation divides by zero (no predicted component: PPV; no component at
  all for some tau: F1) we return NaN with a warning instead of a ZeroDivisionError.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .pixel_exact import PixelCurves, PixelResult

__all__ = ["SMIYC_NUM_BINS", "SmiycFrameBins", "smiyc_frame_bins", "smiyc_pixel_result", "smiyc_prediction"]

# Bins per frame of the leaderboard's "PixBinaryClass" metric (half per class).
SMIYC_NUM_BINS = 768


@dataclass
class SmiycFrameBins:
    """One frame's binned counts (ascending lower edges), as the official per-frame result."""

    name: Optional[str]
    thresholds: np.ndarray  # (M,) float64 ascending: lower edge of each bin
    tp: np.ndarray  # (M,) int64 anomaly pixels per bin
    fp: np.ndarray  # (M,) int64 in-distribution pixels per bin
    num_pos: int
    num_neg: int


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """np.histogram(values, edges) counts: [e_i, e_i+1) per bin, the last bin closed.

    Comparisons are in float64 (numpy promotes the float16 values to the float64 edges).
    """
    ordered = np.sort(values).astype(np.float64)
    upper = np.concatenate([
        np.searchsorted(ordered, edges[:-1], side="left"),
        np.searchsorted(ordered, edges[-1:], side="right"),
    ])
    return np.diff(upper).astype(np.int64)


def smiyc_frame_bins(score16: np.ndarray, anomaly: np.ndarray, name: Optional[str] = None,
                     num_bins: int = SMIYC_NUM_BINS) -> Optional[SmiycFrameBins]:
    """The official per-frame percentile bins of the valid pixels of one frame.

    Args:
        score16: (V,) float16 scores of the valid pixels (finite).
        anomaly: (V,) bool, True for anomaly (label 1) pixels.
        name: frame name, used to order frames (see module doc).
    Returns:
        SmiycFrameBins, or None when the frame has no valid pixel.
    Source: ``binary_confusion_matrix(..., bin_strategy='percentiles')`` in
    road-anomaly-benchmark ``metrics/pixel_classification.py``.
    """
    score16 = np.asarray(score16, dtype=np.float16).ravel()
    anomaly = np.asarray(anomaly, dtype=bool).ravel()
    if score16.size == 0:
        return None
    pos, neg = score16[anomaly], score16[~anomaly]
    vmin, vmax = score16.min(), score16.max()
    vrange = vmax - vmin  # float16 arithmetic, as numpy does on the two float16 scalars
    eps = max(float(vrange) * 1e-2, 1e-2)  # the product and the rest in float64
    parts = [np.array([float(vmin) - eps, float(vmax) + eps])]
    for values in (pos, neg):
        if values.size:
            parts.append(np.quantile(values, np.linspace(0, 1, min(num_bins // 2, values.size))))
    edges = np.unique(np.concatenate(parts).astype(np.float64))
    return SmiycFrameBins(name, edges[:-1], _bin_counts(pos, edges), _bin_counts(neg, edges),
                          int(pos.size), int(neg.size))


def _ordered(frames: Sequence[SmiycFrameBins]) -> List[SmiycFrameBins]:
    frames = [f for f in frames if f is not None]
    if frames and all(f.name is not None for f in frames):
        return sorted(frames, key=lambda f: f.name)  # stable: equal names keep their order
    return list(frames)


def smiyc_pixel_result(frames: Sequence[SmiycFrameBins]) -> PixelResult:
    """AP, AUROC, FPR95, best F1 and its threshold as the official "PixBinaryClass" aggregation.

    Args:
        frames: per-frame bins (from every process); ordered by name when all have one.
    Returns:
        PixelResult ("AP", "AUROC", "FPR95", "pixel_F1" in [0, 1], NaN with a warning when a
        class has no pixel; ``best_f1_threshold`` = the official delta, a float64 that need not
        be a float16 value; ``curves`` = the collapsed official curve).
    Source: ``aggregate_dynamic_bins`` (``metrics/pixel_classification.py``) and
    ``curves_from_cmats`` (``metrics/pixel_classification_curves.py``).
    """
    frames = _ordered(frames)
    num_pos = sum(f.num_pos for f in frames)
    num_neg = sum(f.num_neg for f in frames)
    nan = float("nan")
    if num_pos == 0 or num_neg == 0:
        missing = "anomaly" if num_pos == 0 else "in-distribution"
        warnings.warn(f"no {missing} pixels were evaluated; pixel metrics are NaN", RuntimeWarning)
        return PixelResult({"AP": nan, "AUROC": nan, "FPR95": nan, "pixel_F1": nan}, None, None)
    # Each frame contributes its bins from the highest threshold down.
    thresholds = np.concatenate([f.thresholds[::-1] for f in frames])
    tp_rel = np.concatenate([f.tp[::-1] for f in frames])
    fp_rel = np.concatenate([f.fp[::-1] for f in frames])
    order = np.argsort(thresholds, kind="stable")[::-1]  # pinned tie order (module doc)
    thresholds = thresholds[order]
    tp_cum = np.cumsum(tp_rel[order].astype(np.float64))
    fp_cum = np.cumsum(fp_rel[order].astype(np.float64))

    # The last entry of each run of equal thresholds, plus entry 0 (official quirk).
    keep = np.concatenate([[0], np.flatnonzero(thresholds[:-1] != thresholds[1:]), [len(thresholds) - 1]])
    ap_range = _top_point_ap_range(tp_rel[order], fp_rel[order], tp_cum, fp_cum, keep, num_pos)
    thresholds, tp, fp = thresholds[keep], tp_cum[keep], fp_cum[keep]
    fn, tn = num_pos - tp, num_neg - fp
    if tp[0] != 0 or fp[0] != 0:
        tp, fp = np.concatenate([[0.0], tp]), np.concatenate([[0.0], fp])
        fn, tn = np.concatenate([[num_pos], fn]), np.concatenate([[num_neg], tn])
        thresholds = np.concatenate([[float(np.max(thresholds)) + 1], thresholds])
    if tp[-1] != num_pos or fp[-1] != num_neg:
        tp, fp = np.concatenate([tp, [num_pos]]), np.concatenate([fp, [num_neg]])
        fn, tn = np.concatenate([fn, [0.0]]), np.concatenate([tn, [0.0]])
        thresholds = np.concatenate([thresholds, [float(np.max(thresholds)) - 1]])

    tpr = tp / (tp + fn)
    fpr = fp / (fp + tn)
    predicted = tp + fp
    precision = np.ones(len(tp), np.float64)
    precision[predicted > 0] = tp[predicted > 0] / predicted[predicted > 0]
    f1 = (2 * tp) / (2 * tp + fp + fn)
    i95 = int(np.searchsorted(tpr, 0.95))
    fpr95 = float(fpr[i95]) if i95 < len(tpr) else 1.0
    best = int(np.nanargmax(f1))
    ap = float(np.sum(np.diff(tpr) * precision[1:]))
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))  # np.trapz(tpr, fpr)
    if ap_range is not None and ap_range[0] != ap_range[1]:
        warnings.warn(
            f"{ap_range[2]} frames share the highest SMIYC threshold {float(thresholds[1])!r}: the official "
            f"code's AP then depends on the order of the frames (unordered workers, unstable sort) and lies in "
            f"[{ap + ap_range[0]:.6f}, {ap + ap_range[1]:.6f}]; reported (frames in name order, stable sort): "
            f"{ap:.6f}",
            RuntimeWarning,
        )
    metrics = {"AP": ap, "AUROC": auroc, "FPR95": fpr95, "pixel_F1": float(f1[best])}
    curves = PixelCurves(thresholds.astype(np.float64), tp.astype(np.int64), fp.astype(np.int64), num_pos, num_neg)
    return PixelResult(metrics, float(thresholds[best]), curves)


def _top_point_ap_range(tp_rel, fp_rel, tp_cum, fp_cum, keep, num_pos):
    """AP shift (min, max) over the choices of the entry that forms point 0, and the run length;
    None when the highest threshold occurs once.

    Only point 0 depends on the order; its AP terms are r0 * p0 + (r1 - r0) * p1 with (r1, p1)
    the point at the end of the run, so choosing entry i shifts AP by r0_i * (p0_i - p1) minus
    the same for the entry actually placed first.
    """
    run = int(keep[1]) + 1 if len(keep) > 1 else 1
    if run < 2:
        return None
    tp0, fp0 = tp_rel[:run].astype(np.float64), fp_rel[:run].astype(np.float64)
    tp1, fp1 = tp_cum[run - 1], fp_cum[run - 1]
    p0 = np.where(tp0 + fp0 > 0, tp0 / np.maximum(tp0 + fp0, 1), 1.0)
    p1 = tp1 / (tp1 + fp1) if tp1 + fp1 > 0 else 1.0
    shift = tp0 / num_pos * (p0 - p1)
    shift -= shift[0]
    return float(shift.min()), float(shift.max()), run


def smiyc_prediction(score16: np.ndarray, delta: float) -> np.ndarray:
    """The official component mask ``score > delta`` with numpy 1.x value-based casting.

    A float16 map compared with a float64 scalar is compared in float16 when
    -65000 < delta < 65000 (numpy's ``min_scalar_type`` rule), so delta is rounded to the nearest
    float16 first; otherwise in float32.
    Source: ``default_instancer`` in road-anomaly-benchmark ``metrics/instance_segmentation.py``.
    """
    score16 = np.asarray(score16, dtype=np.float16)
    delta = float(delta)
    if not np.isfinite(delta) or -65000.0 < delta < 65000.0:
        return score16 > np.float16(delta)
    return score16.astype(np.float32) > np.float32(delta)
