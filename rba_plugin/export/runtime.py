"""Running an exported model (ONNX through onnxruntime, or TorchScript) from Python.

The file's metadata (JSON under :data:`METADATA_KEY`: ONNX ``metadata_props``, TorchScript extra
file ``rba_plugin.json``) says what the graph expects and what the predictor needs around it:
``outputs``, ``score_names``, ``num_classes``, ``input_format``, ``min_size_test`` /
``max_size_test`` (the test-time resize), ``size_divisibility``, ``input_size_multiple``,
``palette`` and the sizes and errors it was verified at.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort
import torch

__all__ = ["METADATA_KEY", "INPUT_NAMES", "output_names", "file_format", "ExportedModel"]

METADATA_KEY = "rba_plugin"
INPUT_NAMES = ("image", "output_size")


def output_names(score_names: Sequence[str]) -> List[str]:
    """``["sem_seg", "score_<name>", ...]``: an exported graph's outputs in order."""
    return ["sem_seg"] + [f"score_{name}" for name in score_names]


def file_format(path: str) -> str:
    """"torchscript" (a zip archive) or "onnx" (anything else: a protobuf)."""
    return "torchscript" if zipfile.is_zipfile(path) else "onnx"


class ExportedModel:
    """``exported(image, output_size) -> {output name: tensor}`` for a file written by
    :func:`rba_plugin.export.export_model`.

    Args:
        path: the .onnx or TorchScript file (told apart by content).
        num_threads: intra-op threads of onnxruntime (default: onnxruntime's own choice);
            TorchScript uses torch's (``torch.set_num_threads``).
        names: output names, for a file without metadata (the exporter's check before it
            writes them).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file holds no rba_plugin metadata and ``names`` is not given.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None, names: Optional[Sequence[str]] = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"exported model {path} does not exist")
        self.path = os.fspath(path)
        self.format = file_format(self.path)
        if self.format == "onnx":
            options = ort.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = int(num_threads)
            self._session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
            text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        else:
            extra = {f"{METADATA_KEY}.json": ""}
            with warnings.catch_warnings():  # deprecated upstream, still how TorchScript loads
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.load", category=FutureWarning)
                self._module = torch.jit.load(self.path, map_location="cpu", _extra_files=extra)
            text = extra[f"{METADATA_KEY}.json"] or None
        self.metadata: Dict = json.loads(text) if text else {}
        if names is None:
            if not self.metadata:
                raise ValueError(f"{self.path} holds no {METADATA_KEY} metadata: not written by rba_plugin.export")
            names = self.metadata["outputs"]
        self.names = list(names)

    @property
    def score_names(self) -> List[str]:
        return list(self.metadata.get("score_names", [n[len("score_"):] for n in self.names[1:]]))

    def __call__(
        self, image: Union[torch.Tensor, np.ndarray], output_size: Union[torch.Tensor, Tuple[int, int]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            image: 1 x 3 x H x W (or 3 x H x W), 0..255, channels in the model's input format.
            output_size: (height, width) of the output maps.

        Returns:
            {"sem_seg": C x height x width, "score_<name>": height x width, ...} float32 CPU tensors.
        """
        image = torch.as_tensor(image).float()
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"exported model: image must be 1 x 3 x H x W, got shape {tuple(image.shape)}")
        size = torch.as_tensor([int(s) for s in output_size], dtype=torch.int64)
        if self.format == "onnx":
            outputs = self._session.run(self.names, {"image": image.numpy(), "output_size": size.numpy()})
            return {name: torch.from_numpy(out) for name, out in zip(self.names, outputs)}
        with torch.no_grad():
            outputs = self._module(image, size)
        return dict(zip(self.names, outputs))
