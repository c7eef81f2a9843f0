"""Per-frame anomaly maps in the Segment-Me-If-You-Can benchmark's submission layout.

The official ``Evaluation.save_output`` (road-anomaly-benchmark, ``evaluation.py``, with
``ChannelLoaderHDF5`` of ``datasets/dataset_io.py``) stores each frame's map as

    {DIR_OUTPUTS}/anomaly_p/{method_name}/{dset_name}/{fid}.hdf5

one HDF5 file per frame (h5py) holding one dataset ``"value"``: the H x W map cast with
``astype(np.float16)``, gzip level 9. ``dset_name`` is the split's *persistence* name (the
AnomalyTrack splits are stored under "AnomalyTrack-all", the ObstacleTrack ones under
"ObstacleTrack-all", "LostAndFound-testNoKnown" under "LostAndFound-test":
:func:`smiyc_folder_name`), ``fid`` the frame id of the benchmark's dataset (the image file name
without extension; for Lost and Found without "_leftImg8bit"). The metric code reads the file
back with ``h5py.File(path, "r")["value"][:]`` and ``np.squeeze``.

Functions for an inference tool (one call per frame):

* :func:`write_anomaly_map` writes one frame, atomically (a temporary file in the same folder,
  renamed into place once complete), and returns the path;
* :func:`is_written` says whether a frame's file exists (complete, since writes are atomic), to
  resume an interrupted run;
* :func:`read_anomaly_map` reads a frame back as the official loader does.
"""
from __future__ import annotations

import os
from typing import Union

import h5py
import numpy as np

from ..utils.atomic_write import atomic_open
from .anomaly_metrics import to_numpy

__all__ = [
    "HDF5_KEY", "HDF5_GZIP_LEVEL", "SMIYC_PERSISTENCE_NAMES", "smiyc_folder_name", "anomaly_map_path",
    "write_anomaly_map", "is_written", "read_anomaly_map",
]

HDF5_KEY = "value"  # ChannelLoaderHDF5's default var_name
HDF5_GZIP_LEVEL = 9  # Evaluation.channels["anomaly_p"]: compression = 9 (h5py: gzip level 9)
# Split name -> folder the official frames of that split are written to (their dset_name).
SMIYC_PERSISTENCE_NAMES = {
    "AnomalyTrack-all": "AnomalyTrack-all",
    "AnomalyTrack-test": "AnomalyTrack-all",
    "AnomalyTrack-validation": "AnomalyTrack-all",
    "ObstacleTrack-all": "ObstacleTrack-all",
    "ObstacleTrack-test": "ObstacleTrack-all",
    "ObstacleTrack-validation": "ObstacleTrack-all",
    "ObstacleTrack-noNight": "ObstacleTrack-all",
    "ObstacleTrack-night": "ObstacleTrack-all",
    "ObstacleTrack-snowstorm": "ObstacleTrack-all",
    "LostAndFound-test": "LostAndFound-test",
    "LostAndFound-testValid": "LostAndFound-test",
    "LostAndFound-testNoKnown": "LostAndFound-test",
    "LostAndFound-train": "LostAndFound-train",
    "LostAndFound-trainValid": "LostAndFound-train",
}


def smiyc_folder_name(split: str) -> str:
    """The ``dset_name`` folder of a benchmark split (the split itself when it has no other)."""
    return SMIYC_PERSISTENCE_NAMES.get(split, split)


def _check_part(what: str, value: str) -> str:
    value = str(value)
    if not value or value in (".", "..") or "/" in value or os.sep in value or "\0" in value:
        raise ValueError(f"{what} must be a non-empty name without path separators, got {value!r}")
    return value


def anomaly_map_path(output_root: Union[str, os.PathLike], method_name: str, dataset_name: str, frame_id: str) -> str:
    """``{output_root}/anomaly_p/{method_name}/{dataset_name}/{frame_id}.hdf5``.

    Args:
        output_root: the benchmark's ``DIR_OUTPUTS`` folder.
        method_name: the method's name in the benchmark (a folder name).
        dataset_name: the folder of the split (see :func:`smiyc_folder_name`).
        frame_id: the benchmark's frame id ``fid``.
    Raises:
        ValueError: a name is empty or contains a path separator.
    """
    return os.path.join(os.fspath(output_root), "anomaly_p", _check_part("method_name", method_name),
                        _check_part("dataset_name", dataset_name), _check_part("frame_id", frame_id) + ".hdf5")


def write_anomaly_map(output_root: Union[str, os.PathLike], method_name: str, dataset_name: str, frame_id: str,
                      anomaly_p) -> str:
    """Writes one frame's anomaly map as the official ``Evaluation.save_output`` does, atomically.

    Args:
        output_root, method_name, dataset_name, frame_id: see :func:`anomaly_map_path`.
        anomaly_p: H x W scores (numpy array or tensor on any device; higher = more anomalous),
            at the resolution of the benchmark's image: the official metrics up-sample narrower
            maps only in their multi-process runner.
    Returns:
        The written path. An existing file is replaced.
    Raises:
        ValueError: not 2-D, or not finite after the cast to float16 (NaN, or |score| > 65504,
            which the official pipeline would store as inf).
    """
    array = to_numpy(anomaly_p)
    if array.ndim != 2:
        raise ValueError(f"frame {frame_id!r}: the anomaly map must be H x W, got shape {array.shape}")
    with np.errstate(over="ignore"):
        value = array.astype(np.float16)  # as save_output: round to nearest, overflow to inf
    bad = ~np.isfinite(value)
    if bad.any():
        raise ValueError(f"frame {frame_id!r}: {int(bad.sum())} values are not finite as float16 (NaN, or beyond "
                         f"+-65504); the benchmark stores float16")
    path = anomaly_map_path(output_root, method_name, dataset_name, frame_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # atomic_open: written under a temporary name, synced, then renamed (h5py writes file objects
    # opened for reading and writing).
    with atomic_open(path, "w+b") as f:
        with h5py.File(f, "w") as hdf5:
            hdf5.create_dataset(HDF5_KEY, data=value, compression=HDF5_GZIP_LEVEL)
    return path


def is_written(output_root: Union[str, os.PathLike], method_name: str, dataset_name: str, frame_id: str) -> bool:
    """True when the frame's file exists (writes are atomic, so an existing file is complete)."""
    return os.path.isfile(anomaly_map_path(output_root, method_name, dataset_name, frame_id))


def read_anomaly_map(path: Union[str, os.PathLike]) -> np.ndarray:
    """The map of one file as the official loader returns it (``ChannelLoaderHDF5.read_file``
    then ``np.squeeze``): H x W float16."""
    with h5py.File(os.fspath(path), "r") as hdf5:
        return np.squeeze(hdf5[HDF5_KEY][:])
