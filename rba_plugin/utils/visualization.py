"""Pictures of predictions: anomaly heat-maps over the image and closed-set colour segmentation."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .atomic_write import atomic_open

__all__ = ["anomaly_heatmap", "overlay_heatmap", "colorize_sem_seg", "side_by_side", "labelled_panels",
           "save_figure"]


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


def labelled_panels(
    panels: Mapping[str, np.ndarray],
    score_range: Tuple[float, float],
    score_label: str,
    cmap: str = "inferno",
    panel_width: float = 3.2,
) -> Figure:
    """A figure of H x W x 3 uint8 RGB panels in a row, each titled with its key, and one colour
    bar for the heat-map panels: ``score_range`` (low, high) mapped through ``cmap`` as
    :func:`anomaly_heatmap` does, labelled ``score_label``. Uses matplotlib's object API (no
    pyplot state), so it is safe in any process."""
    height, width = next(iter(panels.values())).shape[:2]
    figure = Figure(figsize=(panel_width * len(panels), panel_width * height / width + 1.0))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, panel) in zip(axes, panels.items()):
        ax.imshow(panel)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    mappable = ScalarMappable(norm=Normalize(*score_range), cmap=cmap)
    # Horizontal, under the row: a long label stays readable whatever the panels' aspect.
    bar = figure.colorbar(mappable, ax=list(axes), orientation="horizontal", fraction=0.08, pad=0.04, aspect=60)
    bar.set_label(score_label, fontsize=8)
    return figure


def save_figure(figure: Figure, path: str, dpi: int = 120) -> None:
    """Write ``figure`` as a PNG at ``path`` atomically (a kill never leaves half a file)."""
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
