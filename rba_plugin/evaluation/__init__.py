"""Anomaly-segmentation evaluation: exact streaming SMIYC metrics, the official protocol,
closed-set metrics and the Detectron2 evaluator."""
from .anomaly_metrics import AnomalyMetrics
from .components import TAUS, TRACK_SIZE_FILTERS, ComponentStats
from .ood_evaluator import OODEvaluator
from .pixel_exact import ExactPixelAccumulator, PixelCurves, PixelResult
from .sem_seg_metrics import UnknownIoU, confusion_matrix, incremental_miou, mean_iou, per_class_iou

__all__ = [
    "AnomalyMetrics",
    "OODEvaluator",
    "ExactPixelAccumulator",
    "PixelCurves",
    "PixelResult",
    "ComponentStats",
    "TAUS",
    "TRACK_SIZE_FILTERS",
    "UnknownIoU",
    "confusion_matrix",
    "incremental_miou",
    "mean_iou",
    "per_class_iou",
]
