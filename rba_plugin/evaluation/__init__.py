"""Anomaly-segmentation evaluation: exact streaming SMIYC metrics, the official protocol, and the Detectron2 evaluator."""
from .anomaly_metrics import AnomalyMetrics
from .components import TAUS, TRACK_SIZE_FILTERS, ComponentStats
from .ood_evaluator import OODEvaluator
from .pixel_exact import ExactPixelAccumulator, PixelCurves, PixelResult

__all__ = [
    "AnomalyMetrics", "OODEvaluator", "ExactPixelAccumulator", "PixelCurves", "PixelResult", "ComponentStats", "TAUS",
    "TRACK_SIZE_FILTERS",
]
