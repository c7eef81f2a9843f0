#!/usr/bin/env python3
"""Why RbA does or does not work on a Mask2Former: analyses of its object queries (RbA paper
Sec. 3.2 / 3.5, Fig. 3, 4, 8, 9) on any registered dataset.

    python tools/analyze_queries.py specialization --config-file CFG --dataset D [D ...] --output DIR \\
        [--threshold 0.98] MODEL.WEIGHTS model_final.pth
    python tools/analyze_queries.py masking --config-file CFG --dataset D --output DIR \\
        [--specialization DIR/specialization.json | --specialization-dataset D2 ...] MODEL.WEIGHTS ...
    python tools/analyze_queries.py modes --config-file CFG --dataset D --output DIR [--clusters 4] \\
        [--boundary-width 3] [--samples-per-image 2000] [--scores rba msp ...] MODEL.WEIGHTS ...
    python tools/analyze_queries.py votes --config-file CFG --dataset D --output DIR \\
        --image 0|FILE_NAME --pixels Y,X [Y,X ...] MODEL.WEIGHTS ...

Writes, under DIR:
  specialization.{json,md,png}   per query and class, images with softmax(class) >= threshold; the
                                 specialised query of each class (heat-map: queries x classes)
  query_masking.{json,md,png}    per-class IoU unmasked / soft / hard masking (and the
                                 specialization files it used, unless read with --specialization)
  logit_modes.{json,md}          k-means modes of the sorted class scores: per cluster its pixels'
                                 anomaly / inlier / boundary shares and mean anomaly scores
  logit_modes_histograms.png     largest and second-largest class score per cluster
  logit_modes_map_<i>_<stem>.png image beside its pixels coloured by cluster
  pixel_votes.{json,md,png}      sigmoid(mask) x softmax(class) of every query at each pixel

Trailing ``KEY VALUE`` pairs override the config (MODEL.WEIGHTS is required). Every dataset goes
through the plugin's test loader (its test-time resize); ``--max-images N`` reads the first N only.
One process; ``MODEL.DEVICE`` picks the device. See ``rba_plugin/analysis`` for the definitions.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from detectron2.utils.logger import setup_logger  # noqa: E402

import rba_plugin  # noqa: E402,F401  (registers models and datasets)
from rba_plugin import analysis  # noqa: E402
from rba_plugin.config import load_config  # noqa: E402
from rba_plugin.data.dataset_mappers import build_test_mapper  # noqa: E402
from rba_plugin.data.image_io import image_size  # noqa: E402

logger = logging.getLogger("rba_plugin.analyze_queries")

_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*\.")
_LIST_OPTIONS = ("dataset", "specialization_dataset", "scores", "pixels")


def _common(parser: argparse.ArgumentParser, several_datasets: bool = False) -> None:
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument("--dataset", required=True, nargs="+" if several_datasets else None, metavar="NAME",
                        help="registered dataset" + ("s (counts pooled over them)" if several_datasets else ""))
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results (created)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="only the first N images")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ... (MODEL.WEIGHTS ...)")


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")

    spec = commands.add_parser("specialization", help="which class each query predicts confidently (Fig. 8)")
    spec.add_argument("--threshold", default=0.98, help="confidence threshold in (0, 1] (default 0.98)")
    _common(spec, several_datasets=True)

    masking = commands.add_parser("masking", help="per-class IoU with hard / soft query masking (Fig. 3, 9)")
    source = masking.add_mutually_exclusive_group()
    source.add_argument("--specialization", metavar="JSON", help="specialization.json of an earlier run")
    source.add_argument("--specialization-dataset", nargs="+", metavar="NAME",
                        help="datasets to find the specialised queries on (default: --dataset)")
    masking.add_argument("--threshold", default=0.98, help="confidence threshold of the specialisation (default 0.98)")
    _common(masking)

    modes = commands.add_parser("modes", help="k-means modes of the per-pixel class scores (Fig. 4)")
    modes.add_argument("--clusters", type=int, default=4, help="k of k-means (default 4)")
    modes.add_argument("--seed", type=int, default=0, help="seed of the pixel sample and of k-means (default 0)")
    modes.add_argument("--samples-per-image", type=int, default=2000, help="pixels sampled per image for k-means")
    modes.add_argument("--boundary-width", type=int, default=3,
                       help="inlier pixels within this many pixels of another class count as boundary (0: none)")
    modes.add_argument("--map-images", type=int, default=4, help="cluster maps drawn for the first N images")
    modes.add_argument("--scores", nargs="+", metavar="NAME",
                       help="registered anomaly scores to average per cluster "
                            "(default: every one the model can produce)")
    _common(modes)

    votes = commands.add_parser("votes", help="each query's votes at chosen pixels")
    votes.add_argument("--image", required=True, help="image index in the dataset or its file name")
    votes.add_argument("--pixels", required=True, nargs="+", metavar="Y,X", help="pixels as row,column")
    _common(votes)

    args = parser.parse_args(argv)
    # "--dataset a MODEL.WEIGHTS w.pth": argparse gives the trailing overrides to the list option.
    for name in _LIST_OPTIONS:
        values = getattr(args, name, None)
        if isinstance(values, list):
            split = next((i for i, item in enumerate(values) if _CONFIG_KEY.match(item)), len(values))
            args.opts = values[split:] + list(args.opts)
            setattr(args, name, values[:split] or None)
    if getattr(args, "dataset", None) is None:
        parser.error("--dataset needs a dataset name")
    return args


def _datasets(args) -> List[str]:
    return list(args.dataset) if isinstance(args.dataset, list) else [args.dataset]


def _specialization(args, cfg, model, datasets: Sequence[str]) -> analysis.SpecializationResult:
    names = analysis.class_names(datasets[0], model.sem_seg_head.num_classes)
    batches = (batch for d in datasets for batch in analysis.test_batches(cfg, d, args.max_images))
    return analysis.run_specialization(model, batches, args.threshold, names, datasets)


def run(args) -> Dict[str, str]:
    """Runs ``args.analysis``; returns {kind: written path}. Everything a user can get wrong
    (threshold, dataset names, settings, image and pixels, the architecture) is checked before
    the model is built."""
    if hasattr(args, "threshold"):
        args.threshold = analysis.check_threshold(args.threshold)
    for name in _datasets(args) + list(getattr(args, "specialization_dataset", None) or []):
        analysis.check_dataset(name)
    cfg = load_config(args.config_file, args.opts)
    analysis.check_query_architecture(cfg)
    return {"specialization": _run_specialization, "masking": _run_masking,
            "modes": _run_modes, "votes": _run_votes}[args.analysis](args, cfg)


def _run_specialization(args, cfg) -> Dict[str, str]:
    model = analysis.load_query_model(cfg)
    return analysis.write_specialization(_specialization(args, cfg, model, _datasets(args)), args.output)


def _run_masking(args, cfg) -> Dict[str, str]:
    model = analysis.load_query_model(cfg)
    num_classes = model.sem_seg_head.num_classes
    paths = {}
    if args.specialization:
        with open(args.specialization) as f:
            spec = analysis.SpecializationResult.from_json(json.load(f))
        if spec.counts.shape[1] != num_classes:
            raise ValueError(
                f"{args.specialization} counts {spec.counts.shape[1]} classes, the model has {num_classes}"
            )
        source = args.specialization
    else:
        spec_datasets = args.specialization_dataset or [args.dataset]
        spec = _specialization(args, cfg, model, spec_datasets)
        paths.update({f"specialization_{k}": v for k, v in analysis.write_specialization(spec, args.output).items()})
        source = f"threshold {spec.threshold:g} on {', '.join(spec_datasets)}"
    result = analysis.run_query_masking(
        model, analysis.test_batches(cfg, args.dataset, args.max_images), spec.specialized,
        analysis.class_names(args.dataset, num_classes), analysis.ignore_label(args.dataset),
        dataset=args.dataset, specialization_source=source,
    )
    paths.update(analysis.write_masking(result, args.output))
    return paths


def _run_modes(args, cfg) -> Dict[str, str]:
    analysis.check_mode_settings(args.clusters, args.samples_per_image, args.boundary_width)
    model = analysis.load_query_model(cfg)
    analysis.set_model_scores(model, args.scores)
    result, maps = analysis.run_logit_modes(
        model, lambda: analysis.test_batches(cfg, args.dataset, args.max_images),
        n_clusters=args.clusters, seed=args.seed, samples_per_image=args.samples_per_image,
        boundary_width=args.boundary_width, ignore_label=analysis.ignore_label(args.dataset),
        map_images=args.map_images, dataset=args.dataset,
    )
    return analysis.write_logit_modes(result, maps, args.output)


def _run_votes(args, cfg) -> Dict[str, str]:
    if args.max_images is not None:
        raise ValueError("--max-images does not apply to votes, which reads the one image given by --image")
    pixels = [analysis.parse_pixel(p) for p in args.pixels]
    _, record = analysis.find_record(analysis.dataset_records(args.dataset), args.image)
    height, width = record.get("height"), record.get("width")
    if height is None or width is None:  # e.g. Detectron2's load_sem_seg records carry no size
        height, width = image_size(record["file_name"])
    analysis.check_pixels(pixels, height, width, record["file_name"])
    model = analysis.load_query_model(cfg)
    batched_input = build_test_mapper(cfg)(record)
    names = analysis.class_names(args.dataset, model.sem_seg_head.num_classes)
    return analysis.write_pixel_votes(analysis.run_pixel_votes(model, batched_input, pixels, names), args.output)


def main(argv: Sequence[str] = None) -> Dict[str, str]:
    args = parse_args(argv)
    setup_logger(name="rba_plugin")
    paths = run(args)
    logger.info("%s: %d files -> %s", args.analysis, len(paths), args.output)
    return paths


if __name__ == "__main__":
    main()
