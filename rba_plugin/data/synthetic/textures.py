"""Procedural textures for the synthetic scenes: smooth noise fields and periodic patterns.

All functions take a numpy Generator and return float32 arrays; nothing uses global RNG state.
"""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cells: int) -> np.ndarray:
    """H x W noise in about [-1, 1], smooth at the scale of ``cells`` cells across the width."""
    h, w = shape
    cells_x = max(2, cells)
    cells_y = max(2, int(round(cells * h / max(w, 1))))
    grid = rng.uniform(-1, 1, size=(cells_y, cells_x)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def fractal_noise(rng: np.random.Generator, shape: Tuple[int, int], base_cells: int = 4, octaves: int = 4) -> np.ndarray:
    """Sum of octaves of :func:`smooth_noise` (halving amplitude, doubling frequency), H x W."""
    # Octaves are summed at half resolution and up-sampled once (4x fewer pixels to resize).
    h, w = shape
    half = (max(2, h // 2), max(2, w // 2))
    out = np.zeros(half, np.float32)
    amplitude, total = 1.0, 0.0
    for octave in range(octaves):
        out += amplitude * smooth_noise(rng, half, max(2, base_cells * 2**octave // 2))
        total += amplitude
        amplitude *= 0.5
    return cv2.resize(out / total, (w, h), interpolation=cv2.INTER_LINEAR)


def stripes(shape: Tuple[int, int], period: float, angle: float, phase: float = 0.0) -> np.ndarray:
    """H x W square-wave stripes in {-1, 1}."""
    h, w = shape
    c, s = float(np.cos(angle)), float(np.sin(angle))
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if abs(s) < 1e-9 or abs(c) < 1e-9:  # axis-aligned: compute one row or column and broadcast
        line = (xx * c if abs(s) < 1e-9 else yy * s) / period + phase
        return np.broadcast_to(np.where((line % 1.0) < 0.5, 1.0, -1.0).astype(np.float32), shape).copy()
    t = (xx * np.float32(c) + yy * np.float32(s)) / np.float32(period) + np.float32(phase)
    return np.where((t % 1.0) < 0.5, 1.0, -1.0).astype(np.float32)


def checkerboard(shape: Tuple[int, int], period: float, angle: float) -> np.ndarray:
    """H x W checkerboard in {-1, 1}."""
    return stripes(shape, period, angle) * stripes(shape, period, angle + np.pi / 2)


def spots(rng: np.random.Generator, shape: Tuple[int, int], density: float, radius: Tuple[int, int]) -> np.ndarray:
    """H x W map in {0, 1} with random filled discs."""
    h, w = shape
    canvas = np.zeros(shape, np.uint8)
    count = max(1, int(density * h * w / 100.0))
    for _ in range(count):
        cv2.circle(canvas, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(*radius)), 1, -1)
    return canvas.astype(np.float32)
