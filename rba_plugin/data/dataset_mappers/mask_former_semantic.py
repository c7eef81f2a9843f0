"""Training mapper for semantic segmentation with mask classification (Mask2Former's
``MaskFormerSemanticDatasetMapper``): augment image and label together, then turn the label map
into one binary mask per class present."""
from __future__ import annotations

import copy
import logging
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ..outlier_paste import PASTE_STAGES
from ..image_io import read_image, read_label
from .color_aug_ssd import ColorAugSSD
from .registry import register_train_mapper

__all__ = ["MaskFormerSemanticDatasetMapper", "PasteFunction", "build_semantic_train_augmentations"]

logger = logging.getLogger(__name__)

# paster(image H x W x 3 uint8, sem_seg H x W, rng) -> (image, sem_seg); pasted pixels get OOD_LABEL.
# sem_seg arrives as float64 at every stage (Detectron2 resizes label maps as floats).
PasteFunction = Callable[[np.ndarray, np.ndarray, np.random.Generator], Tuple[np.ndarray, np.ndarray]]

# Augmentations after which the "after_crop" paste stage runs.
_CROPS = (T.RandomCrop, T.RandomCrop_CategoryAreaConstraint, T.FixedSizeCrop)


def build_semantic_train_augmentations(cfg) -> List[T.Augmentation]:
    """Resize the shortest edge to a sampled size, crop (category-area constraint), SSD colour
    jitter, flip with probability ``INPUT.RANDOM_FLIP_PROB``: Mask2Former's semantic training
    pipeline.

    Raises:
        ValueError: ``INPUT.RANDOM_FLIP_PROB`` outside [0, 1].
    """
    flip_prob = cfg.INPUT.RANDOM_FLIP_PROB
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"INPUT.RANDOM_FLIP_PROB must be in [0, 1], got {flip_prob}")
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSD(img_format=cfg.INPUT.FORMAT))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                prob=flip_prob,
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    return augs


@register_train_mapper("mask_former_semantic")
class MaskFormerSemanticDatasetMapper:
    """Maps a semantic-segmentation dataset dict ("file_name", "sem_seg_file_name", "height",
    "width") to the model's training input:

    * "image": 3 x H x W uint8 tensor (``image_format``);
    * "sem_seg": H x W int64 label map (``ignore_label`` = void, ``ood_label`` = pasted outlier);
    * "instances": ``Instances`` with "gt_classes" (K int64, the classes present, sorted) and
      "gt_masks" (K x H x W bool), one mask per class; void and outlier pixels are in no mask.

    ``outlier_paster`` runs at ``paste_stage`` (one of ``PASTE_STAGES``): before the first
    augmentation, right after the last crop augmentation, or after all of them ("final_crop").
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
        num_classes: int,
        ood_label: int = 254,
        outlier_paster: Optional[PasteFunction] = None,
        paste_stage: str = "final_crop",
    ):
        if not is_train:
            raise ValueError("MaskFormerSemanticDatasetMapper is for training; use rba_plugin's InferenceDatasetMapper to test")
        if paste_stage not in PASTE_STAGES:
            raise ValueError(f"INPUT.OOD_PASTE_STAGE must be one of {PASTE_STAGES}, got '{paste_stage}'")
        crops = [i for i, aug in enumerate(augmentations) if isinstance(aug, _CROPS)]
        if paste_stage == "after_crop" and outlier_paster is not None and not crops:
            raise ValueError("INPUT.OOD_PASTE_STAGE 'after_crop' needs a crop augmentation (INPUT.CROP.ENABLED)")
        # Augmentations [0, paste_at) run before the paste, the rest after it.
        self.paste_at = {"before_augmentation": 0, "after_crop": crops[-1] + 1 if crops else None,
                         "final_crop": len(augmentations)}[paste_stage]
        self.paste_stage = paste_stage
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.img_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.num_classes = num_classes
        self.ood_label = ood_label
        self.outlier_paster = outlier_paster
        logger.info(f"[{self.__class__.__name__}] Augmentations used in training: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        # The first training set's metadata names the ignore label (Mask2Former's convention).
        ignore_label = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if cfg.DATASETS.TRAIN:
            ignore_label = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", ignore_label)
        return {
            "is_train": is_train,
            "augmentations": build_semantic_train_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ood_label": cfg.INPUT.OOD_LABEL,
        }

    def _read(self, dataset_dict: Dict) -> Tuple[np.ndarray, np.ndarray]:
        file_name = dataset_dict["file_name"]
        image = read_image(file_name, format=self.img_format)
        if "height" in dataset_dict or "width" in dataset_dict:
            expected = (dataset_dict.get("height"), dataset_dict.get("width"))
            if expected != image.shape[:2]:
                raise ValueError(
                    f"{file_name}: image is {image.shape[0]}x{image.shape[1]} (HxW) but the dataset dict "
                    f"says {expected[0]}x{expected[1]}"
                )
        label_file = dataset_dict.get("sem_seg_file_name")
        if label_file is None:
            raise ValueError(f"{file_name}: the dataset dict has no 'sem_seg_file_name' (semantic labels are required)")
        if "annotations" in dataset_dict:
            raise ValueError(f"{file_name}: a semantic-segmentation dataset dict must not have 'annotations'")
        sem_seg = read_label(label_file).astype("double")  # indices, never colours
        if sem_seg.shape != image.shape[:2]:
            raise ValueError(
                f"{label_file}: label is {sem_seg.shape[0]}x{sem_seg.shape[1]} but its image {file_name} is "
                f"{image.shape[0]}x{image.shape[1]}"
            )
        return image, sem_seg

    def augment(self, image: np.ndarray, sem_seg: np.ndarray,
                paste: Optional[PasteFunction] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Runs the augmentations on (image H x W x 3, sem_seg H x W float) and ``paste`` at the
        paste stage; returns the augmented image and the int64 label map."""
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        if paste is None:
            aug_input, _ = T.apply_transform_gens(self.tfm_gens, aug_input)
        else:
            aug_input, _ = T.apply_transform_gens(self.tfm_gens[: self.paste_at], aug_input)
            # detectron2 seeds numpy per worker and rank, so the derived generator differs between them.
            rng = np.random.default_rng(np.random.randint(2**31))
            image, sem_seg = paste(aug_input.image, aug_input.sem_seg, rng)
            aug_input = T.AugInput(image, sem_seg=sem_seg)
            aug_input, _ = T.apply_transform_gens(self.tfm_gens[self.paste_at:], aug_input)
        return aug_input.image, aug_input.sem_seg.astype(np.int64)

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image, sem_seg = self._read(dataset_dict)
        image, sem_seg = self.augment(image, sem_seg, self.outlier_paster)

        image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        sem_seg_t = torch.as_tensor(np.ascontiguousarray(sem_seg), dtype=torch.int64)
        if self.size_divisibility > 0:
            h, w = sem_seg_t.shape
            pad_h = -h % self.size_divisibility
            pad_w = -w % self.size_divisibility
            image_t = F.pad(image_t, (0, pad_w, 0, pad_h), value=128).contiguous()
            sem_seg_t = F.pad(sem_seg_t, (0, pad_w, 0, pad_h), value=self.ignore_label).contiguous()

        dataset_dict["image"] = image_t
        dataset_dict["sem_seg"] = sem_seg_t
        dataset_dict["instances"] = self.label_to_instances(sem_seg_t, dataset_dict.get("sem_seg_file_name", ""))
        return dataset_dict

    def label_to_instances(self, sem_seg: torch.Tensor, label_file: str = "") -> Instances:
        """H x W int64 label map -> Instances(gt_classes K, gt_masks K x H x W bool), one per class present."""
        classes = torch.unique(sem_seg)
        classes = classes[(classes != self.ignore_label) & (classes != self.ood_label)]
        bad = classes[(classes < 0) | (classes >= self.num_classes)]
        if len(bad):
            raise ValueError(
                f"{label_file}: label values {bad.tolist()} are neither classes 0..{self.num_classes - 1} nor "
                f"ignore ({self.ignore_label}) / outlier ({self.ood_label})"
            )
        instances = Instances(tuple(sem_seg.shape))
        instances.gt_classes = classes.to(torch.int64)
        instances.gt_masks = sem_seg[None] == classes[:, None, None]  # K x H x W bool
        return instances
