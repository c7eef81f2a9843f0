"""Mask2Former on the CPU: Swin-B 1dl inference and one training step of the synthetic config.

Line 1: inference time per image of RbA's Swin-B single-decoder-layer model (random weights,
built from configs/cityscapes/mask2former/swin/maskformer2_swin_base_IN21k_384_bs16_90k_1dl.yaml) on a
512x1024 image. Line 2: one training iteration (forward, backward, optimizer step) of the small
synthetic config at batch 2 on random street-like crops of the configured crop size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

import rba_plugin  # noqa: F401
from rba_plugin.config import load_config
from rba_plugin.engine import build_optimizer

from .common import time_and_peak

REPO_ROOT = Path(__file__).resolve().parents[2]
SWIN_B_1DL = REPO_ROOT / "configs/cityscapes/mask2former/swin/maskformer2_swin_base_IN21k_384_bs16_90k_1dl.yaml"
SYNTHETIC = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--train-config", default=str(SYNTHETIC))
    parser.add_argument("--batch", type=int, default=2)


def _random_scene(rng: np.random.Generator, h: int, w: int, num_classes: int):
    """A blocky random label map (a few classes in horizontal bands and boxes) and a noisy image."""
    label = np.zeros((h, w), np.int64)
    bands = np.sort(rng.choice(np.arange(1, h), size=3, replace=False))
    for i, (top, bottom) in enumerate(zip([0, *bands], [*bands, h])):
        label[top:bottom] = rng.integers(0, num_classes)
    for _ in range(3):
        y, x = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
        label[y : y + h // 4, x : x + w // 4] = rng.integers(0, num_classes)
    label[-2:] = 255
    image = rng.integers(0, 256, (3, h, w)).astype(np.uint8)
    present = np.unique(label[label != 255])
    inst = Instances((h, w))
    inst.gt_classes = torch.as_tensor(present)
    inst.gt_masks = torch.as_tensor(label[None] == present[:, None, None])
    return {"image": torch.as_tensor(image), "instances": inst, "sem_seg": torch.as_tensor(label)}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = load_config(str(SWIN_B_1DL), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)

    def infer():
        with torch.no_grad():
            model([{"image": image}])

    timing = time_and_peak(infer, repeats=args.repeats)
    ms, mib = timing["ms"], timing["peak_mib"]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model inference swin_b_1dl ({params:.1f} M params, random weights) {args.height}x{args.width}: "
        f"{ms:9.1f} ms/image, +{mib:.0f} MiB peak ({args.threads} threads, median of {args.repeats})"
    )
    del model

    cfg = load_config(args.train_config, ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()"])
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    crop_h, crop_w = cfg.INPUT.CROP.SIZE
    rng = np.random.default_rng(0)
    batch = [_random_scene(rng, crop_h, crop_w, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES) for _ in range(args.batch)]

    def train_step():
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    timing = time_and_peak(train_step, repeats=args.repeats * 2)
    ms, mib = timing["ms"], timing["peak_mib"]
    print(
        f"model train-iter {Path(args.train_config).stem} batch {args.batch} {crop_h}x{crop_w}: "
        f"{ms:9.1f} ms/iter, +{mib:.0f} MiB peak ({args.threads} threads, median of {args.repeats * 2})"
    )
