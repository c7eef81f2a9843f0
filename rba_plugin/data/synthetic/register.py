"""Lazy registration of the synthetic benchmark: <prefix>_train, _val, _anomaly, _outliers."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..anomaly_datasets import CITYSCAPES_STUFF_CLASSES, CITYSCAPES_STUFF_COLORS, DatasetPath, register_anomaly_dataset
from ..image_io import image_size
from ..outlier_pool import register_outlier_pool
from .writer import SynthCityParams, ensure_synthcity

__all__ = ["register_synthcity", "SYNTHCITY_COMPONENT_SIZES", "SYNTHCITY_SPLITS"]

SYNTHCITY_SPLITS = ("train", "val", "anomaly", "outliers")

# SMIYC's anomaly-track size filters (500 / 100 px at 2048 x 1024) scaled to 512 x 256 (1/16).
SYNTHCITY_COMPONENT_SIZES = (32, 6)


def _list_sem_seg(root: str, split: str) -> List[dict]:
    image_dir = os.path.join(root, "leftImg8bit", split)
    label_dir = os.path.join(root, "gtFine", split)
    records = []
    for file in sorted(os.listdir(image_dir)):
        if not file.endswith("_leftImg8bit.png"):
            continue
        stem = file[: -len("_leftImg8bit.png")]
        image = os.path.join(image_dir, file)
        height, width = image_size(image)  # the size the image reader returns
        records.append({
            "file_name": image,
            "sem_seg_file_name": os.path.join(label_dir, f"{stem}_gtFine_labelTrainIds.png"),
            "height": height,
            "width": width,
            "image_id": stem,
        })
    if not records:
        raise FileNotFoundError(f"no '*_leftImg8bit.png' image under {image_dir}")
    return records


def register_synthcity(root: Optional[Union[str, os.PathLike]] = None, params: Optional[SynthCityParams] = None,
                       prefix: str = "synthcity", splits: Sequence[str] = SYNTHCITY_SPLITS) -> None:
    """Registers ``<prefix>_train``, ``_val`` (sem_seg), ``_anomaly`` (ood) and ``_outliers`` (pool).

    ``root`` defaults to ``$DETECTRON2_DATASETS/synthcity`` (resolved at first use). Nothing is read
    or generated until one of them is loaded; the first load generates the data if it is missing
    or was made by another generator version or with other parameters. ``splits`` limits which of
    the four are registered (e.g. only ``("anomaly",)`` for a second anomaly split drawn with
    another ``params.seed``; give the other splits a count of 0 so nothing else is generated).

    Raises:
        ValueError: a name in ``splits`` is not one of ``SYNTHCITY_SPLITS``.
    """
    unknown = sorted(set(splits) - set(SYNTHCITY_SPLITS))
    if unknown:
        raise ValueError(f"register_synthcity: unknown splits {unknown}; choose from {list(SYNTHCITY_SPLITS)}")
    root = root if root is not None else DatasetPath("synthcity")
    params = params or SynthCityParams()

    def prepare() -> str:
        return ensure_synthcity(os.fspath(root), params)

    for split in ("train", "val"):
        if split not in splits:
            continue
        name = f"{prefix}_{split}"
        DatasetCatalog.register(name, lambda split=split: _list_sem_seg(prepare(), split))
        MetadataCatalog.get(name).set(
            evaluator_type="sem_seg",
            ignore_label=255,
            stuff_classes=list(CITYSCAPES_STUFF_CLASSES),
            stuff_colors=list(CITYSCAPES_STUFF_COLORS),
            image_root=root,
        )
    if "anomaly" in splits:
        _register_anomaly_split(root, prefix, prepare)
    if "outliers" in splits:
        register_outlier_pool(
            f"{prefix}_outliers",
            _Sub(root, "outliers/images"),
            _Sub(root, "outliers/masks"),
            image_suffix=".png",
            prepare=prepare,
        )


def _register_anomaly_split(root: Union[str, os.PathLike], prefix: str, prepare) -> None:
    anomaly_dir = _Sub(root, "anomaly")
    register_anomaly_dataset(
        f"{prefix}_anomaly",
        _Sub(anomaly_dir, "images"),
        _Sub(anomaly_dir, "labels_masks"),
        image_suffix=".png",
        label_suffix="_labels_semantic.png",
        label_map={0: 0, 1: 1, 255: 255},
        sem_seg_root=_Sub(anomaly_dir, "labels_trainids"),
        sem_seg_suffix="_labelTrainIds.png",
        component_sizes=SYNTHCITY_COMPONENT_SIZES,
        prepare=prepare,
        layout="  synthcity/anomaly/images/<id>.png\n  synthcity/anomaly/labels_masks/<id>_labels_semantic.png",
    )


class _Sub(os.PathLike):
    """``os.path.join(parent, child)`` evaluated at use, so a lazy parent stays lazy."""

    def __init__(self, parent: Union[str, os.PathLike], child: str):
        self.parent, self.child = parent, child

    def __fspath__(self) -> str:
        return os.path.join(os.fspath(self.parent), self.child)

    def __repr__(self) -> str:
        return f"{self.parent!r}/{self.child}"
