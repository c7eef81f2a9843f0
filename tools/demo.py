#!/usr/bin/env python3
"""Run a trained model on images and save anomaly heat-maps, colour segmentations and score maps.

    python tools/demo.py --config-file CFG --input img.png|folder [more ...] --output DIR \\
        [--score rba] [--score-format npy png16] --opts MODEL.WEIGHTS path/to/model_final.pth
    python tools/demo.py --onnx model.onnx --input ... --output DIR [--score rba]   # an exported file

Per input image ``<stem>``, under DIR:
  <stem>_anomaly.png   anomaly heat-map (bright = anomalous) blended over the image
  <stem>_sem_seg.png   closed-set segmentation in the dataset's palette (Cityscapes by default)
  <stem>_panel.png     image | segmentation | heat-map side by side
  <stem>_score.npy     the raw H x W anomaly score, float32
  <stem>_score.png     the same as a 16-bit PNG over its range (text chunks score_min / score_max)

Grayscale, 16-bit, palette and RGBA images are converted to RGB. ``--score NAME`` shows any
registered score the model can produce (e.g. ``densehybrid`` on a DenseHybrid model,
``unknown_probability`` on VCA); without it, the model's first configured score.

``--onnx FILE`` / ``--torchscript FILE`` run a file written by ``tools/export_model.py`` instead
(onnxruntime / TorchScript; no config or checkpoint: the file carries the test-time resize, the
input format and the palette). ``--score`` then picks one of the exported scores.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Sequence

import rba_plugin  # noqa: F401  (registers models and datasets)
from detectron2.utils.logger import setup_logger
from rba_plugin.config import load_config
from rba_plugin.data.image_io import read_rgb_image
from rba_plugin.engine.predictor import AnomalyPredictor
from rba_plugin.export import ExportedPredictor
from rba_plugin.modeling.ood import available_scores
from rba_plugin.utils.prediction_files import SCORE_FORMATS, write_prediction_files
from tqdm import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", metavar="FILE", help="the model's config (not with --onnx / --torchscript)")
    exported = parser.add_mutually_exclusive_group()
    exported.add_argument("--onnx", metavar="FILE", help="run an exported ONNX file (onnxruntime) instead")
    exported.add_argument("--torchscript", metavar="FILE", help="run an exported TorchScript file instead")
    parser.add_argument("--input", required=True, nargs="+", help="image files and / or folders of images")
    parser.add_argument("--output", required=True, help="folder for the result files (created)")
    parser.add_argument("--score", default=None, help=f"anomaly score to show (one the model can produce): {', '.join(available_scores())}")
    parser.add_argument("--score-format", nargs="+", default=list(SCORE_FORMATS), choices=SCORE_FORMATS)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    args.exported = args.onnx or args.torchscript
    if args.exported and (args.config_file or args.opts):
        parser.error("--config-file / --opts are not used with an exported file: it carries what the demo needs")
    if not args.exported and not args.config_file:
        parser.error("one of --config-file, --onnx or --torchscript is required")
    return args


def list_images(inputs: Sequence[str]) -> List[Path]:
    """Files given directly plus the image files of given folders (sorted, not recursive)."""
    images: List[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {item} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        elif item.is_file():
            images.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    return images


def output_stems(images: Sequence[Path]) -> List[str]:
    """File stems, with the extension kept where two inputs share a stem (a.png, a.jpg)."""
    stems = [p.stem for p in images]
    return [f"{p.stem}_{p.suffix.lstrip('.')}" if stems.count(p.stem) > 1 else p.stem for p in images]


def main(argv: Sequence[str] = None) -> int:
    args = parse_args(argv)
    setup_logger(name="rba_plugin")
    logger = logging.getLogger("rba_plugin.demo")
    images = list_images(args.input)  # bad paths fail before the model is built
    if args.exported:
        predictor = ExportedPredictor(args.exported, score_name=args.score)
    else:
        predictor = AnomalyPredictor(load_config(args.config_file, args.opts), score_name=args.score)
    os.makedirs(args.output, exist_ok=True)
    class_dim = 0
    score_names = set()
    unreadable = []
    for path, stem in zip(tqdm(images, desc="demo", unit="image"), output_stems(images)):
        try:
            image = read_rgb_image(str(path))
        except ValueError as error:  # one bad frame does not cost the others; named at the end
            logger.error("%s", error)
            unreadable.append(str(error))
            continue
        output = predictor(image, file_name=str(path))
        class_ids = output["sem_seg"].argmax(dim=class_dim).cpu().numpy()
        write_prediction_files(args.output, stem, image, class_ids, output["anomaly"], predictor.palette,
                               score_formats=args.score_format)
        score_names.add(output["anomaly_name"])
    logger.info("%d images -> %s (anomaly score: %s)", len(images) - len(unreadable), args.output,
                ", ".join(sorted(score_names)))
    if unreadable:
        raise ValueError(f"{len(unreadable)} of {len(images)} images could not be read (the others were written):\n  "
                         + "\n  ".join(unreadable))
    return 0


if __name__ == "__main__":
    sys.exit(main())
