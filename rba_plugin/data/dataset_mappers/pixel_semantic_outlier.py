"""Training mapper of the per-pixel branch (``INPUT.DATASET_MAPPER_NAME: pixel_semantic_outlier``):
Mask2Former's semantic augmentations, outlier pasting at ``INPUT.OOD_PASTE_STAGE``, and, when the
model asks for it (extra input "outlier_image", e.g. RPL's CoroCL), one raw outlier-pool image per
sample. No per-class masks (a per-pixel model reads the label map)."""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..outlier_paste import OutlierPaster, read_pool_entry
from .mask_former_semantic import MaskFormerSemanticDatasetMapper, build_semantic_train_augmentations
from .registry import register_train_mapper

__all__ = ["PixelSemanticOutlierMapper", "fit_to_size"]


def fit_to_size(image: np.ndarray, label: np.ndarray, size: Tuple[int, int], ignore_label: int,
                pad_value: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Centre-crop or pad (image H x W x 3, label H x W) to ``size`` = (h, w), as RPL's official
    code fits raw outlier images to the city crop; padded label pixels are ``ignore_label``."""
    out_h, out_w = size
    h, w = label.shape
    top, left = max(0, (h - out_h) // 2), max(0, (w - out_w) // 2)
    image, label = image[top: top + out_h, left: left + out_w], label[top: top + out_h, left: left + out_w]
    h, w = label.shape
    pad_top, pad_left = (out_h - h) // 2, (out_w - w) // 2
    fitted_image = np.full((out_h, out_w, image.shape[2]), pad_value, dtype=image.dtype)
    fitted_label = np.full((out_h, out_w), ignore_label, dtype=label.dtype)
    fitted_image[pad_top: pad_top + h, pad_left: pad_left + w] = image
    fitted_label[pad_top: pad_top + h, pad_left: pad_left + w] = label
    return fitted_image, fitted_label


@register_train_mapper("pixel_semantic_outlier")
class PixelSemanticOutlierMapper(MaskFormerSemanticDatasetMapper):
    """Maps a semantic-segmentation dataset dict to a per-pixel model's training input:

    * "image": 3 x H x W uint8 tensor (``image_format``);
    * "sem_seg": H x W int64 (train ids, ``ignore_label`` void, ``ood_label`` on a pasted object);
    * with ``raw_outliers`` (extra input "outlier_image"): "outlier_image" (3 x h x w uint8, one
      pool image, centre-cropped or padded to ``raw_outlier_size``) and "outlier_sem_seg" (h x w
      int64: ``ood_label`` on the object, 0 on its own background, ``ignore_label`` on padding).
      As in RPL, it is the pool image whose object this sample drew for pasting (whether or not
      the paste was skipped or cropped out), unscaled and unflipped; a sample that drew none gets
      a uniform draw from the current proxy subset.

    ``outlier_paster`` runs at ``paste_stage`` (see :class:`MaskFormerSemanticDatasetMapper`).
    """

    EXTRA_INPUTS = ("outlier_image",)

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int,
        num_classes: int,
        ood_label: int = 254,
        outlier_paster: Optional[OutlierPaster] = None,
        paste_stage: str = "final_crop",
        raw_outliers: bool = False,
        raw_outlier_size: Optional[Tuple[int, int]] = None,
    ):
        super().__init__(
            is_train,
            augmentations=augmentations,
            image_format=image_format,
            ignore_label=ignore_label,
            size_divisibility=-1,  # the segmentor pads its batch itself
            num_classes=num_classes,
            ood_label=ood_label,
            outlier_paster=outlier_paster,
            paste_stage=paste_stage,
        )
        if raw_outliers and outlier_paster is None:
            raise ValueError("raw outlier images need an outlier pool (INPUT.OUTLIER_POOL with INPUT.OOD_PROB > 0)")
        if outlier_paster is None:
            self.paste_at = len(self.tfm_gens)  # where the generator's seed has always been drawn
        self.raw_outliers = raw_outliers
        self.raw_outlier_size = tuple(raw_outlier_size) if raw_outlier_size else None

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, extra_inputs=()):
        # Built here rather than by the parent's from_config, so changes to Mask2Former's mapper
        # options do not leak into the per-pixel one.
        ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if cfg.DATASETS.TRAIN:
            ignore_label = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", ignore_label)
        args = {
            "is_train": is_train,
            "augmentations": build_semantic_train_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ood_label": cfg.INPUT.OOD_LABEL,
        }
        raw = "outlier_image" in extra_inputs
        args["outlier_paster"] = OutlierPaster(cfg) if (cfg.INPUT.OOD_PROB > 0 or raw) else None
        args["paste_stage"] = cfg.INPUT.OOD_PASTE_STAGE
        args["raw_outliers"] = raw
        # Raw images get the crop's size, as RPL's official code fits them to the city crop.
        args["raw_outlier_size"] = tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None
        return args

    def raw_outlier(self, rng: np.random.Generator, record: Optional[dict] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(h x w x 3 uint8 image, h x w int64 label) of the pool entry ``record`` (None: a uniform
        draw from the current proxy subset)."""
        if record is None:
            proxy = self.outlier_paster.proxy
            record = proxy[int(rng.integers(len(proxy)))]
        image, mask = read_pool_entry(record, self.img_format)
        label = np.where(mask == 254, self.ood_label, 0).astype(np.int64)
        if self.raw_outlier_size is not None:
            image, label = fit_to_size(image, label, self.raw_outlier_size, self.ignore_label)
        return image, label

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image, sem_seg = self._read(dataset_dict)
        drawn = {}

        def paste(image: np.ndarray, sem_seg: np.ndarray, rng: np.random.Generator):
            # Runs without a paster too (after every augmentation): the mapper has always drawn
            # this generator's seed, so the random stream of closed-set training stays as it was.
            drawn["rng"] = rng
            if self.outlier_paster is None:
                return image, sem_seg
            drawn["record"] = record = self.outlier_paster.draw(rng)
            if record is None:
                return image, sem_seg
            return self.outlier_paster.paste(image, sem_seg, record, rng)

        image, sem_seg = self.augment(image, sem_seg, paste)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["sem_seg"] = torch.as_tensor(np.ascontiguousarray(sem_seg), dtype=torch.int64)
        if self.raw_outliers:
            raw_image, raw_label = self.raw_outlier(drawn["rng"], drawn.get("record"))
            dataset_dict["outlier_image"] = torch.as_tensor(np.ascontiguousarray(raw_image.transpose(2, 0, 1)))
            dataset_dict["outlier_sem_seg"] = torch.as_tensor(raw_label, dtype=torch.int64)
        return dataset_dict
