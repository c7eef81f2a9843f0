"""The predictor of an exported file: :class:`rba_plugin.engine.AnomalyPredictor`'s outputs from
an ONNX or TorchScript file alone (no config, no checkpoint, no model code)."""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
from detectron2.data import transforms as T

from ..engine.predictor import prepare_image
from ..modeling.ood.scorer import NAMED_SCORES, PRIMARY_SCORE
from .runtime import ExportedModel

__all__ = ["ExportedPredictor"]


class ExportedPredictor:
    """``predictor(image_rgb) -> output`` like :class:`~rba_plugin.engine.predictor.AnomalyPredictor`
    (same keys, same values to float rounding), running an exported file.

    The file's metadata gives the test-time resize, the input format, the exported scores and the
    palette; the graph resizes its outputs to the original image size itself (its
    ``output_size`` input), so the scores are computed at that size as the PyTorch model does.

    Args:
        path: a file written by ``tools/export_model.py`` (.onnx or TorchScript).
        score_name: the exported score reported as ``"ood_score"`` / ``"anomaly"`` (default: the
            first exported one).
        num_threads: onnxruntime's intra-op threads (default: its own choice).

    Raises:
        ValueError: a score the file does not hold (listing those it holds), a file without
            rba_plugin metadata.
    """

    def __init__(self, path: str, score_name: Optional[str] = None, num_threads: Optional[int] = None):
        self.model = ExportedModel(path, num_threads=num_threads)
        meta = self.model.metadata
        self.score_names = list(meta["score_names"])
        if score_name is not None and score_name not in self.score_names:
            raise ValueError(
                f"{path} was exported with the score(s) {', '.join(self.score_names)}, not '{score_name}'; "
                f"export it again with --score {score_name}"
            )
        self.score_name = score_name or self.score_names[0]
        self.input_format = meta["input_format"]
        self.resize = T.ResizeShortestEdge([meta["min_size_test"]] * 2, meta["max_size_test"])
        self.size_divisibility = int(meta.get("size_divisibility", 0))
        self.input_size_multiple = tuple(meta.get("input_size_multiple", (1, 1)))
        self.palette = [tuple(c) for c in meta["palette"]]

    def _check_size(self, height: int, width: int, file_name: str) -> None:
        # The PyTorch model refuses these sizes itself; a graph cannot raise, so it is done here.
        div = max(self.size_divisibility, 1)
        padded = (math.ceil(height / div) * div, math.ceil(width / div) * div)
        mh, mw = self.input_size_multiple
        if padded[0] % mh or padded[1] % mw:
            raise ValueError(
                f"{file_name or 'image'}: image of {height}x{width} (HxW; {padded[0]}x{padded[1]} after padding) "
                f"is not a multiple of {mh}x{mw}, the exported model's input size multiple (its ASPP pools "
                f"over fixed windows); resize the images to such a size"
            )

    def __call__(self, image_rgb: np.ndarray, file_name: str = "") -> Dict:
        """Outputs for one H x W x 3 uint8 RGB image: ``"sem_seg"`` (C x H x W), ``"ood_score"``
        (the chosen score), ``"ood_scores"`` (every exported score, when several), ``"anomaly"``
        (H x W float32 numpy) and ``"anomaly_name"``."""
        tensor = prepare_image(image_rgb, self.input_format, self.resize, file_name)
        self._check_size(tensor.shape[1], tensor.shape[2], file_name)
        height, width = image_rgb.shape[:2]
        raw = self.model(tensor[None].float(), (height, width))
        scores = {name: raw[f"score_{name}"] for name in self.score_names}
        output: Dict = {"sem_seg": raw["sem_seg"], PRIMARY_SCORE: scores[self.score_name]}
        if len(scores) > 1:
            output[NAMED_SCORES] = scores
        output["anomaly"] = output[PRIMARY_SCORE].numpy().astype(np.float32, copy=False)
        output["anomaly_name"] = self.score_name
        return output
