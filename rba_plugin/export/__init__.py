"""Deployment: a model as one ONNX or TorchScript graph from a raw image to ``sem_seg`` and its
anomaly scores (:func:`export_model`), and running such a file (:class:`ExportedModel`,
:class:`ExportedPredictor`). ``tools/export_model.py`` is the command line."""
from .exporter import (
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    ExportError,
    ExportWrapper,
    check_exportable,
    export_blockers,
    export_model,
    verification_sizes,
)
from .predictor import ExportedPredictor
from .runtime import METADATA_KEY, ExportedModel, file_format, output_names

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "ExportError",
    "ExportWrapper",
    "check_exportable",
    "export_blockers",
    "export_model",
    "verification_sizes",
    "ExportedPredictor",
    "METADATA_KEY",
    "ExportedModel",
    "file_format",
    "output_names",
]
