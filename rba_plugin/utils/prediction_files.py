"""Files a prediction is saved as: heat-map overlay, colour segmentation, raw score map.

Every file is written to a temporary name and renamed (``atomic_open``), so an interrupted run
leaves whole files or none.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, PngImagePlugin

from .atomic_write import atomic_open
from .visualization import anomaly_heatmap, colorize_sem_seg, overlay_heatmap, side_by_side

__all__ = ["write_prediction_files", "write_score_png16", "read_score_png16", "save_png", "SCORE_FORMATS"]

SCORE_FORMATS = ("npy", "png16")


def save_png(path: str, array: np.ndarray, pnginfo: Optional[PngImagePlugin.PngInfo] = None) -> None:
    """An H x W (x 3) uint8 or uint16 array as a PNG, written atomically."""
    with atomic_open(path, "wb") as f:
        Image.fromarray(array).save(f, format="PNG", pnginfo=pnginfo)


def write_score_png16(path: str, score: np.ndarray) -> Tuple[float, float]:
    """The H x W score linearly mapped onto 0..65535 as a 16-bit grayscale PNG; the range
    (``score_min``, ``score_max``) is stored in the PNG's text chunks and returned."""
    finite = score[np.isfinite(score)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = (np.nan_to_num(score, nan=lo, posinf=hi, neginf=lo) - lo) / max(hi - lo, 1e-30)
    quantised = np.clip(np.rint(scaled * 65535.0), 0, 65535).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("score_min", repr(lo))
    info.add_text("score_max", repr(hi))
    save_png(path, quantised, info)
    return lo, hi


def read_score_png16(path: str) -> np.ndarray:
    """The float64 score map of a file written by :func:`write_score_png16` (to 1/65535 of its range)."""
    with Image.open(path) as image:
        lo, hi = float(image.text["score_min"]), float(image.text["score_max"])
        quantised = np.asarray(image, dtype=np.float64)
    return lo + quantised / 65535.0 * (hi - lo)


def write_prediction_files(
    output_dir: str,
    stem: str,
    image_rgb: np.ndarray,
    class_ids: np.ndarray,
    score: np.ndarray,
    palette: Sequence[Sequence[int]],
    score_formats: Sequence[str] = SCORE_FORMATS,
) -> Dict[str, str]:
    """Writes, for one image (H x W x 3 RGB, H x W class ids, H x W float score):

    * ``<stem>_anomaly.png``: the anomaly heat-map (inferno, the image's own score range) over the image;
    * ``<stem>_sem_seg.png``: the closed-set prediction in ``palette``'s colours;
    * ``<stem>_panel.png``: image | segmentation | overlay side by side;
    * ``<stem>_score.npy`` (float32) and / or ``<stem>_score.png`` (16-bit, see :func:`write_score_png16`).

    Returns {kind: path}.
    """
    unknown = set(score_formats) - set(SCORE_FORMATS)
    if unknown:
        raise ValueError(f"score formats {sorted(unknown)} unknown; choose from {SCORE_FORMATS}")
    if score.shape != image_rgb.shape[:2] or class_ids.shape != image_rgb.shape[:2]:
        raise ValueError(f"{stem}: image {image_rgb.shape[:2]}, classes {class_ids.shape} and score {score.shape} differ in size")
    finite = score[np.isfinite(score)]
    heat = anomaly_heatmap(np.nan_to_num(score, nan=float(finite.min()) if finite.size else 0.0))
    overlay = overlay_heatmap(image_rgb, heat)
    colours = colorize_sem_seg(class_ids, palette)
    paths = {
        "anomaly": os.path.join(output_dir, f"{stem}_anomaly.png"),
        "sem_seg": os.path.join(output_dir, f"{stem}_sem_seg.png"),
        "panel": os.path.join(output_dir, f"{stem}_panel.png"),
    }
    save_png(paths["anomaly"], overlay)
    save_png(paths["sem_seg"], colours)
    save_png(paths["panel"], side_by_side([image_rgb, colours, overlay]))
    if "npy" in score_formats:
        paths["score_npy"] = os.path.join(output_dir, f"{stem}_score.npy")
        with atomic_open(paths["score_npy"], "wb") as f:
            np.save(f, score.astype(np.float32))
    if "png16" in score_formats:
        paths["score_png16"] = os.path.join(output_dir, f"{stem}_score.png")
        write_score_png16(paths["score_png16"], score)
    return paths
