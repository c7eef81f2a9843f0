"""Tiny generated street-like scenes for the Mask2Former tests (no dataset needed)."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

NUM_CLASSES = 19
# Distinct colours for the few classes the scenes use (RGB).
CLASS_COLOURS = {0: (128, 64, 128), 2: (70, 70, 70), 8: (107, 142, 35), 10: (70, 130, 180), 13: (0, 0, 142)}


def make_scene(rng: np.random.Generator, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image and its label map: sky over buildings/vegetation over road, one car,
    a void strip; colours per class plus noise."""
    label = np.full((height, width), 0, np.uint8)  # road
    horizon = int(height * rng.uniform(0.45, 0.6))
    label[: horizon // 2] = 10  # sky
    split = int(width * rng.uniform(0.3, 0.7))
    label[horizon // 2 : horizon, :split] = 2  # building
    label[horizon // 2 : horizon, split:] = 8  # vegetation
    car_w, car_h = int(width * 0.2), int(height * 0.15)
    x0 = int(rng.integers(0, width - car_w))
    label[horizon : horizon + car_h, x0 : x0 + car_w] = 13  # car
    label[-2:, :] = 255  # void
    image = np.zeros((height, width, 3), np.float32)
    for cls, colour in CLASS_COLOURS.items():
        image[label == cls] = colour
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_scenes(root: Path, count: int, height: int, width: int, seed: int) -> List[dict]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    dicts = []
    for i in range(count):
        image, label = make_scene(rng, height, width)
        image_file, label_file = root / f"scene_{i}.png", root / f"scene_{i}_label.png"
        cv2.imwrite(str(image_file), image[:, :, ::-1])  # cv2 writes BGR
        cv2.imwrite(str(label_file), label)
        dicts.append(
            {"file_name": str(image_file), "sem_seg_file_name": str(label_file), "height": height, "width": width}
        )
    return dicts


def register_scenes(root: Path, count: int = 4, height: int = 64, width: int = 128, seed: int = 0) -> str:
    """Write ``count`` scenes under ``root`` and register them under a fresh test-only name."""
    dicts = write_scenes(root, count, height, width, seed)
    name = f"m2f_test_scenes_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(
        stuff_classes=[f"class_{i}" for i in range(NUM_CLASSES)], ignore_label=255, evaluator_type="sem_seg"
    )
    return name
