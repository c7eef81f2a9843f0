"""One sample of each synthetic split: inlier scenes, scenes with anomalies, outlier-pool objects."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .objects import ANOMALY_FAMILY, OUTLIER_FAMILY
from .scenes import VOID, Canvas, finish, render_scene, road_point

__all__ = ["make_inlier_sample", "make_anomaly_sample", "make_outlier_sample"]


def make_inlier_sample(rng: np.random.Generator, height: int = 256, width: int = 512) -> Tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 RGB image, H x W uint8 train ids with 255 void)."""
    canvas, _ = render_scene(rng, height, width)
    return finish(canvas, rng), canvas.sem.copy()


def _paste_sprite(canvas: Canvas, anomaly: np.ndarray, mask: np.ndarray, rgb: np.ndarray, x: float, y: float) -> None:
    """Pastes a sprite with its bottom centre at (x, y), clipped to the canvas, never over void."""
    h, w = mask.shape
    top, left = int(round(y)) - h, int(round(x - w / 2))
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(canvas.height, top + h), min(canvas.width, left + w)
    if y1 <= y0 or x1 <= x0:
        return
    m = mask[y0 - top: y1 - top, x0 - left: x1 - left] & (canvas.sem[y0:y1, x0:x1] != VOID)
    region = canvas.image[y0:y1, x0:x1]
    region[m] = rgb[y0 - top: y1 - top, x0 - left: x1 - left][m]
    canvas.material[y0:y1, x0:x1][m] = 0
    anomaly[y0:y1, x0:x1] |= m


def make_anomaly_sample(
    rng: np.random.Generator, height: int = 256, width: int = 512, min_pixels: int = 20
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scene with 1-3 anomaly-family objects of varied size, on the road or elsewhere.

    Returns (H x W x 3 uint8 image, H x W uint8 anomaly label 0 / 1 / 255,
    H x W uint8 train ids with 255 on anomalies and void).
    """
    canvas, layout = render_scene(rng, height, width)
    anomaly = np.zeros((height, width), bool)
    families = list(ANOMALY_FAMILY)
    while True:
        for _ in range(int(rng.integers(1, 4))):
            sprite_fn = ANOMALY_FAMILY[families[int(rng.integers(0, len(families)))]]
            size = int(np.exp(rng.uniform(np.log(10), np.log(150))))
            mask, rgb = sprite_fn(rng, size)
            if rng.random() < 0.6:
                x, y, _ = road_point(rng, layout["vx"], layout["half"], layout["foot"], height)
            else:
                x, y = rng.uniform(0, width), rng.uniform(layout["foot"] - 10, height)
            _paste_sprite(canvas, anomaly, mask, rgb, x, y + mask.shape[0] * rng.uniform(0, 0.1))
        if anomaly.sum() >= min_pixels:
            break
    label = np.where(anomaly, 1, np.where(canvas.sem == VOID, 255, 0)).astype(np.uint8)
    sem = np.where(anomaly, VOID, canvas.sem).astype(np.uint8)
    return finish(canvas, rng), label, sem


def make_outlier_sample(rng: np.random.Generator, size: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """An outlier-family object on a noisy background: (size x size x 3 uint8, size x size uint8 mask
    with 254 on the object and 0 elsewhere), in the layout of prepared COCO outliers."""
    families = list(OUTLIER_FAMILY)
    object_size = int(size * rng.uniform(0.5, 0.95))
    mask, rgb = OUTLIER_FAMILY[families[int(rng.integers(0, len(families)))]](rng, object_size)
    image = rng.uniform(0.2, 0.8, 3).astype(np.float32) * np.ones((size, size, 3), np.float32)
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    top, left = (int(rng.integers(0, size - object_size + 1)) for _ in range(2))
    full_mask = np.zeros((size, size), bool)
    full_mask[top: top + object_size, left: left + object_size] = mask
    image[top: top + object_size, left: left + object_size][mask] = rgb[mask]
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, np.where(full_mask, 254, 0).astype(np.uint8)
