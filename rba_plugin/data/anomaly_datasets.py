"""Lazy registration of anomaly-segmentation datasets and loading of their 0 / 1 / 255 labels.

A dataset is a folder of label files (they define which frames are evaluated) and a folder of
images; every label value on disk is mapped through a declared table onto 0 = in-distribution,
1 = anomaly, 255 = void. Registering touches no file; the folders are listed on first use
(``DatasetCatalog.get``), which is where a missing root or an empty dataset is reported.
"""
from __future__ import annotations

import os
import re
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

from .image_io import image_size, read_label

__all__ = [
    "DatasetPath",
    "datasets_root",
    "register_anomaly_dataset",
    "load_anomaly_label",
    "load_sem_seg_label",
    "list_anomaly_frames",
    "CITYSCAPES_STUFF_CLASSES",
    "CITYSCAPES_STUFF_COLORS",
]

PathLike = Union[str, os.PathLike]
CITYSCAPES_STUFF_CLASSES = [c["name"] for c in CITYSCAPES_CATEGORIES]
CITYSCAPES_STUFF_COLORS = [c["color"] for c in CITYSCAPES_CATEGORIES]
ANOMALY_TARGETS = (0, 1, 255)


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), read at call time."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


class DatasetPath(os.PathLike):
    """A path under ``$DETECTRON2_DATASETS`` resolved when used, not when registered."""

    def __init__(self, relative: str):
        self.relative = relative

    def __fspath__(self) -> str:
        return os.path.join(datasets_root(), self.relative)

    def __repr__(self) -> str:
        return f"$DETECTRON2_DATASETS/{self.relative}"


def _missing_root_error(name: str, path: str, layout: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset '{name}': folder {path} does not exist.\nExpected layout:\n{layout}\n"
        f"Built-in datasets live under $DETECTRON2_DATASETS (now '{datasets_root()}'); "
        "see datasets/README.md for how to prepare them."
    )


def list_anomaly_frames(
    name: str,
    image_root: PathLike,
    label_root: PathLike,
    image_suffix: str,
    label_suffix: str,
    label_map: Mapping[int, int],
    image_stem: Optional[Callable[[str], str]] = None,
    stem_filter: Optional[Callable[[str], bool]] = None,
    sem_seg_root: Optional[PathLike] = None,
    sem_seg_suffix: Optional[str] = None,
    layout: str = "",
) -> List[dict]:
    """Dataset dicts of every label file ``<label_root>/**/<stem><label_suffix>``.

    The image is ``<image_root>/<image_stem(stem)><image_suffix>``; height and width are the size
    :func:`rba_plugin.data.image_io.read_image` returns (read from the file header, EXIF
    orientation applied). Returns dicts with file_name, height, width, image_id, anomaly_label_file,
    anomaly_label_map (and sem_seg_file_name when ``sem_seg_root`` is given).
    """
    image_root, label_root = os.fspath(image_root), os.fspath(label_root)
    for root in (label_root, image_root):
        if not os.path.isdir(root):
            raise _missing_root_error(name, root, layout)
    stems = []
    for folder, _, files in os.walk(label_root, followlinks=True):
        for file in files:
            path = os.path.join(folder, file)
            if path.endswith(label_suffix):
                stem = os.path.relpath(path, label_root)[: -len(label_suffix)]
                if stem_filter is None or stem_filter(stem):
                    stems.append(stem)
    if not stems:
        raise FileNotFoundError(
            f"dataset '{name}': no label file matching '*{label_suffix}' under {label_root}.\n"
            f"Expected layout:\n{layout}"
        )
    label_map = {int(k): int(v) for k, v in label_map.items()}
    dicts = []
    for stem in sorted(stems):
        image_file = os.path.join(image_root, (image_stem(stem) if image_stem else stem) + image_suffix)
        try:
            height, width = image_size(image_file)
        except ValueError as error:
            raise ValueError(f"dataset '{name}': {error}") from error
        record = {
            "file_name": image_file,
            "height": height,
            "width": width,
            "image_id": stem,
            "anomaly_label_file": os.path.join(label_root, stem + label_suffix),
            "anomaly_label_map": label_map,
        }
        if sem_seg_root is not None:
            record["sem_seg_file_name"] = os.path.join(os.fspath(sem_seg_root), stem + (sem_seg_suffix or ""))
        dicts.append(record)
    return dicts


def _read_label_file(path: str, expected_hw: Optional[Tuple[int, int]], image_file: str = "") -> np.ndarray:
    label = read_label(path)  # indices (a palette PNG's, never its colours), 8 or 16 bit
    if expected_hw is not None and label.shape != tuple(expected_hw):
        raise ValueError(
            f"label {path} is {label.shape[0]}x{label.shape[1]} but image {image_file} is "
            f"{expected_hw[0]}x{expected_hw[1]}"
        )
    return label


def load_anomaly_label(dataset_dict: dict) -> np.ndarray:
    """The H x W uint8 anomaly label (0 in-distribution, 1 anomaly, 255 void) of a dataset dict.

    The file is read with :func:`rba_plugin.data.image_io.read_label` (indices: a palette PNG's
    indices, 8- or 16-bit values), then mapped through the dict's ``anomaly_label_map``.

    Raises ValueError naming the file when it is unreadable or holds colours, its size differs
    from the dict's height x width, or it holds a value the dataset's label map does not declare.
    """
    path = dataset_dict["anomaly_label_file"]
    hw = (dataset_dict["height"], dataset_dict["width"]) if "height" in dataset_dict else None
    raw = _read_label_file(path, hw, dataset_dict.get("file_name", ""))
    label_map = dataset_dict.get("anomaly_label_map") or {0: 0, 1: 1, 255: 255}
    size = 1 << (16 if raw.dtype == np.uint16 else 8)
    table = np.full(size, -1, dtype=np.int16)
    for source, target in label_map.items():
        if 0 <= source < size:
            table[source] = target
    mapped = table[raw]
    if (mapped < 0).any():
        bad = sorted(np.unique(raw[mapped < 0]).tolist())
        raise ValueError(
            f"label file {path} has values {bad[:20]} outside the declared mapping "
            f"{sorted(label_map)[:40]}"
        )
    return mapped.astype(np.uint8)


def load_sem_seg_label(dataset_dict: dict) -> np.ndarray:
    """The H x W train-id label of ``dataset_dict["sem_seg_file_name"]`` (255 = ignore; uint8, or
    uint16 for a 16-bit file), read with :func:`rba_plugin.data.image_io.read_label`.

    Raises ValueError naming the file when it is unreadable or holds colours, or its size
    differs from the dict's height x width.
    """
    path = dataset_dict["sem_seg_file_name"]
    hw = (dataset_dict["height"], dataset_dict["width"]) if "height" in dataset_dict else None
    return _read_label_file(path, hw, dataset_dict.get("file_name", ""))


def register_anomaly_dataset(
    name: str,
    image_root: PathLike,
    label_root: PathLike,
    *,
    image_suffix: str,
    label_suffix: str,
    label_map: Mapping[int, int],
    image_stem: Optional[Callable[[str], str]] = None,
    stem_filter: Optional[Callable[[str], bool]] = None,
    sem_seg_root: Optional[PathLike] = None,
    sem_seg_suffix: Optional[str] = None,
    ood_track: str = "anomaly",
    component_sizes: Optional[Tuple[int, int]] = None,
    layout: str = "",
    prepare: Optional[Callable[[], None]] = None,
    **extra_metadata,
) -> None:
    """Registers an anomaly dataset lazily in DatasetCatalog and MetadataCatalog.

    Args:
        image_root / label_root: folders (str or :class:`DatasetPath`, resolved at first use).
        image_suffix / label_suffix: file name endings; a frame is ``<stem><label_suffix>`` under
            label_root (searched recursively) with image ``<image_stem(stem)><image_suffix>``.
        label_map: every value the label files may hold -> 0 / 1 / 255; other values are errors.
        stem_filter: keeps only the stems for which it returns True (e.g. a validation split).
        sem_seg_root / sem_seg_suffix: optional in-distribution train-id labels for mIoU.
        ood_track: "anomaly" or "obstacle", selects the SMIYC component size filters unless
            ``component_sizes`` = (min predicted, min ground-truth) pixels is given.
        layout: a text drawing of the expected layout, shown when the dataset is missing.
        prepare: called before listing on first use (e.g. to generate a synthetic dataset).
    """
    bad = {k: v for k, v in label_map.items() if v not in ANOMALY_TARGETS}
    if bad:
        raise ValueError(f"dataset '{name}': label_map targets must be 0, 1 or 255, got {bad}")
    if ood_track not in ("anomaly", "obstacle"):
        raise ValueError(f"dataset '{name}': ood_track must be 'anomaly' or 'obstacle', got {ood_track!r}")

    def load() -> List[dict]:
        if prepare is not None:
            prepare()
        return list_anomaly_frames(
            name, image_root, label_root, image_suffix, label_suffix, label_map,
            image_stem=image_stem, stem_filter=stem_filter, sem_seg_root=sem_seg_root,
            sem_seg_suffix=sem_seg_suffix, layout=layout,
        )

    DatasetCatalog.register(name, load)
    metadata = dict(
        evaluator_type="ood",
        ignore_label=255,
        stuff_classes=list(CITYSCAPES_STUFF_CLASSES),
        stuff_colors=list(CITYSCAPES_STUFF_COLORS),
        anomaly_label_map=dict(label_map),
        ood_track=ood_track,
        image_root=image_root,
        label_root=label_root,
    )
    if component_sizes is not None:
        metadata["ood_component_sizes"] = tuple(int(s) for s in component_sizes)
    metadata.update(extra_metadata)
    MetadataCatalog.get(name).set(**metadata)


def prefix_filter(include: Sequence[str] = ("",), exclude: Sequence[str] = ()) -> Callable[[str], bool]:
    """A stem filter keeping stems whose base name starts with an included and no excluded prefix."""
    include_re = re.compile("|".join(re.escape(p) for p in include))
    exclude_re = re.compile("|".join(re.escape(p) for p in exclude)) if exclude else None

    def keep(stem: str) -> bool:
        base = os.path.basename(stem)
        return include_re.match(base) is not None and (exclude_re is None or exclude_re.match(base) is None)

    return keep
