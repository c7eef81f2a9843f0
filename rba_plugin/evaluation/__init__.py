"""Anomaly-segmentation evaluation: exact streaming SMIYC metrics and the Detectron2 evaluator."""
from .anomaly_metrics import AnomalyMetrics
from .components import TAUS, TRACK_SIZE_FILTERS, ComponentStats
from .ood_evaluator import OODEvaluator
from .pixel_histogram import PixelHistogram

__all__ = ["AnomalyMetrics", "OODEvaluator", "PixelHistogram", "ComponentStats", "TAUS", "TRACK_SIZE_FILTERS"]
