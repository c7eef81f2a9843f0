"""AnomalyMetrics: the Segment-Me-If-You-Can pixel and component metrics over a stream of frames."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .components import TAUS, ComponentStats, frame_component_scores
from .pixel_histogram import PixelHistogram
from .score_cache import ScoreMapCache

__all__ = ["AnomalyMetrics", "to_numpy", "to_float16"]


def to_float16(score) -> np.ndarray:
    """A score (tensor or array) quantised to float16 numpy (round to nearest even).

    float32 goes through torch's conversion (faster than numpy's, bit-identical); other dtypes
    through numpy (float64 directly, avoiding a double rounding via float32).
    """
    if hasattr(score, "detach"):
        score = score.detach()
        if score.dtype in (torch.float16, torch.float32):
            return score.to(dtype=torch.float16).cpu().numpy()
        score = to_numpy(score)
    score = np.asarray(score)
    if score.dtype == np.float32:
        return torch.from_numpy(np.ascontiguousarray(score)).to(dtype=torch.float16).numpy()
    return score.astype(np.float16)


def to_numpy(array) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array."""
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(array.dtype) in ("torch.bfloat16",):
            array = array.float()
        array = array.numpy()
    return np.asarray(array)


class AnomalyMetrics:
    """Accumulates frames and computes AP, AUROC, FPR95, sIoU, PPV and mean F1.

    ``update(score, label)``: score is H x W (higher = more anomalous, any float range; quantised
    to float16 like the official pipeline), label is H x W in the 0 / 1 / 255 convention.
    Pixel metrics come from a fixed 1 MiB histogram (exact for float16 scores); component metrics
    need a second pass over cached float16 maps, at the threshold ``component_threshold`` or, when it
    is None, at the score that maximises pixel F1 over the whole dataset.

    Args:
        component_threshold: fixed delta (prediction = score >= delta), or None for best pixel F1.
        min_pred_size / min_gt_size: component size filters in pixels (SMIYC anomaly track: 500 /
            100; obstacle track: 50 / 10).
        taus: sIoU / PPV thresholds averaged in mean F1.
        with_components: False skips caching and component metrics (pixel metrics only).
        cache_memory_bytes: score maps beyond this size go to a temporary directory.
    """

    def __init__(
        self,
        component_threshold: Optional[float] = None,
        min_pred_size: int = 500,
        min_gt_size: int = 100,
        taus: Sequence[float] = TAUS,
        with_components: bool = True,
        cache_memory_bytes: int = 2 << 30,
        tmp_root: Optional[str] = None,
    ):
        self.fixed_threshold = component_threshold
        self.min_pred_size = int(min_pred_size)
        self.min_gt_size = int(min_gt_size)
        self.taus = np.asarray(taus, dtype=np.float64)
        self.with_components = with_components
        self.histogram = PixelHistogram()
        self.cache = ScoreMapCache(cache_memory_bytes, tmp_root) if with_components else None

    def update(self, score, label) -> None:
        score16 = to_float16(score)  # quantised once for both passes
        label = to_numpy(label)
        if score16.ndim != 2 or score16.shape != label.shape:
            raise ValueError(f"expected H x W score and label of one shape, got {score16.shape} and {label.shape}")
        self.histogram.update(score16, label)
        if self.cache is not None:
            self.cache.add(score16, label)

    def merge(self, other: "AnomalyMetrics") -> None:
        """Adds another accumulator's frames (histogram sums, cached maps appended)."""
        self.histogram.merge(other.histogram)
        if self.cache is not None:
            if other.cache is None:
                raise ValueError("cannot merge an accumulator without cached score maps")
            for score, label in other.cache:
                self.cache.add(score, label)

    def component_threshold(self, histogram: Optional[PixelHistogram] = None) -> Optional[float]:
        """The configured delta, else the best-pixel-F1 score of ``histogram`` (default: own)."""
        if self.fixed_threshold is not None:
            return float(self.fixed_threshold)
        return (histogram or self.histogram).best_f1_threshold()

    def component_stats(self, threshold: float) -> ComponentStats:
        """Per-component sIoU / PPV of the cached frames for the prediction score >= threshold."""
        if self.cache is None:
            raise ValueError("component metrics were disabled (with_components=False)")
        stats = ComponentStats()
        delta = np.float16(threshold)
        for score, label in self.cache:
            siou, ppv = frame_component_scores(score >= delta, label, self.min_pred_size, self.min_gt_size)
            stats.add_frame(siou, ppv)
        return stats

    def compute(self) -> Dict[str, float]:
        """Every metric of the frames seen so far, as floats (NaN where undefined)."""
        results = self.histogram.metrics()
        if self.cache is None:
            return results
        threshold = self.component_threshold()
        results["component_threshold"] = float("nan") if threshold is None else threshold
        stats = self.component_stats(threshold) if threshold is not None else ComponentStats()
        results.update(stats.metrics(self.taus))
        return results

    def close(self) -> None:
        """Frees the cached score maps (and their temporary directory)."""
        if self.cache is not None:
            self.cache.close()
