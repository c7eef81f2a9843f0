"""Writes the synthetic benchmark to disk in real-dataset layouts, cached by generator version.

Layout under the root::

    synthcity_meta.json                              generator version and parameters
    leftImg8bit/{train,val}/<id>_leftImg8bit.png     RGB scenes (Cityscapes layout)
    gtFine/{train,val}/<id>_gtFine_labelTrainIds.png train ids, 255 void
    anomaly/images/<id>.png                          scenes with anomalies (SMIYC layout)
    anomaly/labels_masks/<id>_labels_semantic.png    0 in-distribution, 1 anomaly, 255 void
    anomaly/labels_trainids/<id>_labelTrainIds.png   train ids, 255 on anomalies and void
    outliers/images/<id>.png                         outlier-pool objects (prepared-COCO layout)
    outliers/masks/<id>.png                          254 on the object, 0 elsewhere

Everything is written into a temporary sibling folder that is renamed into place at the end, so
an interrupted run leaves no half-written dataset behind.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Optional

import cv2
import numpy as np

from .samples import make_anomaly_sample, make_inlier_sample, make_outlier_sample

__all__ = ["SynthCityParams", "ensure_synthcity", "is_up_to_date", "GENERATOR_VERSION", "META_FILE"]

# Bump whenever the rendering changes: cached datasets of another version are regenerated.
GENERATOR_VERSION = 2  # 2: everyday-object colours in the outlier family
META_FILE = "synthcity_meta.json"
SPLIT_SEEDS = {"train": 0, "val": 1, "anomaly": 2, "outliers": 3}


@dataclass(frozen=True)
class SynthCityParams:
    """Sizes and seed of a synthetic benchmark."""

    num_train: int = 500
    num_val: int = 100
    num_anomaly: int = 100
    num_outliers: int = 300
    height: int = 256
    width: int = 512
    outlier_size: int = 128
    seed: int = 0


def _meta(params: SynthCityParams) -> dict:
    return {"generator_version": GENERATOR_VERSION, "params": asdict(params)}


def is_up_to_date(root: str, params: SynthCityParams) -> bool:
    """True when ``root`` holds a complete dataset of this generator version and these params."""
    try:
        with open(os.path.join(root, META_FILE)) as f:
            return json.load(f) == _meta(params)
    except (OSError, ValueError):
        return False


def _write_png(path: str, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write {path}")


def _rng(params: SynthCityParams, split: str, index: int) -> np.random.Generator:
    # One stream per (seed, split, image): any image can be regenerated on its own.
    return np.random.default_rng([params.seed, SPLIT_SEEDS[split], index])


def _write_one(task) -> None:
    """Renders and writes image ``index`` of ``split`` (one task of a possibly parallel run)."""
    out, params, split, index = task
    h, w = params.height, params.width
    rng = _rng(params, split, index)
    stem = f"synth_{split}_{index:05d}"
    if split in ("train", "val"):
        image, sem = make_inlier_sample(rng, h, w)
        _write_png(os.path.join(out, "leftImg8bit", split, f"{stem}_leftImg8bit.png"), image)
        _write_png(os.path.join(out, "gtFine", split, f"{stem}_gtFine_labelTrainIds.png"), sem)
    elif split == "anomaly":
        image, label, sem = make_anomaly_sample(rng, h, w)
        _write_png(os.path.join(out, "anomaly", "images", f"{stem}.png"), image)
        _write_png(os.path.join(out, "anomaly", "labels_masks", f"{stem}_labels_semantic.png"), label)
        _write_png(os.path.join(out, "anomaly", "labels_trainids", f"{stem}_labelTrainIds.png"), sem)
    else:
        image, mask = make_outlier_sample(rng, params.outlier_size)
        _write_png(os.path.join(out, "outliers", "images", f"{stem}.png"), image)
        _write_png(os.path.join(out, "outliers", "masks", f"{stem}.png"), mask)


def write_synthcity(out: str, params: SynthCityParams, workers: int = 1) -> None:
    """Generates every split into the (empty or new) folder ``out`` with ``workers`` processes.

    Each image has its own random stream, so the result does not depend on ``workers``.
    """
    for folder in ("leftImg8bit/train", "leftImg8bit/val", "gtFine/train", "gtFine/val", "anomaly/images",
                   "anomaly/labels_masks", "anomaly/labels_trainids", "outliers/images", "outliers/masks"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    counts = {"train": params.num_train, "val": params.num_val, "anomaly": params.num_anomaly,
              "outliers": params.num_outliers}
    tasks = [(out, params, split, i) for split, count in counts.items() for i in range(count)]
    if workers > 1 and len(tasks) > 20:
        # fork: workers only run numpy / OpenCV code (as Detectron2's data-loader workers do).
        with multiprocessing.get_context("fork").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            for _ in pool.imap_unordered(_write_one, tasks, chunksize=8):
                pass
    else:
        for task in tasks:
            _write_one(task)
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump(_meta(params), f, indent=1)


def ensure_synthcity(root: str, params: Optional[SynthCityParams] = None, force: bool = False,
                     workers: Optional[int] = None) -> str:
    """Makes sure ``root`` holds the benchmark for ``params``; generates it when missing or stale.

    ``workers`` defaults to 1 (extra processes did not pay off on 2 cores). Returns the root.
    Generation writes to a temporary sibling folder renamed into place; when another process
    finished first with the same parameters its copy is kept.
    """
    params = params or SynthCityParams()
    root = os.path.abspath(os.fspath(root))
    if not force and is_up_to_date(root, params):
        return root
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + ".tmp-", dir=parent)
    try:
        write_synthcity(tmp, params, workers or 1)
        if not force and is_up_to_date(root, params):  # someone else finished meanwhile
            shutil.rmtree(tmp)
            return root
        if os.path.lexists(root):
            old = tempfile.mkdtemp(prefix=os.path.basename(root) + ".old-", dir=parent)
            os.rename(root, os.path.join(old, "data"))
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, root)
            except OSError:
                if not is_up_to_date(root, params):  # not a finished concurrent copy: a real error
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
