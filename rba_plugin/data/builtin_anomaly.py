"""Built-in registrations of the public anomaly benchmarks under ``$DETECTRON2_DATASETS``.

Every path is a :class:`DatasetPath`, resolved at first use, so the environment variable may be
set after import. Layouts and preparation: datasets/README.md.
"""
from __future__ import annotations

from typing import Dict

from detectron2.data import DatasetCatalog

from .anomaly_datasets import DatasetPath, prefix_filter, register_anomaly_dataset

__all__ = ["register_all_anomaly_benchmarks", "register_lost_and_found", "lost_and_found_label_map"]

IDENTITY_MAP = {0: 0, 1: 1, 255: 255}

# Lost&Found labelIds that are "random non-hazards" (marker pole, posts, timber, wheel cap, wood).
LAF_NON_HAZARD_IDS = (31, 33, 34, 36, 37, 38, 39)
# Frames SMIYC drops for "LostAndFound-testNoKnown" (children and bicycles: known classes).
LAF_KNOWN_OBJECT_PREFIXES = (
    "15_Rechbergstr_Deckenpfronn",
    "01_Hanns_Klemm_Str_45_000006",
    "01_Hanns_Klemm_Str_45_000007",
    "10_Schlossberg_9_000004",
)


def lost_and_found_label_map(non_hazard: str = "anomaly") -> Dict[int, int]:
    """SMIYC's Lost&Found mapping of labelIds: 0 -> void, 1 (free road) -> 0, 2..200 -> 1.

    ``non_hazard`` decides how the random non-hazard objects count: "anomaly" (SMIYC, default),
    "inlier" (RbA's loaders) or "void" (RPL / PEBAL style).
    """
    target = {"anomaly": 1, "inlier": 0, "void": 255}
    if non_hazard not in target:
        raise ValueError(f"non_hazard must be one of {sorted(target)}, got {non_hazard!r}")
    mapping = {0: 255, 1: 0, **{i: 1 for i in range(2, 201)}}
    for i in LAF_NON_HAZARD_IDS:
        mapping[i] = target[non_hazard]
    return mapping


def register_lost_and_found(name: str, root: str = "lost_and_found", *, non_hazard: str = "anomaly",
                            no_known: bool = False, **extra_metadata) -> None:
    """Lost&Found test in the cityscapesScripts layout (SMIYC obstacle-track size filters);
    ``extra_metadata`` goes into the dataset's metadata (e.g. ``smiyc_split``)."""
    register_anomaly_dataset(
        name,
        DatasetPath(f"{root}/leftImg8bit/test"),
        DatasetPath(f"{root}/gtCoarse/test"),
        image_suffix="_leftImg8bit.png",
        label_suffix="_gtCoarse_labelIds.png",
        label_map=lost_and_found_label_map(non_hazard),
        stem_filter=prefix_filter(exclude=LAF_KNOWN_OBJECT_PREFIXES) if no_known else None,
        ood_track="obstacle",
        layout=f"  {root}/leftImg8bit/test/<scene>/<frame>_leftImg8bit.png\n"
        f"  {root}/gtCoarse/test/<scene>/<frame>_gtCoarse_labelIds.png",
        laf_non_hazard=non_hazard,
        **extra_metadata,
    )


def _drop_fishyscapes_index(stem: str) -> str:
    # Fishyscapes label names are "<4-digit index>_<Lost&Found frame id>".
    return stem[5:]


def register_all_anomaly_benchmarks() -> None:
    """Registers every public benchmark (skipping names already registered)."""
    specs = {
        "road_anomaly": dict(
            image_root=DatasetPath("RoadAnomaly_jpg/frames"),
            label_root=DatasetPath("RoadAnomaly_jpg/frames"),
            image_suffix=".jpg",
            label_suffix=".labels/labels_semantic.png",
            label_map={0: 0, 2: 1},
            layout="  RoadAnomaly_jpg/frames/<name>.jpg\n  RoadAnomaly_jpg/frames/<name>.labels/labels_semantic.png"
            "  (0 normal, 2 anomaly)",
        ),
        "fs_laf_val": dict(
            image_root=DatasetPath("fishyscapes/laf_images"),
            label_root=DatasetPath("fishyscapes/fishyscapes_lostandfound"),
            image_suffix="_leftImg8bit.png",
            label_suffix="_labels.png",
            label_map=IDENTITY_MAP,
            image_stem=_drop_fishyscapes_index,
            smiyc_split="FishyLAFAnomaly-val",
            layout="  fishyscapes/fishyscapes_lostandfound/<NNNN>_<laf frame>_labels.png\n"
            "  fishyscapes/laf_images/<laf frame>_leftImg8bit.png  (copied from Lost&Found)",
        ),
        "fs_static_val": dict(
            image_root=DatasetPath("fishyscapes/fs_static_val"),
            label_root=DatasetPath("fishyscapes/fs_static_val"),
            image_suffix="_rgb.png",
            label_suffix="_labels.png",
            label_map=IDENTITY_MAP,
            layout="  fishyscapes/fs_static_val/<NNNN>_<cityscapes frame>_labels.png\n"
            "  fishyscapes/fs_static_val/<NNNN>_<cityscapes frame>_rgb.png  (Cityscapes image + overlay)",
        ),
        "smiyc_ra21_val": dict(
            image_root=DatasetPath("SegmentMeIfYouCan/dataset_AnomalyTrack/images"),
            label_root=DatasetPath("SegmentMeIfYouCan/dataset_AnomalyTrack/labels_masks"),
            image_suffix=".jpg",
            label_suffix="_labels_semantic.png",
            label_map=IDENTITY_MAP,
            stem_filter=prefix_filter(include=("validation",)),
            smiyc_split="AnomalyTrack-validation",
            layout="  SegmentMeIfYouCan/dataset_AnomalyTrack/images/validation<NNNN>.jpg\n"
            "  SegmentMeIfYouCan/dataset_AnomalyTrack/labels_masks/validation<NNNN>_labels_semantic.png",
        ),
        "smiyc_ro21_val": dict(
            image_root=DatasetPath("SegmentMeIfYouCan/dataset_ObstacleTrack/images"),
            label_root=DatasetPath("SegmentMeIfYouCan/dataset_ObstacleTrack/labels_masks"),
            image_suffix=".webp",
            label_suffix="_labels_semantic.png",
            label_map=IDENTITY_MAP,
            stem_filter=prefix_filter(
                include=("validation",),
                exclude=("validation_19",) + tuple(f"validation_{i}" for i in range(21, 30)),
            ),
            ood_track="obstacle",
            smiyc_split="ObstacleTrack-validation",
            layout="  SegmentMeIfYouCan/dataset_ObstacleTrack/images/validation_<scene>_<N>.webp\n"
            "  SegmentMeIfYouCan/dataset_ObstacleTrack/labels_masks/validation_<scene>_<N>_labels_semantic.png",
        ),
    }
    registered = set(DatasetCatalog.list())
    for name, spec in specs.items():
        if name not in registered:
            register_anomaly_dataset(name, **spec)
    for name, kwargs in (
        ("lost_and_found_test", {"smiyc_split": "LostAndFound-test"}),
        ("lost_and_found_test_noknown", {"no_known": True, "smiyc_split": "LostAndFound-testNoKnown"}),
        ("lost_and_found_test_nonhazard_inlier", {"non_hazard": "inlier"}),
    ):
        if name not in registered:
            register_lost_and_found(name, **kwargs)
