"""Object sprites of the two families that never appear in the inlier scenes.

* Anomaly family (test split only): star polygons with checkerboards or stripes, lumpy "lost
  cargo" blobs with asphalt-like or cardboard textures, four-legged "animals" with spots, and
  mossy rocks with foliage-like textures (close to vegetation / terrain on purpose).
* Outlier family (the pasting pool, used in training): tyre-like rings, sack-like crescents,
  crate-like rounded squares and crossed planks, mostly in everyday-object colours with wood
  grain, grime, plaid or polka dots (a quarter in saturated colours).

A sprite is (mask: h x w bool, rgb: h x w x 3 float32 in 0..1).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import cv2
import numpy as np

from .textures import checkerboard, fractal_noise, spots, stripes

Sprite = Tuple[np.ndarray, np.ndarray]


def _color(rng: np.random.Generator, saturated: bool = True) -> np.ndarray:
    if saturated:
        c = rng.uniform(0, 0.3, 3)
        c[rng.integers(0, 3)] = rng.uniform(0.7, 1.0)
        return c.astype(np.float32)
    return rng.uniform(0.2, 0.8, 3).astype(np.float32)


def _two_tone(pattern: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = (pattern[..., None] + 1) / 2
    return (a * t + b * (1 - t)).astype(np.float32)


def _blob_mask(rng: np.random.Generator, h: int, w: int, roughness: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
    return (r + roughness * fractal_noise(rng, (h, w), 3, 2)) < 0.8


# ----------------------------------------------------------------------------- anomaly family


def star_sprite(rng: np.random.Generator, size: int) -> Sprite:
    spikes = int(rng.integers(4, 11))
    inner = rng.uniform(0.35, 0.75)
    angles = np.linspace(0, 2 * np.pi, 2 * spikes, endpoint=False) + rng.uniform(0, np.pi)
    radii = np.where(np.arange(2 * spikes) % 2 == 0, 1.0, inner) * (size / 2 - 1)
    pts = np.stack([size / 2 + radii * np.cos(angles), size / 2 + radii * np.sin(angles)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    period = rng.uniform(3, 10)
    pattern = checkerboard((size, size), period, rng.uniform(0, np.pi)) if rng.random() < 0.5 else \
        stripes((size, size), period, rng.uniform(0, np.pi))
    return mask.astype(bool), _two_tone(pattern, _color(rng), _color(rng))


def cargo_sprite(rng: np.random.Generator, size: int) -> Sprite:
    h, w = max(3, int(size * rng.uniform(0.45, 0.9))), size
    mask = _blob_mask(rng, h, w, rng.uniform(0.2, 0.7))
    if rng.random() < 0.5:  # asphalt-like grey: hard to tell from the road
        base = np.full(3, rng.uniform(0.25, 0.5), np.float32) + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
        amp = 0.15
    else:  # cardboard / wood
        base = np.array([0.6, 0.45, 0.28], np.float32) * rng.uniform(0.7, 1.2)
        amp = 0.25
    rgb = base * (1 + amp * fractal_noise(rng, (h, w), 8, 3))[..., None]
    return mask, rgb.astype(np.float32)


def animal_sprite(rng: np.random.Generator, size: int) -> Sprite:
    h, w = max(6, int(size * 0.75)), size
    mask = np.zeros((h, w), np.uint8)
    body_cy, body_rx, body_ry = int(h * 0.45), int(w * 0.32), max(1, int(h * 0.2))
    cv2.ellipse(mask, (w // 2, body_cy), (body_rx, body_ry), 0, 0, 360, 1, -1)
    head_x = w // 2 + (body_rx if rng.random() < 0.5 else -body_rx)
    cv2.ellipse(mask, (head_x, int(h * 0.28)), (max(1, int(w * 0.1)), max(1, int(h * 0.12))), 0, 0, 360, 1, -1)
    leg_w = max(1, int(w * 0.04))
    for lx in np.linspace(w / 2 - body_rx * 0.8, w / 2 + body_rx * 0.8, 4):
        cv2.rectangle(mask, (int(lx) - leg_w, body_cy), (int(lx) + leg_w, h - 1), 1, -1)
    coat = np.array(rng.choice([(0.55, 0.35, 0.2), (0.9, 0.88, 0.8), (0.15, 0.12, 0.1), (0.75, 0.6, 0.35)]), np.float32)
    patch = np.array(rng.choice([(0.1, 0.08, 0.06), (0.95, 0.95, 0.92), (0.45, 0.25, 0.1)]), np.float32)
    dots = spots(rng, (h, w), rng.uniform(0.5, 2.0), (max(1, size // 16), max(2, size // 7)))
    rgb = coat * (1 - dots[..., None]) + patch * dots[..., None]
    return mask.astype(bool), rgb.astype(np.float32)


def rock_sprite(rng: np.random.Generator, size: int) -> Sprite:
    h, w = max(3, int(size * rng.uniform(0.5, 0.8))), size
    mask = _blob_mask(rng, h, w, rng.uniform(0.4, 0.9))
    green = np.array([0.25, 0.42, 0.18], np.float32) * rng.uniform(0.7, 1.3)
    grey = np.array([0.5, 0.5, 0.48], np.float32)
    t = np.clip(fractal_noise(rng, (h, w), 6, 3) * 1.5 + 0.5, 0, 1)[..., None]
    rgb = green * t + grey * (1 - t)
    rgb *= 1 + 0.25 * fractal_noise(rng, (h, w), 24, 2)[..., None]
    return mask, rgb.astype(np.float32)


ANOMALY_FAMILY: Dict[str, Callable[[np.random.Generator, int], Sprite]] = {
    "star": star_sprite, "cargo": cargo_sprite, "animal": animal_sprite, "rock": rock_sprite,
}


# ----------------------------------------------------------------------------- outlier family

# Everyday-object colours (browns, greys, off-whites, dull greens and blues); the pool draws
# from them most of the time, like the natural objects of COCO that RbA pastes. A pool of
# saturated sprites only would look like the inlier traffic signs and shirts, and fine-tuning
# on it teaches "saturated = outlier" instead of "no inlier class fits".
_EVERYDAY = np.array([(0.45, 0.3, 0.18), (0.6, 0.45, 0.28), (0.3, 0.3, 0.32), (0.55, 0.55, 0.52), (0.85, 0.83, 0.78),
                      (0.15, 0.13, 0.12), (0.35, 0.42, 0.25), (0.3, 0.38, 0.5), (0.7, 0.6, 0.45), (0.5, 0.22, 0.15)],
                     np.float32)


def _object_color(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.25:
        return _color(rng)
    return np.clip(_EVERYDAY[int(rng.integers(len(_EVERYDAY)))] * rng.uniform(0.8, 1.2)
                   + rng.uniform(-0.04, 0.04, 3), 0, 1).astype(np.float32)


def _surface(rng: np.random.Generator, shape: Tuple[int, int], rgb: np.ndarray) -> np.ndarray:
    """A plain colour roughened by one of: wood grain, fractal grime, fine noise."""
    kind = int(rng.integers(3))
    if kind == 0:
        grain = stripes(shape, rng.uniform(3, 8), rng.uniform(0, np.pi)) + 0.8 * fractal_noise(rng, shape, 6, 2)
        shade = 1 + 0.12 * grain
    elif kind == 1:
        shade = 1 + 0.25 * fractal_noise(rng, shape, 8, 3)
    else:
        shade = 1 + 0.08 * fractal_noise(rng, shape, 32, 2)
    return (rgb * shade[..., None]).astype(np.float32)


def ring_sprite(rng: np.random.Generator, size: int) -> Sprite:
    """A tyre / hose coil: an annulus with concentric bands."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    mask = (r < 0.98) & (r > rng.uniform(0.0, 0.6))
    rings = np.cos(r * rng.uniform(8, 25))
    return mask, _surface(rng, (size, size), _two_tone(rings, _object_color(rng), _object_color(rng)))


def crescent_sprite(rng: np.random.Generator, size: int) -> Sprite:
    """A sack or bag: a crescent, polka-dotted or plain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    dx, dy = rng.uniform(0.2, 0.5) * size * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
    mask = (np.hypot(yy - c, xx - c) < c * 0.98) & (np.hypot(yy - c - dy, xx - c - dx) > c * 0.8)
    dots = spots(rng, (size, size), rng.uniform(1, 3), (max(1, size // 20), max(2, size // 10)))
    if rng.random() < 0.5:
        dots = np.zeros_like(dots)
    rgb = _object_color(rng) * (1 - dots[..., None]) + _object_color(rng) * dots[..., None]
    return mask, _surface(rng, (size, size), rgb.astype(np.float32))


def rounded_square_sprite(rng: np.random.Generator, size: int) -> Sprite:
    """A crate, box or suitcase: a superellipse, plaid or plain."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (xx - size / 2) / (size / 2), (yy - size / 2) / (size / 2)
    n = rng.uniform(3, 6)
    mask = np.abs(u) ** n + np.abs(v) ** n < 0.95
    plaid = 0.5 * stripes((size, size), rng.uniform(4, 12), 0.0) + 0.5 * stripes((size, size), rng.uniform(4, 12), np.pi / 2)
    if rng.random() < 0.5:
        plaid = np.zeros_like(plaid)
    return mask, _surface(rng, (size, size), _two_tone(plaid, _object_color(rng), _object_color(rng)))


def cross_sprite(rng: np.random.Generator, size: int) -> Sprite:
    """Crossed planks or pipes, shaded along one diagonal."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    arm = rng.uniform(0.15, 0.35) * size
    c = size / 2
    mask = ((np.abs(xx - c) < arm) | (np.abs(yy - c) < arm)) & (np.maximum(np.abs(xx - c), np.abs(yy - c)) < c * 0.95)
    ramp = ((xx + yy) / (2 * size))[..., None]
    rgb = _object_color(rng) * (0.75 + 0.5 * ramp)
    return mask, _surface(rng, (size, size), rgb.astype(np.float32))


OUTLIER_FAMILY: Dict[str, Callable[[np.random.Generator, int], Sprite]] = {
    "ring": ring_sprite, "crescent": crescent_sprite, "rounded_square": rounded_square_sprite, "cross": cross_sprite,
}
