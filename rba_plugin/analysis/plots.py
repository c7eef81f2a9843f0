"""Figures of the query analyses (PNG), drawn on matplotlib ``Figure`` objects without touching
its global backend, each written atomically."""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..utils.atomic_write import atomic_open

__all__ = [
    "cluster_colors",
    "plot_specialization",
    "plot_masking_iou",
    "plot_vote_histograms",
    "plot_cluster_map",
    "plot_pixel_votes",
]


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.tight_layout()
    with atomic_open(path, "wb") as f:  # a crash never leaves half a PNG
        figure.savefig(f, format="png")
    return path


def cluster_colors(num_clusters: int) -> np.ndarray:
    """num_clusters x 3 RGB in [0, 1] (matplotlib's tab10, tab20 above 10 clusters)."""
    cmap = colormaps["tab10" if num_clusters <= 10 else "tab20"]
    return np.array([cmap(i)[:3] for i in range(num_clusters)])


def plot_specialization(
    counts: np.ndarray, class_names: Sequence[str], specialized: Sequence[Optional[int]], threshold: float,
    num_images: int, path: str,
) -> str:
    """Heat-map of the Q x C confident-prediction counts (queries down, classes across), the
    specialised query of each class circled (RbA paper Fig. 8)."""
    num_queries, num_classes = counts.shape
    figure = _figure(max(6.0, 0.35 * num_classes + 2.5), max(4.0, 0.12 * num_queries + 2.0))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(counts, aspect="auto", interpolation="nearest", cmap="viridis")
    for k, q in enumerate(specialized):
        if q is not None:
            axes.scatter([k], [q], s=60, facecolors="none", edgecolors="red", linewidths=1.2)
    axes.set_xticks(range(num_classes))
    axes.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    step = max(1, num_queries // 25)
    axes.set_yticks(range(0, num_queries, step))
    axes.tick_params(axis="y", labelsize=7)
    axes.set_xlabel("class")
    axes.set_ylabel("object query")
    axes.set_title(f"images with softmax(class) >= {threshold:g} (of {num_images}); red: specialised query", fontsize=9)
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.set_label("images")
    return _save(figure, path)


def plot_masking_iou(iou: Dict[str, np.ndarray], class_names: Sequence[str], path: str) -> str:
    """Grouped bars of per-class IoU (percent) per masking variant (RbA paper Fig. 3); a class
    with no IoU (NaN) gets no bar."""
    variants = list(iou)
    num_classes = len(class_names)
    figure = _figure(max(7.0, 0.55 * num_classes + 2.0), 4.5)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(variants)
    positions = np.arange(num_classes)
    for i, variant in enumerate(variants):
        values = np.nan_to_num(np.asarray(iou[variant], np.float64), nan=0.0)
        axes.bar(positions + (i - (len(variants) - 1) / 2) * width, values, width, label=variant)
    axes.set_xticks(positions)
    axes.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    axes.set_ylabel("IoU (%)")
    axes.set_ylim(0, 100)
    axes.set_title("per-class IoU with only the class's specialised query", fontsize=9)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_vote_histograms(
    bin_edges: np.ndarray, largest: np.ndarray, second_largest: np.ndarray, names: Sequence[str], path: str
) -> str:
    """One panel per cluster: histograms of the sampled pixels' largest and second-largest class
    score (RbA paper Fig. 4a-d), framed in the cluster's map colour."""
    num_clusters = len(names)
    colors = cluster_colors(num_clusters)
    columns = min(num_clusters, 4)
    rows = -(-num_clusters // columns)
    figure = _figure(3.2 * columns, 2.6 * rows)
    centres = (bin_edges[:-1] + bin_edges[1:]) / 2
    width = bin_edges[1] - bin_edges[0]
    for c in range(num_clusters):
        axes = figure.add_subplot(rows, columns, c + 1)
        axes.bar(centres, largest[c], width, alpha=0.6, label="largest L_k")
        axes.bar(centres, second_largest[c], width, alpha=0.6, label="second largest")
        axes.set_title(f"cluster {c}: {names[c]} ({int(largest[c].sum())} px)", fontsize=8, color=colors[c])
        for spine in axes.spines.values():
            spine.set_edgecolor(colors[c])
            spine.set_linewidth(2)
        axes.set_xlabel("class score (vote)", fontsize=7)
        axes.set_ylabel("sampled pixels", fontsize=7)
        axes.tick_params(labelsize=7)
        if c == 0:
            axes.legend(fontsize=7)
    return _save(figure, path)


def plot_cluster_map(
    image_rgb: np.ndarray, cluster_map: np.ndarray, names: Sequence[str], path: str, title: str = ""
) -> str:
    """The image beside its pixels coloured by cluster (RbA paper Fig. 4e), with a legend."""
    colors = cluster_colors(len(names))
    height, width = cluster_map.shape
    # Two panels of the image's aspect ratio side by side, at most 16 inches wide, plus room for
    # the titles above and the legend below.
    panel_height = min(4.0, 7.6 / max(width / max(height, 1), 1e-3))
    figure = _figure(2 * panel_height * width / max(height, 1) + 0.4, panel_height + 1.2)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    left.imshow(image_rgb)
    left.set_title(title or "image", fontsize=8)
    right.imshow(colors[cluster_map])
    right.set_title("cluster of the sorted class scores", fontsize=8)
    for axes in (left, right):
        axes.set_xticks([])
        axes.set_yticks([])
    handles = [Patch(color=colors[c], label=f"{c}: {n}") for c, n in enumerate(names)]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(names), 4), fontsize=8)
    total = panel_height + 1.2
    figure.subplots_adjust(left=0.01, right=0.99, top=1 - 0.4 / total, bottom=0.6 / total, wspace=0.03)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png")
    return path


def plot_pixel_votes(
    votes: np.ndarray, class_scores: np.ndarray, pixels: Sequence[Tuple[int, int]], class_names: Sequence[str],
    path: str, top_classes: int = 6, top_queries: int = 5,
) -> str:
    """One panel per pixel: each of its ``top_classes`` largest class scores L_k as a bar stacked
    from the votes of the ``top_queries`` queries with the largest total vote, the rest as
    "other queries"."""
    num_pixels = len(pixels)
    figure = _figure(max(5.0, 0.8 * top_classes + 2.5), 3.0 * num_pixels)
    cmap = colormaps["tab10"]
    for p, (y, x) in enumerate(pixels):
        axes = figure.add_subplot(num_pixels, 1, p + 1)
        classes = np.argsort(-class_scores[p], kind="stable")[:top_classes]
        queries = np.argsort(-votes[p].sum(1), kind="stable")[:top_queries]
        bottom = np.zeros(len(classes))
        for i, q in enumerate(queries):
            height = votes[p, q, classes]
            axes.bar(range(len(classes)), height, bottom=bottom, color=cmap(i % 10), label=f"query {q}")
            bottom += height
        rest = votes[p][:, classes].sum(0) - bottom
        axes.bar(range(len(classes)), np.clip(rest, 0, None), bottom=bottom, color="0.75", label="other queries")
        axes.set_xticks(range(len(classes)))
        axes.set_xticklabels([class_names[k] for k in classes], rotation=30, ha="right", fontsize=8)
        axes.set_ylabel("L_k (sum of votes)", fontsize=8)
        axes.set_title(f"pixel (y={y}, x={x})", fontsize=9)
        axes.legend(fontsize=7, loc="upper right")
    return _save(figure, path)
