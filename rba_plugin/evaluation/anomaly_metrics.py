"""AnomalyMetrics: the Segment-Me-If-You-Can pixel and component metrics over a stream of frames."""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .components import TAUS, ComponentStats, frame_component_scores
from .pixel_exact import ExactPixelAccumulator, PixelResult
from .score_cache import ScoreMapCache
from .smiyc_protocol import SmiycFrameBins, smiyc_frame_bins, smiyc_pixel_result, smiyc_prediction

__all__ = ["AnomalyMetrics", "PROTOCOLS", "to_numpy", "to_float16", "float32_at_least"]

PROTOCOLS = ("exact", "smiyc")
# Score dtypes whose every value is a float32 value.
_FLOAT32_EXACT = (np.float16, np.float32, np.bool_, np.int8, np.uint8, np.int16, np.uint16)


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
    with np.errstate(over="ignore"):  # overflow gives inf, which update() reports
        return score.astype(np.float16)


def to_numpy(array) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array."""
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(array.dtype) in ("torch.bfloat16",):
            array = array.float()
        array = array.numpy()
    return np.asarray(array)


def float32_at_least(threshold: float) -> np.float32:
    """The smallest float32 >= ``threshold``: for float32 scores, ``score >= result`` is exactly
    ``score >= threshold`` evaluated on the real numbers (no rounding of the threshold)."""
    t32 = np.float32(threshold)
    if float(t32) < float(threshold):
        t32 = np.nextafter(t32, np.float32(np.inf))
    return t32


def _as_label(label) -> np.ndarray:
    label = to_numpy(label)
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"label values must be 0, 1 or 255; got values in [{label.min()}, {label.max()}]")
        label = label.astype(np.uint8)
    return label


class AnomalyMetrics:
    """Accumulates frames and computes AP, AUROC, FPR95, best pixel F1, sIoU, PPV and mean F1.

    ``update(score, label, frame)``: score is H x W (higher = more anomalous, any finite range),
    label is H x W in the 0 / 1 / 255 convention (255 = void, ignored), frame an optional name
    used in error messages and (protocol "smiyc") to order frames.

    Protocols (``docs/evaluation_protocols.md``):

    * ``"exact"`` (default): the metrics of the float32 scores exactly, i.e. scikit-learn's
      ``average_precision_score`` / ``roc_auc_score`` on all valid pixels, FPR at the first
      threshold with TPR >= 0.95, best F1 over every distinct score (see
      :mod:`.pixel_exact` for how this stays streaming with bounded RAM). float16, bfloat16 and
      small integer scores are float32 values, so they are exact too. float64 (and wide integer)
      scores are rounded to float32; a frame where that merges distinct values raises a
      RuntimeWarning with the count, and the metrics are then exact for the rounded scores.
      Components: prediction ``score >= delta`` on cached float32 maps, delta = the best-F1
      score (a float32 value) or ``component_threshold`` as given (compared exactly).
    * ``"smiyc"``: the official Segment-Me-If-You-Can code's numbers (float16 scores,
      768 per-frame percentile bins, delta from the binned curve, ``score > delta``), see
      :mod:`.smiyc_protocol` for every rule reproduced and the choices pinned.

    Non-finite scores on valid pixels raise ValueError naming the frame (under "smiyc", values
    beyond float16's range too: the official pipeline would store inf).

    Args:
        component_threshold: fixed delta (None: best pixel F1 of the protocol's curve).
        min_pred_size / min_gt_size: component size filters in pixels (SMIYC anomaly track: 500 /
            100; obstacle track: 50 / 10).
        taus: sIoU / PPV thresholds averaged in mean F1.
        with_components: False skips caching and component metrics (pixel metrics only).
        cache_memory_bytes: cached score maps beyond this size go to a temporary directory.
        tmp_root: folder for temporary files (default: the system's).
        protocol: "exact" or "smiyc".
        key_buffer_bytes: "exact" only: score keys held in RAM before going to a temporary file.
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
        protocol: str = "exact",
        key_buffer_bytes: int = 128 << 20,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.fixed_threshold = None if component_threshold is None else float(component_threshold)
        self.min_pred_size = int(min_pred_size)
        self.min_gt_size = int(min_gt_size)
        self.taus = np.asarray(taus, dtype=np.float64)
        self.with_components = with_components
        self.pixels = ExactPixelAccumulator(key_buffer_bytes, tmp_root=tmp_root) if protocol == "exact" else None
        self.smiyc_frames: List[SmiycFrameBins] = []
        self.cache = ScoreMapCache(cache_memory_bytes, tmp_root) if with_components else None
        self.num_frames = 0
        self.rounded_frames = 0  # float64 frames where rounding to float32 merged values
        self.merged_values = 0

    # ------------------------------------------------------------------------------ update

    def _exact_scores(self, score, valid: np.ndarray, name: str) -> np.ndarray:
        """float32 scores; counts (and warns about) distinct float64 values merged by rounding."""
        array = score
        if array.dtype == np.float32:
            return array
        if array.dtype.type in _FLOAT32_EXACT:
            return array.astype(np.float32)
        wide = array.astype(np.float64)
        with np.errstate(over="ignore"):  # beyond float32's range -> inf, reported as non-finite
            narrow = wide.astype(np.float32)
        v64, v32 = wide[valid], narrow[valid]
        finite = np.isfinite(v32)
        if np.any(v32[finite] != v64[finite]):
            merged = len(np.unique(v64[finite])) - len(np.unique(v32[finite]))
            if merged:
                if self.rounded_frames == 0:
                    warnings.warn(
                        f"frame {name}: rounding the {array.dtype} scores to float32 merged {merged} distinct values "
                        "into others; metrics are exact for the float32-rounded scores (later frames are counted, "
                        "compute() reports the total)", RuntimeWarning)
                self.rounded_frames += 1
                self.merged_values += merged
        return narrow

    def update(self, score, label, frame: Optional[str] = None) -> None:
        """Adds one frame.

        Args:
            score: H x W anomaly scores (numpy array or tensor on any device, any float or integer
                dtype; higher = more anomalous).
            label: H x W, 0 = in-distribution, 1 = anomaly, 255 = void (ignored).
            frame: a name for messages; under "smiyc" frames are ordered by it (when every frame
                has one), like the benchmark's sorted frame ids.
        Raises:
            ValueError: shapes differ or are not 2-D; a label value other than 0 / 1 / 255; a NaN
                or infinite score on a valid pixel (after the cast to float32, or under "smiyc"
                to float16), naming the frame.
        """
        name = repr(frame) if frame is not None else f"#{self.num_frames}"
        score = to_numpy(score)
        label = _as_label(label)
        if score.shape != label.shape or label.ndim != 2:
            raise ValueError(f"frame {name}: expected H x W score and label of one shape, got "
                             f"{score.shape} and {label.shape}")
        flat_label = label.ravel()
        label_counts = np.bincount(flat_label, minlength=256)
        if label_counts[2:255].any():
            bad = [int(v) for v in np.flatnonzero(label_counts) if v not in (0, 1, 255)]
            raise ValueError(f"frame {name}: label values must be 0, 1 or 255; got {bad}")
        valid = flat_label != 255
        if self.protocol == "exact":
            input_dtype = score.dtype
            score = self._exact_scores(score, valid.reshape(label.shape), name)
            bits = np.ascontiguousarray(score).view(np.uint32).ravel()
            pos = ExactPixelAccumulator.frame_keys(bits[flat_label == 1])
            neg = ExactPixelAccumulator.frame_keys(bits[flat_label == 0])
            coarse = ExactPixelAccumulator.coarse_of(pos, neg)
            if ExactPixelAccumulator.non_finite(coarse):
                wide = ("" if input_dtype.type in _FLOAT32_EXACT
                        else f" (after rounding the {input_dtype} scores to float32)")
                self._raise_non_finite(score.ravel()[valid], name, wide)
            self.pixels.update_keys(pos, neg, coarse)
        else:
            score = to_float16(score)
            values = score.ravel()[valid]
            if not np.isfinite(values).all():
                self._raise_non_finite(values, name, " in float16 (the official pipeline stores float16: "
                                                     "|score| > 65504 becomes inf)")
            bins = smiyc_frame_bins(values, flat_label[valid] == 1, None if frame is None else str(frame))
            if bins is not None:
                self.smiyc_frames.append(bins)
        if self.cache is not None:
            self.cache.add(score, label)
        self.num_frames += 1

    @staticmethod
    def _raise_non_finite(values: np.ndarray, name: str, where: str) -> None:
        nans, infs = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        raise ValueError(f"frame {name}: the anomaly score has {nans} NaN and {infs} infinite values on valid "
                         f"(label 0 / 1) pixels{where}")

    def merge(self, other: "AnomalyMetrics") -> None:
        """Adds another accumulator's frames (histograms summed, keys, bins and cached maps appended).

        Raises ValueError for ``self`` itself and for an accumulator with other settings.
        """
        if other is self:
            raise ValueError("cannot merge an AnomalyMetrics into itself (its frames would be counted twice)")
        mine = (self.protocol, self.with_components, self.min_pred_size, self.min_gt_size, self.fixed_threshold)
        theirs = (other.protocol, other.with_components, other.min_pred_size, other.min_gt_size, other.fixed_threshold)
        if mine != theirs or not np.array_equal(self.taus, other.taus):
            raise ValueError(f"cannot merge accumulators with different settings (protocol, with_components, "
                             f"sizes, threshold): {mine} vs {theirs}")
        if self.pixels is not None:
            self.pixels.merge(other.pixels)
        self.smiyc_frames.extend(other.smiyc_frames)
        if self.cache is not None:
            for score, label in other.cache:
                self.cache.add(score, label)
        self.num_frames += other.num_frames
        self.rounded_frames += other.rounded_frames
        self.merged_values += other.merged_values

    # ----------------------------------------------------------------------------- compute

    def pixel_result(self, gather: Optional[Callable[[object], List[object]]] = None) -> PixelResult:
        """Pixel metrics and the best-F1 threshold of the protocol.

        Args:
            gather: ``detectron2.utils.comm.all_gather`` to pool every process's frames (every
                process must call it, in the same order for each accumulator; all get the same
                result), or None for this process's frames.
        """
        if self.merged_values:
            warnings.warn(f"{self.merged_values} distinct score values in {self.rounded_frames} frames were merged "
                          "by rounding float64 scores to float32; metrics are exact for the rounded scores",
                          RuntimeWarning)
        if self.protocol == "exact":
            return self.pixels.compute(gather)
        frames = self.smiyc_frames
        if gather is not None:
            frames = [f for part in gather(self.smiyc_frames) for f in part]
        return smiyc_pixel_result(frames)

    def component_threshold(self, pixel: Optional[PixelResult] = None) -> Optional[float]:
        """The configured delta, else the best-F1 threshold of ``pixel`` (default: own frames)."""
        if self.fixed_threshold is not None:
            return self.fixed_threshold
        return (pixel or self.pixel_result()).best_f1_threshold

    def prediction(self, score: np.ndarray, threshold: float) -> np.ndarray:
        """The component mask of one cached map: ``score >= threshold`` exactly ("exact") or the
        official ``score > threshold`` with numpy 1.x's float16 comparison ("smiyc")."""
        if self.protocol == "exact":
            return score >= float32_at_least(threshold)
        return smiyc_prediction(score, threshold)

    def component_stats(self, threshold: float) -> ComponentStats:
        """Per-component sIoU / PPV of the cached frames at the component threshold delta."""
        if self.cache is None:
            raise ValueError("component metrics were disabled (with_components=False)")
        stats = ComponentStats()
        for score, label in self.cache:
            siou, ppv = frame_component_scores(self.prediction(score, threshold), label, self.min_pred_size,
                                               self.min_gt_size, void_small_background=self.protocol == "smiyc")
            stats.add_frame(siou, ppv)
        return stats

    def compute(self) -> Dict[str, float]:
        """Every metric of the frames seen so far, as floats (NaN where undefined)."""
        pixel = self.pixel_result()
        results = dict(pixel.metrics)
        if self.cache is None:
            return results
        threshold = self.component_threshold(pixel)
        results["component_threshold"] = float("nan") if threshold is None else threshold
        stats = self.component_stats(threshold) if threshold is not None else ComponentStats()
        results.update(stats.metrics(self.taus))
        return results

    def close(self) -> None:
        """Frees the cached score maps and keys (and their temporary files)."""
        if self.pixels is not None:
            self.pixels.close()
        if self.cache is not None:
            self.cache.close()
