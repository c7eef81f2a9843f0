"""Pictures of predictions: anomaly heat-maps over the image and closed-set colour segmentation."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from matplotlib import colormaps

__all__ = ["anomaly_heatmap", "overlay_heatmap", "colorize_sem_seg", "side_by_side"]


def anomaly_heatmap(
    score: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None, cmap: str = "inferno"
) -> np.ndarray:
    """H x W anomaly score -> H x W x 3 uint8 RGB colour map (bright = anomalous).

    ``vmin``/``vmax`` default to the map's own range; pass fixed values to compare maps.
    """
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2:
        raise ValueError(f"anomaly_heatmap: expected an H x W score map, got shape {score.shape}")
    lo = np.nanmin(score) if vmin is None else vmin
    hi = np.nanmax(score) if vmax is None else vmax
    normalised = np.clip((score - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return (colormaps[cmap](normalised)[..., :3] * 255).round().astype(np.uint8)


def overlay_heatmap(image_rgb: np.ndarray, heatmap_rgb: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend an H x W x 3 heat-map over an H x W x 3 uint8 RGB image."""
    if image_rgb.shape != heatmap_rgb.shape:
        raise ValueError(f"overlay_heatmap: image {image_rgb.shape} and heat-map {heatmap_rgb.shape} differ")
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * heatmap_rgb.astype(np.float32)
    return blended.round().clip(0, 255).astype(np.uint8)


def colorize_sem_seg(prediction: np.ndarray, colors: Sequence[Sequence[int]], ignore_color=(0, 0, 0)) -> np.ndarray:
    """H x W class ids -> H x W x 3 uint8 RGB using ``colors`` (e.g. the Cityscapes palette);
    ids outside the palette (void) get ``ignore_color``."""
    palette = np.array(list(colors) + [ignore_color], dtype=np.uint8)
    ids = np.asarray(prediction).astype(np.int64)
    ids = np.where((ids >= 0) & (ids < len(colors)), ids, len(colors))
    return palette[ids]


def side_by_side(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate H x W x 3 images horizontally with a white gap."""
    height = images[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    parts = []
    for i, img in enumerate(images):
        if img.shape[0] != height:
            raise ValueError("side_by_side: images must share a height")
        parts.extend([spacer, img] if i else [img])
    return np.concatenate(parts, axis=1)
