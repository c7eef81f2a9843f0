"""Writing each analysis's results: JSON (NaN as null), a Markdown table and its figures, into
one output folder, every file atomically. Each writer returns {kind: path}."""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np

from ..data.image_io import read_rgb_image
from ..utils.atomic_write import write_text_atomically
from ..utils.tables import write_json
from .masking import MaskingResult
from .modes import LogitModesResult
from .plots import plot_cluster_map, plot_masking_iou, plot_pixel_votes, plot_specialization, plot_vote_histograms
from .specialization import SpecializationResult
from .votes import PixelVotes

__all__ = ["write_specialization", "write_masking", "write_logit_modes", "write_pixel_votes"]


def _write_tables(folder: str, stem: str, data: Dict, markdown: str) -> Dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    paths = {"json": os.path.join(folder, f"{stem}.json"), "markdown": os.path.join(folder, f"{stem}.md")}
    write_json(paths["json"], data)
    write_text_atomically(paths["markdown"], markdown + "\n")
    return paths


def write_specialization(result: SpecializationResult, folder: str) -> Dict[str, str]:
    """``specialization.json`` / ``.md`` / ``.png`` (queries x classes heat-map)."""
    paths = _write_tables(folder, "specialization", result.to_json(), result.to_markdown())
    paths["png"] = plot_specialization(result.counts, result.class_names, result.specialized, result.threshold,
                                       result.num_images, os.path.join(folder, "specialization.png"))
    return paths


def write_masking(result: MaskingResult, folder: str) -> Dict[str, str]:
    """``query_masking.json`` / ``.md`` / ``.png`` (per-class IoU bars per variant)."""
    paths = _write_tables(folder, "query_masking", result.to_json(), result.to_markdown())
    paths["png"] = plot_masking_iou(result.iou, result.class_names, os.path.join(folder, "query_masking.png"))
    return paths


def write_logit_modes(result: LogitModesResult, maps: List[Tuple[Dict, np.ndarray]], folder: str) -> Dict[str, str]:
    """``logit_modes.json`` / ``.md``, ``logit_modes_histograms.png`` and one
    ``logit_modes_map_<index>_<image stem>.png`` per cluster map."""
    paths = _write_tables(folder, "logit_modes", result.to_json(), result.to_markdown())
    names = [f"{n}" for n in result.modes.names]
    paths["histograms"] = plot_vote_histograms(result.bin_edges, result.largest, result.second_largest, names,
                                               os.path.join(folder, "logit_modes_histograms.png"))
    for index, (batched_input, cluster_map) in enumerate(maps):
        file_name = batched_input["file_name"]
        stem = os.path.splitext(os.path.basename(file_name))[0]
        image = read_rgb_image(file_name)
        if image.shape[:2] != cluster_map.shape:  # the map is at the output size, which is the image as read
            raise ValueError(f"{file_name}: image {image.shape[:2]} and cluster map {cluster_map.shape} differ in size")
        paths[f"map_{index}"] = plot_cluster_map(image, cluster_map, names,
                                                 os.path.join(folder, f"logit_modes_map_{index:03d}_{stem}.png"),
                                                 title=os.path.basename(file_name))
    return paths


def write_pixel_votes(result: PixelVotes, folder: str) -> Dict[str, str]:
    """``pixel_votes.json`` / ``.md`` / ``.png`` (stacked votes per pixel)."""
    paths = _write_tables(folder, "pixel_votes", result.to_json(), result.to_markdown())
    paths["png"] = plot_pixel_votes(result.votes, result.class_scores, result.pixels, result.class_names,
                                    os.path.join(folder, "pixel_votes.png"))
    return paths
