"""PR and ROC curve plots (PNG) of pixel operating points, without touching matplotlib's global backend."""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.atomic_write import atomic_open
from .pixel_exact import PixelCurves

__all__ = ["write_curves"]


def _thin(x: np.ndarray, y: np.ndarray, max_points: int = 4000):
    if len(x) <= max_points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, max_points).astype(np.int64))
    return x[keep], y[keep]


def write_curves(curves: Dict[str, PixelCurves], results: Dict[str, Dict[str, float]], prefix: str) -> list:
    """Writes ``<prefix>_pr.png`` and ``<prefix>_roc.png`` with one curve per score name.

    ``curves`` are operating points per score name (``PixelResult.curves``: the exact protocol's
    points at its coarse bins, the SMIYC protocol's binned curve). Returns the written paths
    (none when no score has both anomaly and in-distribution pixels).
    """
    curves = {name: c for name, c in curves.items() if c is not None and c.num_pos > 0 and c.num_neg > 0}
    if not curves:
        return []
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    paths = []
    for kind in ("pr", "roc"):
        figure = Figure(figsize=(5, 4.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        for name, c in curves.items():
            metrics = results.get(name, {})
            if kind == "pr":
                x, y = _thin(np.concatenate([[0.0], c.tpr]), np.concatenate([[1.0], c.precision]))
                axes.step(x, y, where="post", label=f"{name} (AP {metrics.get('AP', float('nan')):.2f})")
            else:
                x, y = _thin(np.concatenate([[0.0], c.fpr]), np.concatenate([[0.0], c.tpr]))
                axes.plot(x, y, label=f"{name} (AUROC {metrics.get('AUROC', float('nan')):.2f}, "
                                      f"FPR95 {metrics.get('FPR95', float('nan')):.2f})")
        if kind == "pr":
            axes.set_xlabel("recall")
            axes.set_ylabel("precision")
        else:
            axes.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, linestyle="--")
            axes.axhline(0.95, color="0.7", linewidth=0.8, linestyle=":")
            axes.set_xlabel("false positive rate")
            axes.set_ylabel("true positive rate")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.legend(loc="lower right" if kind == "roc" else "upper right", fontsize=7)
        axes.set_title(os.path.basename(prefix))
        path = f"{prefix}_{kind}.png"
        with atomic_open(path, "wb") as f:  # a crash never leaves half a PNG
            figure.savefig(f, format="png")
        paths.append(path)
    return paths
