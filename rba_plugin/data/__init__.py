"""Datasets of rba_plugin: anomaly benchmarks, outlier pools and pasting, the synthetic benchmark.

Importing this package registers the built-in datasets (lazily).
"""
from . import builtin, dataset_mappers  # noqa: F401  (registers the built-in datasets and mappers)
from .anomaly_datasets import (
    CITYSCAPES_STUFF_CLASSES,
    CITYSCAPES_STUFF_COLORS,
    DatasetPath,
    datasets_root,
    load_anomaly_label,
    load_sem_seg_label,
    register_anomaly_dataset,
)
from .builtin_anomaly import lost_and_found_label_map, register_all_anomaly_benchmarks, register_lost_and_found
from .outlier_paste import OutlierPaster, select_proxy_subset
from .outlier_pool import list_outlier_pool, register_outlier_pool
from .synthetic import SynthCityParams, ensure_synthcity, register_synthcity

__all__ = [
    "register_anomaly_dataset",
    "load_anomaly_label",
    "load_sem_seg_label",
    "DatasetPath",
    "datasets_root",
    "CITYSCAPES_STUFF_CLASSES",
    "CITYSCAPES_STUFF_COLORS",
    "register_all_anomaly_benchmarks",
    "register_lost_and_found",
    "lost_and_found_label_map",
    "register_outlier_pool",
    "list_outlier_pool",
    "OutlierPaster",
    "select_proxy_subset",
    "register_synthcity",
    "ensure_synthcity",
    "SynthCityParams",
]
