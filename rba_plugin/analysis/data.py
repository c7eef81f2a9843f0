"""Datasets for the query analyses: checked names, the plugin's test loader, labels and class names."""
from __future__ import annotations

import difflib
import itertools
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.anomaly_datasets import load_anomaly_label, load_sem_seg_label
from ..engine import Trainer

__all__ = [
    "check_dataset",
    "dataset_records",
    "test_batches",
    "class_names",
    "ignore_label",
    "labels_of",
    "has_semantic_labels",
]


def check_dataset(name: str) -> None:
    """Raises ValueError naming ``name`` (and close registered names) when it is not registered."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(registered)} datasets are registered)"
        raise ValueError(f"unknown dataset '{name}': it is not registered in DatasetCatalog{hint}")


def test_batches(cfg, dataset: str, max_images: Optional[int] = None) -> Iterable[List[Dict]]:
    """The dataset's test inputs through the plugin's test loader (``Trainer.build_test_loader``:
    ``InferenceDatasetMapper``, test-time resize, batches of one), the first ``max_images`` only
    when given (None = all).

    Raises:
        ValueError: an unregistered dataset (:func:`check_dataset`), ``max_images`` < 1.
    """
    check_dataset(dataset)
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 (or None for all), got {max_images}")
    loader = Trainer.build_test_loader(cfg, dataset)
    if max_images is None:
        return loader
    # Batches hold one image each (Detectron2's test loader): the first max_images batches.
    return itertools.islice(loader, max_images)


def class_names(dataset: str, num_classes: int) -> List[str]:
    """The dataset's ``stuff_classes`` when they name the model's ``num_classes`` classes, else
    "class 0" ... (an anomaly dataset may carry no class names)."""
    names = MetadataCatalog.get(dataset).get("stuff_classes", None)
    if names is not None and len(names) >= num_classes:
        return [str(n) for n in names[:num_classes]]
    return [f"class {k}" for k in range(num_classes)]


def ignore_label(dataset: str) -> int:
    """The dataset's semantic ``ignore_label`` (255 when it declares none)."""
    return int(MetadataCatalog.get(dataset).get("ignore_label", 255))


def has_semantic_labels(dataset: str) -> bool:
    """Whether the dataset's first record names a semantic label file (``sem_seg_file_name``)."""
    records = DatasetCatalog.get(dataset)
    return bool(records) and bool(records[0].get("sem_seg_file_name"))


def labels_of(batched_input: Dict) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(anomaly label 0 / 1 / 255 or None, semantic train-id label or None) of a test input, each
    H x W at the image's size, read as the OOD evaluator reads them (the test mapper keeps the
    record's file keys)."""
    anomaly = load_anomaly_label(batched_input) if batched_input.get("anomaly_label_file") else None
    semantic = load_sem_seg_label(batched_input) if batched_input.get("sem_seg_file_name") else None
    return anomaly, semantic


def dataset_records(dataset: str) -> List[Dict]:
    """The dataset's records (``DatasetCatalog.get``), after :func:`check_dataset`."""
    check_dataset(dataset)
    return DatasetCatalog.get(dataset)

