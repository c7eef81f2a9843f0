#!/usr/bin/env python3
"""RAML's incremental few-shot settings (16+1, 16+3) on the synthetic benchmark, end to end.

For each setting: a closed-set model with the novel classes void in training, its MCA
fine-tuning, the RAML metric head on the MCA model (three tools/train_net.py-style runs), then
novel-class prototypes from L shots and the incremental evaluation (mIoU old / novel / harmonic
mean) with rba_plugin.experiments.incremental.run_incremental_setting.

    python tools/raml_incremental.py --output output/raml_incremental
    python tools/raml_incremental.py --settings 16+1 --base-iters 300 --mca-iters 200 --head-iters 100 --shots 5

Novel classes that the shot pool does not contain (the synthetic scenes have no truck) are left
out of the setting with a message. Shots come from the training set (--shot-dataset), the
evaluation from --test-dataset; images are used at their stored resolution.
Results: <output>/incremental.json and incremental.md (written through temporary files).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402

import rba_plugin  # noqa: E402,F401  (registers models and datasets)
from rba_plugin.data.image_io import read_image, read_label  # noqa: E402
from rba_plugin.experiments.incremental import NOVEL_SETTINGS, run_incremental_setting  # noqa: E402
from rba_plugin.experiments.runs import isolated_logging, setup_run, train_run  # noqa: E402
from rba_plugin.utils.atomic_write import write_text_atomically  # noqa: E402
from rba_plugin.utils.tables import markdown_table, write_json  # noqa: E402

CONFIG_DIR = REPO_ROOT / "configs" / "synthcity" / "pixel"
# (stage name, config file, parent stage): the 16+3 files, their held-out classes set per setting.
STAGES = (
    ("closed_set", "closed_set_16+3.yaml", None),
    ("mca", "raml_mca_16+3.yaml", "closed_set"),
    ("raml_head", "raml_fewshot_16+3.yaml", "mca"),
)


def load_inputs(dataset: str, image_format: str, limit: Optional[int]) -> List[dict]:
    """Model input dicts {"image": 3 x H x W uint8, "sem_seg": H x W int64, "height", "width",
    "file_name"} of the first ``limit`` frames of a semantic-segmentation dataset."""
    inputs = []
    for record in DatasetCatalog.get(dataset)[:limit]:
        if "sem_seg_file_name" not in record:
            raise ValueError(f"dataset '{dataset}': {record['file_name']} has no 'sem_seg_file_name'")
        image = read_image(record["file_name"], format=image_format)
        label = read_label(record["sem_seg_file_name"]).astype(np.int64)  # indices, as training reads them
        inputs.append({
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "sem_seg": torch.as_tensor(label),
            "height": image.shape[0],
            "width": image.shape[1],
            "file_name": record["file_name"],
        })
    if not inputs:
        raise ValueError(f"dataset '{dataset}' is empty")
    return inputs


def present_novel_classes(pool: Sequence[dict], novel_ids: Sequence[int], shots: int, min_pixels: int) -> List[int]:
    """The novel classes with at least ``shots`` images of ``min_pixels`` pixels in the pool."""
    return [c for c in novel_ids if sum(int((x["sem_seg"] == c).sum()) >= min_pixels for x in pool) >= shots]


def run_setting(setting: str, args: argparse.Namespace, log=print) -> Dict[str, object]:
    """Trains the three stages of ``setting`` and evaluates; returns its result record."""
    novel = NOVEL_SETTINGS[setting]
    held_out = ["MODEL.PIXEL_OOD.HELD_OUT_CLASSES", str(list(novel))]
    iters = {"closed_set": args.base_iters, "mca": args.mca_iters, "raml_head": args.head_iters}
    root = os.path.join(args.output, setting)
    cfg = model = None
    for stage, config, parent in STAGES:
        opts = list(args.opts) + held_out + ["OUTPUT_DIR", os.path.join(root, stage), "DATASETS.TEST", "()"]
        if iters[stage] is not None:
            opts += ["SOLVER.MAX_ITER", str(iters[stage])]
        if parent is not None:
            opts += ["MODEL.WEIGHTS", os.path.join(root, parent, "model_final.pth")]
        log(f"[raml-incremental] {setting}: training {stage} ({config})")
        with isolated_logging():
            cfg = setup_run(str(CONFIG_DIR / config), opts)
            model = train_run(cfg)
    model.eval()
    shot_pool = load_inputs(args.shot_dataset, cfg.INPUT.FORMAT, args.max_shot_images)
    test_inputs = load_inputs(args.test_dataset, cfg.INPUT.FORMAT, args.max_test_images)
    novel_used = present_novel_classes(shot_pool, novel, args.shots, args.min_shot_pixels)
    missing = [c for c in novel if c not in novel_used]
    if missing:
        log(f"[raml-incremental] {setting}: classes {missing} have fewer than {args.shots} shots in "
            f"'{args.shot_dataset}' and are left out")
    if not novel_used:
        raise SystemExit(f"{setting}: none of the novel classes {list(novel)} has {args.shots} shots in '{args.shot_dataset}'")
    metrics = run_incremental_setting(cfg, model, shot_pool, test_inputs, setting, num_shots=args.shots,
                                      seed=args.seed, novel_ids=novel_used)
    log(f"[raml-incremental] {setting}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    return {"setting": setting, "novel_classes": novel_used, "left_out": missing, "shots": args.shots,
            "metrics": metrics}


def write_results(records: Sequence[dict], out_dir: str) -> None:
    """incremental.md and incremental.json (NaN as null) in ``out_dir``, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    rows = [[r["setting"], str(r["novel_classes"]), r["shots"], r["metrics"]["mIoU_old"], r["metrics"]["mIoU_novel"],
             r["metrics"]["mIoU_harmonic"]] for r in records]
    table = markdown_table(["setting", "novel classes", "shots", "mIoU old", "mIoU novel", "harmonic"], rows)
    write_text_atomically(os.path.join(out_dir, "incremental.md"), "# RAML incremental few-shot\n\n" + table + "\n")
    write_json(os.path.join(out_dir, "incremental.json"), list(records))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="output/raml_incremental")
    parser.add_argument("--settings", nargs="+", default=["16+1", "16+3"], choices=sorted(NOVEL_SETTINGS))
    parser.add_argument("--base-iters", type=int, default=None, help="closed-set iterations (default: the config's)")
    parser.add_argument("--mca-iters", type=int, default=None)
    parser.add_argument("--head-iters", type=int, default=None)
    parser.add_argument("--shots", type=int, default=5, help="L, annotated images per novel class")
    parser.add_argument("--min-shot-pixels", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shot-dataset", default="synthcity_train")
    parser.add_argument("--test-dataset", default="synthcity_val")
    parser.add_argument("--max-shot-images", type=int, default=100)
    parser.add_argument("--max-test-images", type=int, default=None)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for every run")
    return parser.parse_args(argv)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    records = [run_setting(setting, args) for setting in args.settings]
    write_results(records, args.output)
    for r in records:
        m = r["metrics"]
        print(f"{r['setting']}: mIoU old {m['mIoU_old']:.2f}  novel {m['mIoU_novel']:.2f}  harmonic {m['mIoU_harmonic']:.2f}")
    return records


if __name__ == "__main__":
    main()
