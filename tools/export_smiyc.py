#!/usr/bin/env python3
"""Write a model's anomaly maps for the Segment-Me-If-You-Can benchmark (road-anomaly-benchmark):
one HDF5 file per frame, in the layout and format of its ``Evaluation.save_output``.

    python tools/export_smiyc.py --config-file CFG --dataset smiyc_ra21_val --output DIR_OUTPUTS \\
        --method-name MyMethod [--split AnomalyTrack-validation] [--score rba] \\
        --opts MODEL.WEIGHTS path/to/model_final.pth

Files: ``DIR_OUTPUTS/anomaly_p/<method-name>/<split folder>/<frame id>.hdf5`` (dataset "value",
float16, gzip 9), read by ``python -m road_anomaly_benchmark metric ... <method-name> <split>``
with ``DIR_OUTPUTS`` pointing here, and accepted by the leaderboard as they are. The frame id is
the image file name without extension (and without Lost and Found's "_leftImg8bit"). The split
defaults to the dataset's ``smiyc_split`` metadata (the built-in SMIYC, Lost and Found and
Fishyscapes LAF sets have it); other datasets need ``--split``.

Works with any config and checkpoint of either branch and any registered score the model can
produce (``--score``; the model's first configured score without it). Frames already written
are skipped, so an interrupted run resumes; each file is written to a temporary name and renamed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from tqdm import tqdm  # noqa: E402

import rba_plugin  # noqa: E402,F401  (registers models and datasets)
from rba_plugin.config import load_config, set_anomaly_scores  # noqa: E402
from rba_plugin.data.dataset_mappers import build_test_mapper  # noqa: E402
from rba_plugin.evaluation.smiyc_files import is_written, smiyc_folder_name, write_anomaly_map  # noqa: E402
from rba_plugin.experiments.runs import load_run_model  # noqa: E402

logger = logging.getLogger("rba_plugin.export_smiyc")


def frame_id(record: Dict) -> str:
    """The benchmark's frame id of a dataset dict: the image file's stem, without Lost and Found's
    ``_leftImg8bit`` suffix."""
    stem = Path(record["file_name"]).stem
    return stem[: -len("_leftImg8bit")] if stem.endswith("_leftImg8bit") else stem


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", required=True, help="a registered dataset (e.g. smiyc_ra21_val)")
    parser.add_argument("--output", required=True, help="the benchmark's DIR_OUTPUTS folder")
    parser.add_argument("--method-name", required=True, help="the method's folder name in the benchmark")
    parser.add_argument("--split", default=None, help="benchmark split (default: the dataset's smiyc_split)")
    parser.add_argument("--score", default=None, help="registered anomaly score to write (default: the model's first)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def resolve_split(dataset: str, split: str = None) -> str:
    """The benchmark split: ``split`` or the dataset's ``smiyc_split`` metadata.

    Raises:
        ValueError: neither is set.
    """
    split = split or MetadataCatalog.get(dataset).get("smiyc_split", None)
    if not split:
        raise ValueError(f"dataset '{dataset}' has no 'smiyc_split' metadata: pass --split (e.g. AnomalyTrack-test)")
    return split


def export(cfg, dataset: str, output: str, method_name: str, split: str) -> Dict[str, int]:
    """Writes every frame of ``dataset`` not written yet; returns {"written": n, "skipped": m}."""
    folder = smiyc_folder_name(split)
    records = DatasetCatalog.get(dataset)
    todo: List[Dict] = [r for r in records if not is_written(output, method_name, folder, frame_id(r))]
    counts = {"written": 0, "skipped": len(records) - len(todo)}
    if not todo:
        return counts
    model = load_run_model(cfg)
    loader = build_detection_test_loader(dataset=todo, mapper=build_test_mapper(cfg))
    with torch.no_grad():
        for inputs in tqdm(loader, total=len(todo), desc=f"{method_name}: {dataset}", unit="frame"):
            for record, output_dict in zip(inputs, model(inputs)):
                write_anomaly_map(output, method_name, folder, frame_id(record), output_dict["ood_score"])
                counts["written"] += 1
    return counts


def main(argv: Sequence[str] = None) -> Dict[str, int]:
    args = parse_args(argv)
    setup_logger(name="rba_plugin")
    cfg = load_config(args.config_file, args.opts)
    if args.score is not None:
        cfg = set_anomaly_scores(cfg, [args.score])
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: exporting needs a trained model's checkpoint")
    split = resolve_split(args.dataset, args.split)
    counts = export(cfg, args.dataset, args.output, args.method_name, split)
    where = os.path.join(args.output, "anomaly_p", args.method_name, smiyc_folder_name(split))
    logger.info("%d frames written, %d already there -> %s", counts["written"], counts["skipped"], where)
    return counts


if __name__ == "__main__":
    main()
