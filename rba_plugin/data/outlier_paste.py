"""Outlier pasting (RbA's "COCO mix"): paste one pool object into a training crop, label it 254.

Unlike RbA, the proxy subset is chosen with a seed from the config (not the rank-seeded global
RNG), so every rank and every run uses the same objects, and pasting runs on the final augmented
crop, so the object always lies inside the image the model sees.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from detectron2.config import configurable
from detectron2.data import DatasetCatalog

from .image_io import read_image, read_label
from .outlier_pool import coco_outlier_pool_paths, list_outlier_pool

__all__ = ["OutlierPaster", "read_pool_entry", "select_proxy_subset"]


def select_proxy_subset(pool: Sequence[dict], proxy_size: int, seed: int) -> List[dict]:
    """The seeded subset of ``proxy_size`` pool entries (all of them when the pool is smaller).

    The pool is ordered by file name first, so the subset depends only on its content and the seed.
    """
    ordered = sorted(pool, key=lambda r: r["outlier_mask_file"])
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in order[: min(proxy_size, len(ordered))]]


def read_pool_entry(record: dict, image_format: str) -> Tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 image, H x W mask with 254 on the object) of one pool entry, read with the
    plugin's image and label readers (rba_plugin.data.image_io); an unreadable mask or a mask of
    another size than its image is an error naming the files."""
    image = read_image(record["file_name"], format=image_format)
    mask = read_label(record["outlier_mask_file"])
    if mask.shape != image.shape[:2]:
        raise ValueError(f"outlier mask {record['outlier_mask_file']} is {mask.shape}, image "
                         f"{record['file_name']} is {image.shape[:2]}")
    return image, mask


class OutlierPaster:
    """Callable ``paster(image, sem_seg, rng) -> (image, sem_seg)``.

    Args (constructor):
        pool: outlier-pool dicts with ``file_name`` and ``outlier_mask_file`` (254 = object).
        probability: p_out, the chance that a call pastes an object.
        proxy_size / seed: the fixed proxy subset (see :func:`select_proxy_subset`).
        scale_range: (low, high) fraction of the crop's shorter side given to the object's
            longer side, drawn uniformly per paste (the object is shrunk further if it must fit).
        ood_label: label of pasted pixels (254).
        image_format: format of the images the mapper passes (Detectron2's INPUT.FORMAT).
    Call:
        image: H x W x 3 uint8, sem_seg: H x W integer labels, rng: the mapper's Generator.
        Returns new arrays when an object was pasted, the inputs unchanged otherwise.
    """

    @configurable
    def __init__(
        self,
        pool: Sequence[dict],
        *,
        probability: float = 0.1,
        proxy_size: int = 300,
        seed: int = 0,
        scale_range: Tuple[float, float] = (0.1, 0.5),
        ood_label: int = 254,
        image_format: str = "RGB",
    ):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"outlier paste probability must be in [0, 1], got {probability}")
        low, high = scale_range
        if not 0 < low <= high <= 1:
            raise ValueError(f"outlier scale range must satisfy 0 < low <= high <= 1, got {scale_range}")
        if not pool:
            raise ValueError("outlier pool is empty")
        self.probability = float(probability)
        self.proxy = select_proxy_subset(pool, proxy_size, seed)
        self.scale_range = (float(low), float(high))
        self.ood_label = int(ood_label)
        self.image_format = image_format
        self._objects: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}  # lazily loaded crops

    @classmethod
    def from_config(cls, cfg) -> dict:
        pool_name = cfg.INPUT.OUTLIER_POOL
        if pool_name == "coco_outliers":  # honour RbA's INPUT.COCO_ROOT
            image_root, mask_root = coco_outlier_pool_paths(cfg.INPUT.COCO_ROOT)
            pool = list_outlier_pool(pool_name, image_root, mask_root, ".jpg", ".png")
        else:
            pool = DatasetCatalog.get(pool_name)
        return {
            "pool": pool,
            "probability": cfg.INPUT.OOD_PROB,
            "proxy_size": cfg.INPUT.COCO_PROXY_SIZE,
            "seed": cfg.INPUT.OOD_PROXY_SEED,
            "scale_range": tuple(cfg.INPUT.OOD_SCALE_RANGE),
            "ood_label": cfg.INPUT.OOD_LABEL,
            "image_format": cfg.INPUT.FORMAT,
        }

    def object(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(h x w x 3 uint8 crop, h x w bool mask) of proxy entry ``index``, cropped to its object."""
        if index not in self._objects:
            record = self.proxy[index]
            image, mask = read_pool_entry(record, self.image_format)
            mask = mask == 254
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                raise ValueError(f"outlier mask {record['outlier_mask_file']} has no 254 pixel")
            box = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
            self._objects[index] = (np.ascontiguousarray(image[box]), mask[box])
        return self._objects[index]

    def paste(self, image: np.ndarray, sem_seg: np.ndarray, index: int,
              rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Pastes proxy object ``index`` at a random scale and position (always)."""
        h, w = sem_seg.shape
        if image.shape[:2] != (h, w):
            raise ValueError(f"image {image.shape} and sem_seg {sem_seg.shape} differ in size")
        rgb, mask = self.object(index)
        target = rng.uniform(*self.scale_range) * min(h, w)
        factor = min(target / max(mask.shape), h / mask.shape[0], w / mask.shape[1])
        new_h, new_w = max(1, int(round(mask.shape[0] * factor))), max(1, int(round(mask.shape[1] * factor)))
        # Resize colour premultiplied by the mask so the object's edge does not take on the colour
        # of the pool image's background.
        weight = mask.astype(np.float32)
        weighted = cv2.resize(rgb.astype(np.float32) * weight[..., None], (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        weight = cv2.resize(weight, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        mask = weight >= 0.5
        if not mask.any():  # an object shrunk below one pixel keeps its strongest pixel
            mask = weight >= weight.max()
        rgb = np.clip(np.rint(weighted / np.maximum(weight, 1e-6)[..., None]), 0, 255).astype(image.dtype)
        top = int(rng.integers(0, h - new_h + 1))
        left = int(rng.integers(0, w - new_w + 1))
        image = image.copy()
        sem_seg = sem_seg.copy()
        image[top: top + new_h, left: left + new_w][mask] = rgb[mask]
        sem_seg[top: top + new_h, left: left + new_w][mask] = self.ood_label
        return image, sem_seg

    def __call__(self, image: np.ndarray, sem_seg: np.ndarray,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        if rng.random() >= self.probability:
            return image, sem_seg
        return self.paste(image, sem_seg, int(rng.integers(len(self.proxy))), rng)
