"""Outlier pasting: paste one pool object into a training image and label it 254.

The official methods paste differently (RbA's "COCO mix", PEBAL's AnomalyMix, RPL's mix); one
:class:`OutlierPaster` covers them through a few choices, each a config key (see
``rba_plugin.config.add_anomaly_data_config``):

* when: the mapper runs the paster at a stage of its augmentations (``INPUT.OOD_PASTE_STAGE``:
  before them on the full image, after the crop, or into the final crop);
* how large: the pool object's own size ("native"), a factor drawn from a set ("factors"), or a
  fraction of the target image's shorter side ("range") (``INPUT.OOD_SCALE_MODE``);
* which objects: a fixed seeded proxy subset of the pool, or one redrawn every epoch
  (``INPUT.OOD_PROXY_POLICY``); both are seeded from the config, so every rank draws from the
  same subset (RbA seeds its subset with the rank-dependent global RNG);
* where: a uniform top-left corner with the object's box inside the image; an object larger than
  the image is skipped (RbA) or shrunk to fit (``INPUT.OOD_OVERSIZE``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from .image_io import read_image, read_label
from .outlier_pool import coco_outlier_pool_paths, list_outlier_pool

__all__ = [
    "OutlierPaster",
    "read_pool_entry",
    "select_proxy_subset",
    "PASTE_STAGES",
    "SCALE_MODES",
    "PROXY_POLICIES",
    "OVERSIZE_POLICIES",
]

# Where the mapper pastes (read by the dataset mappers): before every augmentation, on the full
# image (RbA, PEBAL); right after the random crop (RPL); into the final augmented crop.
PASTE_STAGES = ("before_augmentation", "after_crop", "final_crop")
SCALE_MODES = ("native", "factors", "range")
PROXY_POLICIES = ("fixed", "per_epoch")
OVERSIZE_POLICIES = ("skip", "shrink")

# Object crops kept in memory per mapper copy (one per data-loader worker). A per-epoch subset
# of thousands of COCO objects would otherwise pile up gigabytes per worker.
_OBJECT_CACHE_SIZE = 512


def select_proxy_subset(pool: Sequence[dict], proxy_size: int, seed: Union[int, Sequence[int]]) -> List[dict]:
    """The seeded subset of ``proxy_size`` pool entries (all of them when the pool is smaller).

    The pool is ordered by file name first, so the subset depends only on its content and the seed
    (an int, or a sequence of ints such as (seed, epoch), as ``numpy.random.default_rng`` takes).
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


def _data_shards() -> int:
    """How many mapper copies share the training stream: processes x data-loader workers.

    Detectron2's TrainingSampler gives each rank every world_size-th index and the loader gives
    each worker every num_workers-th of those, so one copy sees 1 / shards of the samples.
    """
    worker = torch.utils.data.get_worker_info()
    return comm.get_world_size() * (worker.num_workers if worker is not None else 1)


class OutlierPaster:
    """Draws and pastes pool objects: ``paster(image, sem_seg, rng) -> (image, sem_seg)``.

    Args (constructor):
        pool: outlier-pool dicts with ``file_name`` and ``outlier_mask_file`` (254 = object).
        probability: p_out in [0, 1], the chance that a sample gets an object (INPUT.OOD_PROB).
        proxy_size: size of the proxy subset of the pool (INPUT.COCO_PROXY_SIZE, >= 1).
        seed: seed of the proxy subset (INPUT.OOD_PROXY_SEED).
        proxy_policy: "fixed": one subset for the whole run (RbA); "per_epoch": the subset of
            epoch e is :func:`select_proxy_subset` with seed (seed, e) (PEBAL, RPL redraw theirs
            when they rebuild the loader each epoch). Epoch e holds this copy's samples
            ``[e, e + 1) * epoch_length / shards`` with shards = processes x loader workers,
            so all copies move to the next subset together. Like Detectron2's sampler, the count
            starts again at 0 on ``--resume``.
        epoch_length: samples per epoch over all processes (> 0 for "per_epoch").
        scale_mode: "native": the object at the pool image's size (RbA, PEBAL); "factors": resized
            by a factor drawn uniformly from ``scale_factors`` (RPL; repeats weigh a factor more);
            "range": its longer side resized to U(scale_range) x the target image's shorter side.
        scale_factors: positive factors of "factors".
        scale_range: (low, high) with 0 < low <= high <= 1, for "range".
        oversize: an object larger than the target image: "skip" it (no paste, as RbA) or
            "shrink" it to fit.
        ood_label: label of pasted pixels (254).
        image_format: format of the images the mapper passes (Detectron2's INPUT.FORMAT).

    Call:
        image: H x W x 3 uint8, sem_seg: H x W label map (any numeric dtype, kept), rng: the
        mapper's Generator. Returns new arrays when an object was pasted, the inputs otherwise.

    Raises:
        ValueError: a bad argument, naming its config key and value; an empty pool.
    """

    @configurable
    def __init__(
        self,
        pool: Sequence[dict],
        *,
        probability: float = 0.1,
        proxy_size: int = 300,
        seed: int = 0,
        proxy_policy: str = "fixed",
        epoch_length: int = 0,
        scale_mode: str = "native",
        scale_factors: Sequence[float] = (0.25, 0.5, 0.5, 0.75, 0.1, 0.125),
        scale_range: Tuple[float, float] = (0.1, 0.5),
        oversize: str = "skip",
        ood_label: int = 254,
        image_format: str = "RGB",
    ):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"INPUT.OOD_PROB (outlier paste probability) must be in [0, 1], got {probability}")
        if int(proxy_size) < 1:
            raise ValueError(f"INPUT.COCO_PROXY_SIZE (proxy subset size) must be >= 1, got {proxy_size}")
        if proxy_policy not in PROXY_POLICIES:
            raise ValueError(f"INPUT.OOD_PROXY_POLICY must be one of {PROXY_POLICIES}, got '{proxy_policy}'")
        if proxy_policy == "per_epoch" and int(epoch_length) < 1:
            raise ValueError(
                f"INPUT.OOD_PROXY_EPOCH_LENGTH must be >= 1 for the per_epoch proxy policy, got {epoch_length}"
            )
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"INPUT.OOD_SCALE_MODE must be one of {SCALE_MODES}, got '{scale_mode}'")
        factors = tuple(float(f) for f in scale_factors)
        if not factors or not all(np.isfinite(f) and f > 0 for f in factors):
            raise ValueError(
                f"INPUT.OOD_SCALE_FACTORS must be a non-empty list of positive factors, got {list(scale_factors)}"
            )
        low, high = scale_range
        if not 0 < low <= high <= 1:
            raise ValueError(f"INPUT.OOD_SCALE_RANGE must satisfy 0 < low <= high <= 1, got {tuple(scale_range)}")
        if oversize not in OVERSIZE_POLICIES:
            raise ValueError(f"INPUT.OOD_OVERSIZE must be one of {OVERSIZE_POLICIES}, got '{oversize}'")
        if not pool:
            raise ValueError("outlier pool is empty")
        self.probability = float(probability)
        self.proxy_size = int(proxy_size)
        self.seed = int(seed)
        self.proxy_policy = proxy_policy
        self.epoch_length = int(epoch_length)
        self.scale_mode = scale_mode
        self.scale_factors = factors
        self.scale_range = (float(low), float(high))
        self.oversize = oversize
        self.ood_label = int(ood_label)
        self.image_format = image_format
        self._pool = list(pool)
        self._fixed = select_proxy_subset(self._pool, self.proxy_size, self.seed) if proxy_policy == "fixed" else None
        self._epoch_subset: Tuple[int, List[dict]] = (-1, [])
        self._samples = 0  # samples this copy has drawn for (the per-epoch clock)
        self._objects: "OrderedDict[str, Tuple[np.ndarray, np.ndarray]]" = OrderedDict()

    @classmethod
    def from_config(cls, cfg) -> dict:
        pool_name = cfg.INPUT.OUTLIER_POOL
        if pool_name == "coco_outliers":  # honour RbA's INPUT.COCO_ROOT
            image_root, mask_root = coco_outlier_pool_paths(cfg.INPUT.COCO_ROOT)
            pool = list_outlier_pool(pool_name, image_root, mask_root, ".jpg", ".png")
        else:
            pool = DatasetCatalog.get(pool_name)
        epoch_length = cfg.INPUT.OOD_PROXY_EPOCH_LENGTH
        if cfg.INPUT.OOD_PROXY_POLICY == "per_epoch" and epoch_length == 0:
            # 0: an epoch is one pass over the training set (as PEBAL's and RPL's loaders).
            epoch_length = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
            if epoch_length == 0:
                raise ValueError("INPUT.OOD_PROXY_EPOCH_LENGTH is 0 (one pass over DATASETS.TRAIN) but "
                                 f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} holds no image")
        return {
            "pool": pool,
            "probability": cfg.INPUT.OOD_PROB,
            "proxy_size": cfg.INPUT.COCO_PROXY_SIZE,
            "seed": cfg.INPUT.OOD_PROXY_SEED,
            "proxy_policy": cfg.INPUT.OOD_PROXY_POLICY,
            "epoch_length": epoch_length,
            "scale_mode": cfg.INPUT.OOD_SCALE_MODE,
            "scale_factors": tuple(cfg.INPUT.OOD_SCALE_FACTORS),
            "scale_range": tuple(cfg.INPUT.OOD_SCALE_RANGE),
            "oversize": cfg.INPUT.OOD_OVERSIZE,
            "ood_label": cfg.INPUT.OOD_LABEL,
            "image_format": cfg.INPUT.FORMAT,
        }

    # ------------------------------------------------------------------ which object

    @property
    def epoch(self) -> int:
        """The epoch of this copy's next sample (always 0 for the fixed policy)."""
        if self.proxy_policy == "fixed":
            return 0
        return self._samples * _data_shards() // self.epoch_length

    def proxy_for_epoch(self, epoch: int) -> List[dict]:
        """The proxy subset of ``epoch``: the same on every rank and worker, for a given seed."""
        if self.proxy_policy == "fixed":
            return self._fixed
        if self._epoch_subset[0] != epoch:
            self._epoch_subset = (epoch, select_proxy_subset(self._pool, self.proxy_size, (self.seed, epoch)))
        return self._epoch_subset[1]

    @property
    def proxy(self) -> List[dict]:
        """The proxy subset the next sample draws from."""
        return self.proxy_for_epoch(self.epoch)

    def draw(self, rng: np.random.Generator) -> Optional[dict]:
        """One sample's draw: with probability p a proxy entry (uniform), else None. Advances the
        per-epoch clock by one sample either way."""
        proxy = self.proxy
        self._samples += 1
        if rng.random() >= self.probability:
            return None
        return proxy[int(rng.integers(len(proxy)))]

    def object(self, record: dict) -> Tuple[np.ndarray, np.ndarray]:
        """(h x w x 3 uint8 crop, h x w bool mask) of a pool entry, cropped to its object's box."""
        key = record["outlier_mask_file"]
        if key in self._objects:
            self._objects.move_to_end(key)
            return self._objects[key]
        image, mask = read_pool_entry(record, self.image_format)
        mask = mask == 254
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            raise ValueError(f"outlier mask {key} has no 254 pixel")
        box = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        self._objects[key] = (np.ascontiguousarray(image[box]), mask[box])
        if len(self._objects) > _OBJECT_CACHE_SIZE:
            self._objects.popitem(last=False)
        return self._objects[key]

    # ------------------------------------------------------------------ pasting

    def paste(self, image: np.ndarray, sem_seg: np.ndarray, record: dict,
              rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Pastes the object of ``record`` at its scale and a uniform position (the box inside the
        image); an oversize object is skipped or shrunk (``oversize``)."""
        h, w = sem_seg.shape
        if image.shape[:2] != (h, w):
            raise ValueError(f"image {image.shape} and sem_seg {sem_seg.shape} differ in size")
        rgb, mask = self.object(record)
        obj_h, obj_w = mask.shape
        if self.scale_mode == "native":
            factor = 1.0
        elif self.scale_mode == "factors":
            factor = self.scale_factors[int(rng.integers(len(self.scale_factors)))]
        else:  # "range": never larger than the image, since high <= 1
            target = rng.uniform(*self.scale_range) * min(h, w)
            factor = min(target / max(obj_h, obj_w), h / obj_h, w / obj_w)
        new_h, new_w = max(1, int(round(obj_h * factor))), max(1, int(round(obj_w * factor)))
        if new_h > h or new_w > w:
            if self.oversize == "skip":
                return image, sem_seg
            factor = min(factor, h / obj_h, w / obj_w)
            new_h, new_w = max(1, min(h, int(round(obj_h * factor)))), max(1, min(w, int(round(obj_w * factor))))
        if (new_h, new_w) != (obj_h, obj_w):
            rgb, mask = self._resize(rgb, mask, new_h, new_w, image.dtype)
        top = int(rng.integers(0, h - new_h + 1))
        left = int(rng.integers(0, w - new_w + 1))
        image = image.copy()
        sem_seg = sem_seg.copy()
        image[top: top + new_h, left: left + new_w][mask] = rgb[mask]
        sem_seg[top: top + new_h, left: left + new_w][mask] = self.ood_label
        return image, sem_seg

    @staticmethod
    def _resize(rgb: np.ndarray, mask: np.ndarray, new_h: int, new_w: int, dtype) -> Tuple[np.ndarray, np.ndarray]:
        # Resize colour premultiplied by the mask so the object's edge does not take on the colour
        # of the pool image's background (the official codes resize the whole pool image).
        weight = mask.astype(np.float32)
        weighted = cv2.resize(rgb.astype(np.float32) * weight[..., None], (new_w, new_h),
                              interpolation=cv2.INTER_LINEAR)
        weight = cv2.resize(weight, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        mask = weight >= 0.5
        if not mask.any():  # an object shrunk below one pixel keeps its strongest pixel
            mask = weight >= weight.max()
        rgb = np.clip(np.rint(weighted / np.maximum(weight, 1e-6)[..., None]), 0, 255).astype(dtype)
        return rgb, mask

    def __call__(self, image: np.ndarray, sem_seg: np.ndarray,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        record = self.draw(rng)
        if record is None:
            return image, sem_seg
        return self.paste(image, sem_seg, record, rng)
