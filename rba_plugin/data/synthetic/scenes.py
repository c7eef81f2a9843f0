"""Seeded street scenes with Cityscapes train ids (the inlier world of the synthetic benchmark).

A scene is painted back to front on a :class:`Canvas`: flat colours and class ids per shape, a
material id per pixel that later selects a texture, then lighting, shadows and sensor noise.
Classes used (train ids): road 0, sidewalk 1, building 2, pole 5, traffic sign 7, vegetation 8,
terrain 9, sky 10, person 11, car 13, bus 15; 255 marks the ego-vehicle void.
"""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

from .textures import checkerboard, fractal_noise, smooth_noise

ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR, BUS = 0, 1, 2, 5, 7, 8, 9, 10, 11, 13, 15
VOID = 255

# Materials: each one gets its own texture in Canvas.finish().
FLAT, ASPHALT, PAVING, FACADE, FOLIAGE, GRASS, CLOUDS, PAINT, CLOTH = range(9)
NUM_MATERIALS = 9


class Canvas:
    """Image (H x W x 3 float32, 0..1 RGB), train-id map (H x W uint8) and material map."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.sem = np.full((height, width), VOID, np.uint8)
        self.material = np.zeros((height, width), np.uint8)

    def _apply(self, mask: np.ndarray, color, class_id: int, material: int) -> None:
        self.image[mask] = color
        self.sem[mask] = class_id
        self.material[mask] = material

    def polygon(self, points, color, class_id: int, material: int = FLAT) -> None:
        # Drawing straight into the three maps keeps a scene at a few milliseconds.
        pts = [np.round(np.asarray(points)).astype(np.int32)]
        cv2.fillPoly(self.image, pts, tuple(float(c) for c in color))
        cv2.fillPoly(self.sem, pts, int(class_id))
        cv2.fillPoly(self.material, pts, int(material))

    def rect(self, x0, y0, x1, y1, color, class_id: int, material: int = FLAT) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color, class_id, material)

    def ellipse(self, cx, cy, rx, ry, color, class_id: int, material: int = FLAT, angle: float = 0.0) -> None:
        args = ((int(cx), int(cy)), (max(1, int(rx)), max(1, int(ry))), angle, 0, 360)
        cv2.ellipse(self.image, *args, tuple(float(c) for c in color), -1)
        cv2.ellipse(self.sem, *args, int(class_id), -1)
        cv2.ellipse(self.material, *args, int(material), -1)

    def mask(self, mask: np.ndarray, color, class_id: int, material: int = FLAT) -> None:
        self._apply(mask, color, class_id, material)


def jitter(rng: np.random.Generator, color, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3), 0, 1)


_TEXTURES = {
    ASPHALT: lambda rng, shape: 0.10 * fractal_noise(rng, shape, 32, 3) + 0.05 * smooth_noise(rng, shape, 6),
    PAVING: lambda rng, shape: 0.06 * fractal_noise(rng, shape, 24, 2)
    + 0.05 * checkerboard(shape, rng.uniform(6, 14), 0.0),
    FACADE: lambda rng, shape: 0.08 * fractal_noise(rng, shape, 8, 3),
    FOLIAGE: lambda rng, shape: 0.30 * fractal_noise(rng, shape, 48, 3),
    GRASS: lambda rng, shape: 0.18 * fractal_noise(rng, shape, 40, 3),
    CLOUDS: lambda rng, shape: 0.12 * fractal_noise(rng, shape, 3, 3),
    PAINT: lambda rng, shape: 0.03 * smooth_noise(rng, shape, 8),
    CLOTH: lambda rng, shape: 0.06 * fractal_noise(rng, shape, 16, 2),
}


def texture_offset(rng: np.random.Generator, material: np.ndarray) -> np.ndarray:
    """H x W multiplicative texture offset (0 = no change), each material with its own texture."""
    offset = np.zeros(material.shape, np.float32)
    for index, texture in _TEXTURES.items():  # fixed order: same draws whatever the scene holds
        field = texture(rng, material.shape)
        where = material == index
        offset[where] = field[where]
    return offset


def finish(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Textures, lighting (gain, tint, vertical gradient, cast shadows), blur and sensor noise.

    Returns the H x W x 3 uint8 RGB image.
    """
    h, w = canvas.height, canvas.width
    # One H x W brightness multiplier (texture, vertical gradient, cast shadows) and one colour
    # gain (exposure x tint) keep the full-colour passes to a minimum.
    brightness = 1.0 + texture_offset(rng, canvas.material)
    brightness *= np.linspace(rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15), h, dtype=np.float32)[:, None]
    for _ in range(int(rng.integers(0, 4))):
        shadow = np.zeros((h, w), np.float32)
        x0 = rng.uniform(-0.2, 1.0) * w
        poly = np.array([(x0, h * 0.4), (x0 + rng.uniform(20, 120), h * 0.4),
                         (x0 + rng.uniform(-200, 200) + 150, h), (x0 + rng.uniform(-200, 200), h)])
        cv2.fillPoly(shadow, [poly.astype(np.int32)], 1.0)
        shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(1.0, 6.0))
        brightness *= 1.0 - rng.uniform(0.2, 0.5) * shadow
    gain = rng.uniform(0.55, 1.25) * (1.0 + rng.uniform(-0.12, 0.12, 3))  # exposure and colour tint
    image = canvas.image * brightness[..., None]
    image *= (255.0 * gain).astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 0.9))
    sigma = np.float32(255.0 * rng.uniform(0.005, 0.03))
    image += sigma * rng.standard_normal((h, w, 1), dtype=np.float32)  # sensor noise (grey)
    image += 0.5
    return np.clip(image, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- scene parts


def _sky_and_buildings(canvas: Canvas, rng: np.random.Generator, horizon: int) -> None:
    h, w = canvas.height, canvas.width
    top = jitter(rng, rng.choice([(0.35, 0.55, 0.85), (0.6, 0.62, 0.66), (0.85, 0.6, 0.45), (0.5, 0.7, 0.9)]), 0.08)
    canvas.rect(0, 0, w, horizon + 2, top, SKY, CLOUDS)
    sky_rows = np.linspace(0.0, 0.35, horizon + 3, dtype=np.float32)[:, None, None]
    canvas.image[: horizon + 3] = np.clip(canvas.image[: horizon + 3] + sky_rows, 0, 1)
    x = -int(rng.integers(0, 40))
    foot = horizon + int(rng.integers(4, 14))
    while x < w:
        bw = int(rng.integers(30, 140))
        if rng.random() < 0.2:  # a gap with trees behind
            _tree(canvas, rng, x + bw / 2, foot, scale=rng.uniform(0.5, 1.0) * horizon / 100)
        else:
            bh = int(rng.uniform(0.3, 1.1) * horizon)
            color = jitter(rng, rng.choice([(0.75, 0.7, 0.6), (0.5, 0.5, 0.52), (0.6, 0.35, 0.3), (0.8, 0.8, 0.78)]), 0.08)
            canvas.rect(x, max(0, foot - bh), x + bw, foot, color, BUILDING, FACADE)
            window = jitter(rng, rng.choice([(0.2, 0.25, 0.3), (0.55, 0.65, 0.75)]), 0.05)
            step_x, step_y = int(rng.integers(8, 16)), int(rng.integers(10, 18))
            for wy in range(max(0, foot - bh) + 4, foot - 8, step_y):
                for wx in range(x + 4, x + bw - 6, step_x):
                    canvas.rect(wx, wy, wx + step_x // 2, wy + step_y // 2, window, BUILDING, FLAT)
        x += bw


def _tree(canvas: Canvas, rng: np.random.Generator, x: float, base: float, scale: float) -> None:
    trunk_h, trunk_w = 40 * scale, max(2, 5 * scale)
    canvas.rect(x - trunk_w / 2, base - trunk_h, x + trunk_w / 2, base, jitter(rng, (0.35, 0.25, 0.15)), VEGETATION, FACADE)
    green = jitter(rng, (0.2, 0.45, 0.15), 0.08)
    for _ in range(int(rng.integers(3, 7))):
        canvas.ellipse(x + rng.uniform(-25, 25) * scale, base - trunk_h - rng.uniform(-5, 25) * scale,
                       rng.uniform(12, 30) * scale, rng.uniform(10, 24) * scale, green, VEGETATION, FOLIAGE)


def _ground(canvas: Canvas, rng: np.random.Generator, horizon: int, vx: float) -> Tuple[float, float, float]:
    """Road wedge with sidewalks and terrain; returns (vx, road half-width at the bottom, horizon)."""
    h, w = canvas.height, canvas.width
    foot = horizon + 2
    side_class, side_mat, side_col = (TERRAIN, GRASS, (0.45, 0.5, 0.25)) if rng.random() < 0.5 else \
        (SIDEWALK, PAVING, (0.6, 0.58, 0.55))
    canvas.rect(0, foot, w, h, jitter(rng, side_col), side_class, side_mat)
    half = rng.uniform(0.3, 0.65) * w
    top_half = rng.uniform(0.01, 0.04) * w
    for sign in (-1, 1):
        walk = rng.uniform(0.12, 0.3) * w
        edge_top, edge_bottom = vx + sign * top_half, vx + sign * half
        canvas.polygon([(edge_top, foot), (edge_top + sign * walk * 0.1, foot), (edge_bottom + sign * walk, h),
                        (edge_bottom, h)], jitter(rng, (0.62, 0.6, 0.57)), SIDEWALK, PAVING)
        if rng.random() < 0.4:  # a grass strip or hedge beyond the sidewalk
            canvas.polygon([(edge_top + sign * walk * 0.1, foot), (edge_top + sign * walk * 0.16, foot),
                            (edge_bottom + sign * walk * 1.6, h), (edge_bottom + sign * walk, h)],
                           jitter(rng, (0.35, 0.5, 0.2)), rng.choice([TERRAIN, VEGETATION]), GRASS)
    asphalt = jitter(rng, rng.choice([(0.33, 0.33, 0.35), (0.42, 0.41, 0.4), (0.25, 0.25, 0.27)]), 0.04)
    canvas.polygon([(vx - top_half, foot), (vx + top_half, foot), (vx + half, h), (vx - half, h)], asphalt, ROAD, ASPHALT)
    # Lane markings (still road).
    paint = jitter(rng, (0.85, 0.85, 0.8), 0.05)
    for t0 in np.arange(0.05, 1.0, 0.12):
        t1 = t0 + 0.05
        y0, y1 = foot + t0**2 * (h - foot), foot + t1**2 * (h - foot)
        wd0, wd1 = 1 + 5 * t0**2, 1 + 5 * t1**2
        canvas.polygon([(vx - wd0, y0), (vx + wd0, y0), (vx + wd1, y1), (vx - wd1, y1)], paint, ROAD, PAINT)
    return vx, half, foot


def road_point(rng: np.random.Generator, vx: float, half: float, foot: float, h: int, margin: float = 0.8):
    """A random (x, y) on the road, y biased towards the camera."""
    t = rng.uniform(0.08, 1.0) ** 0.7
    y = foot + t * (h - foot)
    x = vx + rng.uniform(-margin, margin) * (half * t)
    return x, y, t


def _car(canvas: Canvas, rng: np.random.Generator, x: float, y: float, t: float) -> None:
    hgt = 12 + 110 * t
    wid = hgt * rng.uniform(1.5, 2.1)
    body = jitter(rng, rng.choice([(0.7, 0.1, 0.1), (0.1, 0.2, 0.6), (0.85, 0.85, 0.85), (0.1, 0.1, 0.1),
                                    (0.5, 0.5, 0.55), (0.2, 0.45, 0.3)]), 0.06)
    canvas.rect(x - wid / 2, y - 0.6 * hgt, x + wid / 2, y - 0.12 * hgt, body, CAR, PAINT)
    canvas.polygon([(x - wid * 0.38, y - 0.6 * hgt), (x - wid * 0.28, y - hgt), (x + wid * 0.28, y - hgt),
                    (x + wid * 0.38, y - 0.6 * hgt)], body, CAR, PAINT)
    canvas.polygon([(x - wid * 0.32, y - 0.62 * hgt), (x - wid * 0.25, y - 0.93 * hgt), (x + wid * 0.25, y - 0.93 * hgt),
                    (x + wid * 0.32, y - 0.62 * hgt)], jitter(rng, (0.15, 0.2, 0.25), 0.04), CAR, FLAT)
    for side in (-1, 1):
        canvas.ellipse(x + side * wid * 0.32, y - 0.12 * hgt, wid * 0.09, 0.12 * hgt, (0.05, 0.05, 0.05), CAR)
        canvas.ellipse(x + side * wid * 0.42, y - 0.45 * hgt, wid * 0.04, 0.04 * hgt, (0.95, 0.9, 0.6), CAR)


def _bus(canvas: Canvas, rng: np.random.Generator, x: float, y: float, t: float) -> None:
    hgt = 20 + 170 * t
    wid = hgt * rng.uniform(1.0, 2.4)
    body = jitter(rng, rng.choice([(0.9, 0.75, 0.1), (0.2, 0.4, 0.7), (0.8, 0.2, 0.15), (0.9, 0.9, 0.9)]), 0.05)
    canvas.rect(x - wid / 2, y - hgt, x + wid / 2, y - 0.08 * hgt, body, BUS, PAINT)
    canvas.rect(x - wid * 0.45, y - 0.9 * hgt, x + wid * 0.45, y - 0.55 * hgt, jitter(rng, (0.15, 0.2, 0.25), 0.04), BUS)
    for side in (-1, 1):
        canvas.ellipse(x + side * wid * 0.35, y - 0.08 * hgt, wid * 0.07, 0.08 * hgt, (0.05, 0.05, 0.05), BUS)


def _person(canvas: Canvas, rng: np.random.Generator, x: float, y: float, t: float) -> None:
    hgt = 15 + 100 * t
    skin = jitter(rng, rng.choice([(0.9, 0.75, 0.6), (0.6, 0.42, 0.3), (0.4, 0.28, 0.2)]), 0.04)
    shirt = jitter(rng, rng.uniform(0.05, 0.9, 3), 0.0)
    trousers = jitter(rng, rng.choice([(0.15, 0.15, 0.3), (0.1, 0.1, 0.1), (0.5, 0.45, 0.35)]), 0.05)
    lw = max(1.0, hgt * 0.07)
    canvas.rect(x - 2.2 * lw, y - 0.5 * hgt, x - 0.3 * lw, y, trousers, PERSON, CLOTH)
    canvas.rect(x + 0.3 * lw, y - 0.5 * hgt, x + 2.2 * lw, y, trousers, PERSON, CLOTH)
    canvas.ellipse(x, y - 0.66 * hgt, 2.6 * lw, 0.2 * hgt, shirt, PERSON, CLOTH)
    canvas.ellipse(x, y - 0.91 * hgt, 1.6 * lw, 0.09 * hgt, skin, PERSON)


def _pole_and_sign(canvas: Canvas, rng: np.random.Generator, x: float, y: float, t: float) -> None:
    hgt = 30 + 200 * t
    pw = max(1.0, 5 * t)
    canvas.rect(x - pw / 2, y - hgt, x + pw / 2, y, jitter(rng, (0.45, 0.45, 0.45), 0.08), POLE, PAINT)
    if rng.random() < 0.7:
        size = 4 + 22 * t
        cy = y - hgt + size
        kind = rng.integers(0, 3)
        if kind == 0:
            canvas.ellipse(x, cy, size, size, (0.85, 0.1, 0.1), SIGN)
            canvas.ellipse(x, cy, size * 0.7, size * 0.7, (0.95, 0.95, 0.95), SIGN)
        elif kind == 1:
            canvas.rect(x - size, cy - size * 0.8, x + size, cy + size * 0.8, (0.1, 0.3, 0.75), SIGN)
        else:
            canvas.polygon([(x, cy - size), (x + size, cy + size * 0.8), (x - size, cy + size * 0.8)], (0.95, 0.8, 0.1), SIGN)


def render_scene(rng: np.random.Generator, height: int = 256, width: int = 512) -> Tuple[Canvas, dict]:
    """Paints a random street scene (before :func:`finish`).

    Returns the canvas and the layout (vanishing x, road half-width at the bottom, road top row),
    which the anomaly split uses to place objects on the road.
    """
    canvas = Canvas(height, width)
    horizon = int(rng.uniform(0.32, 0.5) * height)
    vx = width * (0.5 + rng.uniform(-0.2, 0.2))
    _sky_and_buildings(canvas, rng, horizon)
    vx, half, foot = _ground(canvas, rng, horizon, vx)
    # Depth-ordered objects (far first): cars and buses on the road, people, poles, trees beside it.
    objects = []
    for _ in range(int(rng.integers(0, 6))):
        objects.append(("car",) + road_point(rng, vx, half, foot, height))
    if rng.random() < 0.35:
        objects.append(("bus",) + road_point(rng, vx, half, foot, height, margin=0.5))
    for _ in range(int(rng.integers(0, 5))):
        side = rng.choice([-1, 1])
        t = rng.uniform(0.1, 1.0) ** 0.7
        objects.append(("person", vx + side * half * t * rng.uniform(1.05, 1.4), foot + t * (height - foot), t))
    for _ in range(int(rng.integers(1, 5))):
        side = rng.choice([-1, 1])
        t = rng.uniform(0.1, 1.0) ** 0.7
        objects.append(("pole", vx + side * half * t * rng.uniform(1.05, 1.5), foot + t * (height - foot), t))
    for _ in range(int(rng.integers(0, 3))):
        side = rng.choice([-1, 1])
        t = rng.uniform(0.1, 0.8)
        objects.append(("tree", vx + side * half * t * rng.uniform(1.3, 2.0), foot + t * (height - foot), t))
    draw = {"car": _car, "bus": _bus, "person": _person, "pole": _pole_and_sign,
            "tree": lambda c, r, x, y, t: _tree(c, r, x, y, 0.3 + 1.5 * t)}
    for kind, x, y, t in sorted(objects, key=lambda o: o[2]):
        draw[kind](canvas, rng, x, y, t)
    if rng.random() < 0.3:  # ego-vehicle hood: void
        hood = height - int(rng.uniform(0.05, 0.12) * height)
        canvas.polygon([(0, height), (width * 0.1, hood), (width * 0.9, hood), (width, height)],
                       (0.08, 0.08, 0.1), VOID, PAINT)
    return canvas, {"vx": vx, "half": half, "foot": foot}
