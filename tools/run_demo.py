#!/usr/bin/env python3
"""The main job on the built-in synthetic benchmark (what `make demo` runs):

1. generate the synthetic street scenes (cached under $DETECTRON2_DATASETS/synthcity);
2. train a small Mask2Former (ResNet-18, one decoder layer) on the closed set;
3. fine-tune it with RbA's outlier supervision (class head + mask MLP only, pasted outliers);
4. evaluate MSP, MaxLogit, Energy and RbA before and after fine-tuning on synthcity_anomaly
   with the OOD evaluator, and closed-set mIoU on synthcity_val;
5. print one table, and write it (Markdown, JSON), anomaly-map overlays of a few images and the
   evaluator's PR / ROC curves to the output directory.

Steps whose result is already in the output directory are not redone (training resumes from
its last checkpoint); --force starts over.

    python tools/run_demo.py [--output-dir output/demo] [--preset default|quick] [--force]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

import rba_plugin  # noqa: F401  (registers models and datasets)

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from rba_plugin.config import load_config
from rba_plugin.data import ensure_synthcity, load_anomaly_label
from rba_plugin.data.image_io import read_rgb_image
from rba_plugin.engine import Trainer, build_evaluator, evaluate_with_progress
from rba_plugin.evaluation import OODEvaluator
from rba_plugin.experiments.runs import load_run_model, train_run
from rba_plugin.utils.tables import markdown_table, write_json
from rba_plugin.utils.atomic_write import write_text_atomically
from rba_plugin.utils.visualization import anomaly_heatmap, labelled_panels, overlay_heatmap, save_figure

REPO_ROOT = Path(__file__).resolve().parents[1]
CLOSED_SET_CONFIG = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl.yaml"
FINETUNE_CONFIG = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_rba_finetune.yaml"
SCORES = ["msp", "maxlogit", "energy", "rba"]
METRICS = ["AP", "FPR95", "AUROC", "sIoU", "PPV", "mean_F1"]
# Iterations of closed-set training and of fine-tuning.
PRESETS = {"default": (1600, 1000), "quick": (30, 10)}
MIOU_TOLERANCE = 0.5  # points of mIoU fine-tuning may cost (the demo's claim)

logger = logging.getLogger("rba_plugin.demo")


def build_cfg(config_file: Path, output_dir: Path, max_iter: int, opts: List[str]):
    """The stage's config: the file, the user's ``opts``, then the demo's own settings (its output
    folder and schedule, no evaluation inside training, the compared scores)."""
    return load_config(str(config_file), list(opts) + [
        "OUTPUT_DIR", str(output_dir),
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", str(max(1, max_iter // 3)),
        "TEST.EVAL_PERIOD", "0",
        "DATASETS.TEST", "()",  # the demo evaluates both models itself (the trainer would after its last step)
        "MODEL.OOD.SCORES", repr(SCORES),
    ])


def train(cfg) -> Path:
    """Train to cfg.SOLVER.MAX_ITER, resuming from the output directory's last checkpoint."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)  # as detectron2's default_setup does
    train_run(cfg, resume=True)
    return Path(cfg.OUTPUT_DIR) / "model_final.pth"


def evaluate(cfg, weights: Path, stage: str, output_dir: Path):
    """(Anomaly metrics per score on synthcity_anomaly with mIoU on synthcity_val, the model)."""
    model = load_run_model(cfg, str(weights))
    ood_dir = output_dir / stage
    ood = evaluate_with_progress(
        model,
        Trainer.build_test_loader(cfg, "synthcity_anomaly"),
        OODEvaluator(cfg, "synthcity_anomaly", str(ood_dir)),
        description=f"{stage}: synthcity_anomaly",
    )["synthcity_anomaly"]
    closed = evaluate_with_progress(
        model,
        Trainer.build_test_loader(cfg, "synthcity_val"),
        build_evaluator(cfg, "synthcity_val", str(ood_dir)),
        description=f"{stage}: synthcity_val",
    )["sem_seg"]
    table = {}
    for score in SCORES:  # the first score is reported under the plain metric names
        row = {metric: float(ood[metric if score == SCORES[0] else f"{score}/{metric}"]) for metric in METRICS}
        row["mIoU"] = float(closed["mIoU"])
        table[score] = row
    return table, model


def write_overlays(models: Dict[str, torch.nn.Module], output_dir: Path, count: int = 4) -> None:
    """One labelled figure per image of ``synthcity_anomaly`` (the first ``count``): the image,
    its ground truth, and each model's RbA map over the image on one shared colour scale."""
    records = DatasetCatalog.get("synthcity_anomaly")[:count]
    overlay_dir = output_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    for record in records:
        image = read_rgb_image(record["file_name"])
        label = load_anomaly_label(record)
        truth = np.zeros_like(image)
        truth[label == 1] = (255, 60, 60)
        truth[label == 255] = (90, 90, 90)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        maps = {}
        for stage, model in models.items():
            with torch.no_grad():
                out = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])[0]
            maps[f"RbA score, {stage} model"] = out["ood_scores"]["rba"].cpu().numpy()
        low = min(float(m.min()) for m in maps.values())
        high = max(float(m.max()) for m in maps.values())
        panels = {"image": image, "ground truth: red anomaly, grey void": truth}
        panels.update({title: overlay_heatmap(image, anomaly_heatmap(m, low, high)) for title, m in maps.items()})
        save_figure(labelled_panels(panels, (low, high), "RbA score (bright = more anomalous)"),
                    str(overlay_dir / f"{Path(record['file_name']).stem}.png"))


def demo_claims(results: Dict[str, Dict[str, Dict[str, float]]]) -> List[Tuple[str, bool]]:
    """The README's claims about a demo run, each with whether this run's table bears it out."""
    closed, tuned = results["closed-set"], results["RbA fine-tuned"]
    return [
        ("fine-tuning raises RbA's AP", tuned["rba"]["AP"] > closed["rba"]["AP"]),
        ("fine-tuned RbA's AP is above the closed-set model's MSP AP", tuned["rba"]["AP"] > closed["msp"]["AP"]),
        ("fine-tuning moves closed-set mIoU by at most 0.5 points",
         abs(tuned["rba"]["mIoU"] - closed["rba"]["mIoU"]) <= MIOU_TOLERANCE),
    ]


def format_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    rows = [[stage, score] + [row[m] for m in METRICS + ["mIoU"]]
            for stage, table in results.items() for score, row in table.items()]
    return markdown_table(["model", "score"] + METRICS + ["mIoU"], rows)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments; ``closed_iters`` / ``finetune_iters`` come resolved (option, else preset)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--force", action="store_true", help="discard earlier results in --output-dir")
    parser.add_argument("--closed-iters", type=_positive_int, help="closed-set training iterations (overrides the preset)")
    parser.add_argument("--finetune-iters", type=_positive_int, help="fine-tuning iterations (overrides the preset)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... for both stages")
    args = parser.parse_args(argv)
    preset_closed, preset_finetune = PRESETS[args.preset]
    args.closed_iters = args.closed_iters or preset_closed
    args.finetune_iters = args.finetune_iters or preset_finetune
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    if args.force and output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(output=str(output_dir / "log.txt"), name="detectron2")
    setup_logger(output=str(output_dir / "log.txt"), name="rba_plugin")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.time()

    root = MetadataCatalog.get("synthcity_train").get("image_root")
    logger.info("Synthetic benchmark: %s", ensure_synthcity(os.fspath(root)))

    closed_cfg = build_cfg(CLOSED_SET_CONFIG, output_dir / "closed_set", args.closed_iters, args.opts)
    closed_weights = train(closed_cfg)
    finetune_cfg = build_cfg(
        FINETUNE_CONFIG, output_dir / "rba_finetune", args.finetune_iters, ["MODEL.WEIGHTS", str(closed_weights)] + args.opts
    )
    finetuned_weights = train(finetune_cfg)

    results, models = {}, {}
    for stage, cfg, weights in (("closed-set", closed_cfg, closed_weights), ("RbA fine-tuned", finetune_cfg, finetuned_weights)):
        results[stage], models[stage] = evaluate(cfg, weights, stage.replace(" ", "_"), output_dir)
    write_overlays(models, output_dir)

    table = format_table(results)
    write_text_atomically(str(output_dir / "results.md"), table + "\n")
    claims = demo_claims(results)
    schedule = {"preset": args.preset, "closed_iters": args.closed_iters, "finetune_iters": args.finetune_iters}
    write_json(str(output_dir / "results.json"),
               {**results, "schedule": schedule, "claims": {text: held for text, held in claims}})
    print("\n" + table + "\n")
    print(f"AP, FPR95, AUROC, sIoU, PPV, mean F1 on synthcity_anomaly; mIoU on synthcity_val (percent).")
    default_closed, default_finetune = PRESETS["default"]
    print(f"The README's claims in this run ({args.closed_iters} + {args.finetune_iters} iterations; the claims are "
          f"made for the default {default_closed} + {default_finetune}):")
    for text, held in claims:
        print(f"  [{'held' if held else 'NOT HELD'}] {text}")
    print(f"Results, overlays and PR/ROC curves: {output_dir}  ({(time.time() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
