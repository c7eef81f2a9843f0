"""Running a trained model on single images: the predictor behind ``tools/demo.py``."""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image, ImageOps

from ..data.anomaly_datasets import CITYSCAPES_STUFF_COLORS
from ..modeling.ood.scores import compute_ood_score, get_score_function
from .checkpoint import SafeCheckpointer

__all__ = ["AnomalyPredictor", "read_rgb_image", "select_ood_score", "palette_of"]


def read_rgb_image(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB of any image PIL reads: grayscale (8 or 16 bit), palette, RGBA and LA
    images are converted (alpha dropped), EXIF orientation applied. Errors name the file."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bit
                array = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I;16") or array.max() <= 65535 else array.max()
                array = np.clip(np.rint(array / top * 255.0), 0, 255).astype(np.uint8)
                return np.repeat(array[:, :, None], 3, axis=2)
            if image.mode == "F":
                raise ValueError("floating-point images are not supported")
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def select_ood_score(output: Dict, score_name: Optional[str]) -> Tuple[torch.Tensor, str]:
    """(H x W anomaly score, its name) from a model output.

    ``score_name`` None: the model's own ``"ood_score"``, else RbA computed from ``"sem_seg"``.
    A name: ``output["ood_scores"][name]`` when the model computed it, else the registered score
    of that name applied to ``"sem_seg"``.
    """
    if score_name is None:
        if "ood_score" in output:
            return output["ood_score"], "ood_score"
        score_name = "rba"
    named = output.get("ood_scores", {})
    if score_name in named:
        return named[score_name], score_name
    if "sem_seg" not in output:
        raise KeyError(f"model output has no 'sem_seg' to compute the score '{score_name}' from")
    return compute_ood_score(score_name, output["sem_seg"]), score_name


def palette_of(cfg, num_classes: int):
    """The colours of the first test (else training) dataset's ``stuff_colors`` when they cover
    every class, the Cityscapes palette otherwise."""
    for names in (cfg.DATASETS.TEST, cfg.DATASETS.TRAIN):
        if len(names):
            colors = MetadataCatalog.get(names[0]).get("stuff_colors", None)
            if colors is not None and len(colors) >= num_classes:
                return [tuple(c) for c in colors]
    return [tuple(c) for c in CITYSCAPES_STUFF_COLORS]


class AnomalyPredictor:
    """``predictor(image_rgb) -> model output`` at the image's own resolution, like Detectron2's
    ``DefaultPredictor``: the model of ``cfg`` with ``MODEL.WEIGHTS`` (every module of the model must
    be in the checkpoint unless ``MODEL.ALLOW_PARTIAL_LOAD``), test-time resize to
    ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, images converted to ``INPUT.FORMAT``.

    Args:
        cfg: a config with MODEL.WEIGHTS set.
        score_name: the anomaly score to report (see :func:`select_ood_score`); checked here, so a
            wrong name fails before any image is processed.
    """

    def __init__(self, cfg, score_name: Optional[str] = None):
        if score_name is not None:
            get_score_function(score_name)  # ValueError listing the known scores
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("MODEL.WEIGHTS is empty: the demo needs a trained model's checkpoint")
        self.cfg = cfg.clone()
        self.score_name = score_name
        self.model = build_model(self.cfg).eval()
        SafeCheckpointer(self.cfg, self.model, allow_new_modules=False).load(cfg.MODEL.WEIGHTS)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT: the demo supports 'RGB' and 'BGR', got {cfg.INPUT.FORMAT!r}")
        self.input_format = cfg.INPUT.FORMAT
        self.palette = palette_of(cfg, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)

    @torch.no_grad()
    def __call__(self, image_rgb: np.ndarray, file_name: str = "") -> Dict:
        """Model output for one H x W x 3 uint8 RGB image, plus ``"anomaly"`` (H x W float32
        numpy) and ``"anomaly_name"``."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"{file_name or 'image'}: expected H x W x 3 uint8 RGB, got {image_rgb.dtype} {image_rgb.shape}")
        height, width = image_rgb.shape[:2]
        image = image_rgb if self.input_format == "RGB" else image_rgb[:, :, ::-1]
        image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        inputs = {"image": tensor, "height": height, "width": width}
        if file_name:
            inputs["file_name"] = os.fspath(file_name)
        output = self.model([inputs])[0]
        score, name = select_ood_score(output, self.score_name)
        output["anomaly"] = score.detach().float().cpu().numpy()
        output["anomaly_name"] = name
        return output
