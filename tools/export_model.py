#!/usr/bin/env python3
"""Export a trained model to ONNX or TorchScript: one graph from a raw image to the class scores
and the chosen anomaly score maps.

    python tools/export_model.py --config-file CFG --format onnx|torchscript --output FILE \\
        [--score NAME ...] [--sample-size H W] [--opset 17] [KEY VALUE ...]   # e.g. MODEL.WEIGHTS w.pth

Graph inputs: ``image`` (1 x 3 x H x W float32, 0..255, not normalised, channels in the config's
INPUT.FORMAT, any H and W) and ``output_size`` (int64 [height, width] of the output maps).
Outputs: ``sem_seg`` (C x height x width) and ``score_<name>`` (height x width) per score, in
the order given (default: the config's MODEL.OOD.SCORES, else the model's own score).

The model is traced at --sample-size; the written file is checked against the PyTorch model at
that size and at a second one before it is moved to FILE. A model part that cannot be exported
(e.g. RAML's scipy region separation) is refused by name and nothing is written. Run the file
with ``rba_plugin.export.ExportedPredictor`` or ``tools/demo.py --onnx FILE`` (``--torchscript``).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import List, Sequence, Tuple

import rba_plugin  # noqa: F401  (registers models and datasets)
import torch
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from rba_plugin.config import load_config, set_anomaly_scores
from rba_plugin.engine import SafeCheckpointer
from rba_plugin.export import DEFAULT_OPSET, EXPORT_FORMATS, ExportError, export_model
from rba_plugin.modeling.ood import available_scores

# A config key (MODEL.WEIGHTS, INPUT.MIN_SIZE_TEST, ...); score names are lower case.
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*\.")


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def parse_args(argv: Sequence[str] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--output", required=True, metavar="FILE", help="the exported file (written atomically)")
    parser.add_argument("--score", nargs="+", default=None, metavar="NAME",
                        help=f"anomaly scores to export, in order (registered: {', '.join(available_scores())})")
    parser.add_argument("--sample-size", nargs=2, type=int, default=(256, 512), metavar=("H", "W"),
                        help="input size the model is traced at (the file works at any size)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 16)")
    parser.add_argument("--tolerance", type=_non_negative_float, default=1e-3,
                        help="largest absolute difference to the PyTorch model accepted by the check")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    # "--score rba MODEL.WEIGHTS w.pth": argparse gives the trailing overrides to --score.
    if args.score:
        split = next((i for i, item in enumerate(args.score) if _CONFIG_KEY.match(item)), len(args.score))
        args.opts = args.score[split:] + list(args.opts)
        args.score = args.score[:split] or None
    return args


def build_for_export(config_file: str, opts: List[str], scores: Sequence[str] = None) -> Tuple[object, torch.nn.Module]:
    """(config, model in eval mode with MODEL.WEIGHTS loaded and ``scores`` configured).

    Raises:
        ValueError: empty MODEL.WEIGHTS, a score the model cannot produce (listing those it can).
    """
    cfg = load_config(config_file, opts)
    if scores:
        cfg = set_anomaly_scores(cfg, scores)
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: pass the trained checkpoint to export (MODEL.WEIGHTS path.pth)")
    model = build_model(cfg).eval()
    SafeCheckpointer(cfg, model, allow_new_modules=False).load(cfg.MODEL.WEIGHTS)
    return cfg, model


def main(argv: Sequence[str] = None) -> int:
    args = parse_args(argv)
    setup_logger(name="rba_plugin")
    logger = logging.getLogger("rba_plugin.export_model")
    cfg, model = build_for_export(args.config_file, args.opts, args.score)
    try:
        meta = export_model(cfg, model, args.output, args.format, sample_size=tuple(args.sample_size),
                            opset=args.opset, tolerance=args.tolerance)
    except ExportError as error:
        logger.error("%s", error)
        return 1
    worst = max(err for size in meta["verified_max_abs_error"].values() for err in size.values())
    logger.info("%s -> %s (%s; outputs %s; checked at %s, max abs difference to PyTorch %.2g)",
                args.config_file, args.output, args.format, ", ".join(meta["outputs"]),
                ", ".join("x".join(map(str, s)) for s in meta["verified_sizes"]), worst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
