"""Running a trained model on single images: the predictor behind ``tools/demo.py``."""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..config import set_anomaly_scores
from ..data.anomaly_datasets import CITYSCAPES_STUFF_COLORS
from ..data.dataset_mappers import build_test_augmentations
from .checkpoint import SafeCheckpointer

__all__ = ["AnomalyPredictor", "palette_of", "prepare_image"]


def palette_of(cfg, num_classes: int):
    """The colours of the first test (else training) dataset's ``stuff_colors`` when they cover
    every class, the Cityscapes palette otherwise."""
    for names in (cfg.DATASETS.TEST, cfg.DATASETS.TRAIN):
        if len(names):
            colors = MetadataCatalog.get(names[0]).get("stuff_colors", None)
            if colors is not None and len(colors) >= num_classes:
                return [tuple(c) for c in colors]
    return [tuple(c) for c in CITYSCAPES_STUFF_COLORS]


def prepare_image(image_rgb: np.ndarray, input_format: str, resize: T.Augmentation, file_name: str = "") -> torch.Tensor:
    """An H x W x 3 uint8 RGB image as the model's 3 x h x w uint8 input: channels in
    ``input_format`` ("RGB" or "BGR"), resized by ``resize`` (the test-time resize, e.g. the
    evaluation loader's: ``T.AugmentationList(build_test_augmentations(cfg))``).

    Raises:
        ValueError: not an H x W x 3 uint8 array (naming ``file_name``).
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"{file_name or 'image'}: expected H x W x 3 uint8 RGB, got {image_rgb.dtype} {image_rgb.shape}")
    image = image_rgb if input_format == "RGB" else image_rgb[:, :, ::-1]
    aug_input = T.AugInput(np.ascontiguousarray(image))
    resize(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))


class AnomalyPredictor:
    """``predictor(image_rgb) -> model output`` at the image's own resolution, like Detectron2's
    ``DefaultPredictor``: the model of ``cfg`` with ``MODEL.WEIGHTS`` (every module of the model must
    be in the checkpoint unless ``MODEL.ALLOW_PARTIAL_LOAD``), test-time resize to
    ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, images converted to ``INPUT.FORMAT``.

    Args:
        cfg: a config with MODEL.WEIGHTS set.
        score_name: a registered anomaly score the model can produce (any score of
            ``rba_plugin.modeling.ood.available_scores()`` whose inputs the model outputs), reported
            instead of the model's configured one; a wrong name fails when the model is built,
            before any image is processed, listing the scores the model supports.

    Raises:
        ValueError: empty MODEL.WEIGHTS, an unknown or unsupported score, a bad INPUT.FORMAT.
    """

    def __init__(self, cfg, score_name: Optional[str] = None):
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("MODEL.WEIGHTS is empty: the demo needs a trained model's checkpoint")
        self.cfg = set_anomaly_scores(cfg, [score_name]) if score_name is not None else cfg.clone()
        self.model = build_model(self.cfg).eval()
        self.score_name = self.model.scorer.names[0]
        SafeCheckpointer(self.cfg, self.model, allow_new_modules=False).load(cfg.MODEL.WEIGHTS)
        # The evaluation loader's resize (rba_plugin.data.dataset_mappers.build_test_augmentations).
        self.augmentations = T.AugmentationList(build_test_augmentations(cfg))
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT: the demo supports 'RGB' and 'BGR', got {cfg.INPUT.FORMAT!r}")
        self.input_format = cfg.INPUT.FORMAT
        self.palette = palette_of(cfg, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)

    @torch.no_grad()
    def __call__(self, image_rgb: np.ndarray, file_name: str = "") -> Dict:
        """Model output for one H x W x 3 uint8 RGB image, plus ``"anomaly"`` (H x W float32
        numpy: the score ``"anomaly_name"``, higher = more anomalous)."""
        tensor = prepare_image(image_rgb, self.input_format, self.augmentations, file_name)
        height, width = image_rgb.shape[:2]
        inputs = {"image": tensor, "height": height, "width": width}
        if file_name:
            inputs["file_name"] = os.fspath(file_name)
        output = self.model([inputs])[0]
        output["anomaly"] = output["ood_score"].detach().float().cpu().numpy()
        output["anomaly_name"] = self.score_name
        return output
