"""Anomaly-segmentation evaluation: exact streaming SMIYC metrics, closed-set metrics and the
Detectron2 evaluator."""
from .anomaly_metrics import AnomalyMetrics
from .components import TAUS, TRACK_SIZE_FILTERS, ComponentStats
from .ood_evaluator import OODEvaluator
from .pixel_histogram import PixelHistogram
from .sem_seg_metrics import UnknownIoU, confusion_matrix, incremental_miou, mean_iou, per_class_iou

__all__ = [
    "AnomalyMetrics",
    "OODEvaluator",
    "PixelHistogram",
    "ComponentStats",
    "TAUS",
    "TRACK_SIZE_FILTERS",
    "UnknownIoU",
    "confusion_matrix",
    "incremental_miou",
    "mean_iou",
    "per_class_iou",
]
