"""Outlier pools for pasting: folders of images with masks marking the object pixels with 254.

The COCO pool is what ``tools/prepare_coco_outliers.py`` writes (``train2017/<id>.jpg`` and
``annotations/ood_seg_train2017/<id>.png``); the synthetic pool uses the same scheme. Pools are
registered lazily in DatasetCatalog; a dict holds ``file_name`` and ``outlier_mask_file``.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from .anomaly_datasets import DatasetPath, datasets_root

__all__ = ["register_outlier_pool", "list_outlier_pool", "coco_outlier_pool_paths"]

PathLike = Union[str, os.PathLike]


def list_outlier_pool(name: str, image_root: PathLike, mask_root: PathLike, image_suffix: str,
                      mask_suffix: str = ".png") -> List[dict]:
    """Dicts {file_name, outlier_mask_file} of every mask with an image, sorted by mask name."""
    image_root, mask_root = os.fspath(image_root), os.fspath(mask_root)
    for root in (mask_root, image_root):
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"outlier pool '{name}': folder {root} does not exist. Expected layout:\n"
                f"  {image_root}/<id>{image_suffix}\n  {mask_root}/<id>{mask_suffix}  (254 = object)\n"
                f"Pools live under $DETECTRON2_DATASETS (now '{datasets_root()}'); "
                "see datasets/README.md and tools/prepare_coco_outliers.py."
            )
    records = []
    for file in sorted(os.listdir(mask_root)):
        if not file.endswith(mask_suffix):
            continue
        stem = file[: -len(mask_suffix)]
        image = os.path.join(image_root, stem + image_suffix)
        if not os.path.isfile(image):
            raise FileNotFoundError(f"outlier pool '{name}': mask {os.path.join(mask_root, file)} has no image {image}")
        records.append({"file_name": image, "outlier_mask_file": os.path.join(mask_root, file), "image_id": stem})
    if not records:
        raise FileNotFoundError(f"outlier pool '{name}': no '*{mask_suffix}' mask under {mask_root}")
    return records


def register_outlier_pool(name: str, image_root: PathLike, mask_root: PathLike, *, image_suffix: str,
                          mask_suffix: str = ".png", prepare: Optional[Callable[[], None]] = None) -> None:
    """Registers an outlier pool lazily (``prepare`` runs first on load, e.g. to generate it)."""

    def load() -> List[dict]:
        if prepare is not None:
            prepare()
        return list_outlier_pool(name, image_root, mask_root, image_suffix, mask_suffix)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(evaluator_type="outlier_pool", ood_label=254, image_root=image_root,
                                  mask_root=mask_root)


def coco_outlier_pool_paths(coco_root: str = "coco"):
    """(image folder, mask folder) of the prepared COCO pool under $DETECTRON2_DATASETS/<coco_root>."""
    return DatasetPath(f"{coco_root}/train2017"), DatasetPath(f"{coco_root}/annotations/ood_seg_train2017")
