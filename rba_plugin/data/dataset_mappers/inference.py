"""The test mapper of every model and evaluation (``rba_plugin.engine.Trainer.build_test_loader``):
Detectron2's ``DatasetMapper`` in test mode, reading images with the plugin's reader."""
from __future__ import annotations

import copy
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from ..image_io import read_image

__all__ = ["InferenceDatasetMapper", "build_test_augmentations", "build_test_mapper"]


def build_test_augmentations(cfg) -> List[T.Augmentation]:
    """The test-time resize: shortest edge to ``INPUT.MIN_SIZE_TEST`` (0 = keep the size), longer
    edge at most ``INPUT.MAX_SIZE_TEST`` (Detectron2's ``build_augmentation(cfg, False)``)."""
    return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]


class InferenceDatasetMapper:
    """Maps a dataset dict ("file_name", optionally "height" / "width") to a model's test input.

    The image is read with :func:`rba_plugin.data.image_io.read_image` (any bit depth, grayscale,
    palette, RGBA, EXIF orientation: the same array training and ``tools/demo.py`` see), then
    resized. Returns a copy of the dict with

    * "image": 3 x h x w uint8 tensor in ``image_format``, after the augmentations;
    * "height" / "width": the size of the image as read, at which the model answers.

    Raises:
        ValueError: naming the file, when it cannot be read or its size differs from the dict's
            "height" x "width" (a dataset registered with another reader's size).
    """

    @configurable
    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"augmentations": build_test_augmentations(cfg), "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        image = read_image(file_name, format=self.image_format)
        height, width = image.shape[:2]
        expected = (dataset_dict.get("height", height), dataset_dict.get("width", width))
        if expected != (height, width):
            raise ValueError(
                f"{file_name}: image is {height}x{width} (HxW) as read, but the dataset dict says "
                f"{expected[0]}x{expected[1]}"
            )
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        dataset_dict["height"], dataset_dict["width"] = height, width
        return dataset_dict


def build_test_mapper(cfg) -> InferenceDatasetMapper:
    """The test mapper of ``cfg`` (what every evaluation loader uses)."""
    return InferenceDatasetMapper(cfg)
