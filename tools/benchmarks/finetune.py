"""One RbA fine-tuning iteration: our frozen-in-eval design vs the official code's style.

Ours: the FREEZE_* keys freeze every parameter outside the class head and mask MLP and keep the
frozen modules in eval mode. The official RbA code also sets ``requires_grad=False`` on the
frozen parts but leaves every module in train mode (dropout in the frozen pixel decoder stays
active): that is the baseline the first line compares against. A second line, labelled as such,
keeps the older and weaker baseline in which every parameter requires gradients (autograd through
the whole model; no released code does this), while the optimizer still updates only the heads.
Each mode is measured in a fresh process on the synthetic R18 fine-tuning config (forward,
backward, optimizer step), for every --threads value.

``--smoke`` runs each mode once on tiny crops in this process (a test runs it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from detectron2.structures import Instances

import rba_plugin  # noqa: F401
from rba_plugin.config import load_config
from rba_plugin.engine import Trainer
from rba_plugin.modeling.freeze import trainable_parameter_count

from .common import run_isolated, time_and_peak

REPO_ROOT = Path(__file__).resolve().parents[2]
FINETUNE = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_rba_finetune.yaml"
MODES = ("frozen_eval", "official", "all_gradients")
SMOKE = {"repeats": 1, "batch": 1, "size": 64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="square crop side")
    parser.add_argument("--smoke", action="store_true", help="tiny crops, one step, in this process (for the tests)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "mode:threads", internal


def random_scene(rng: np.random.Generator, h: int, w: int, num_classes: int):
    """A blocky random label map (a few classes in horizontal bands and boxes) and a noisy image."""
    label = np.zeros((h, w), np.int64)
    bands = np.sort(rng.choice(np.arange(1, h), size=3, replace=False))
    for top, bottom in zip([0, *bands], [*bands, h]):
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


def _batch(batch: int, size: int, num_classes: int):
    rng = np.random.default_rng(0)
    inputs = [random_scene(rng, size, size, num_classes) for _ in range(batch)]
    for x in inputs:  # a pasted outlier square in every image
        x["sem_seg"][size // 4 : size // 2, size // 4 : size // 2] = 254
    return inputs


def measure(mode: str, threads: int, args: argparse.Namespace) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(str(FINETUNE), ["MODEL.WEIGHTS", ""])
    model = Trainer.build_model(cfg)  # frozen-in-eval (ours)
    optimizer = Trainer.build_optimizer(cfg, model)
    trainable, total = trainable_parameter_count(model)
    model.train()
    if mode in ("official", "all_gradients"):
        for module in model.modules():  # undo the eval pinning: plain nn.Module.train everywhere
            module.__dict__.pop("train", None)
        model.train()
    if mode == "all_gradients":
        for param in model.parameters():
            param.requires_grad_(True)
    inputs = _batch(args.batch, args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)

    def step():
        losses = model(inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    result = time_and_peak(step, repeats=args.repeats, warmup=0 if args.smoke else 1)
    result.update(trainable=trainable, total=total)
    return result


def run(args: argparse.Namespace) -> None:
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.child:
        mode, threads = args.child.split(":")
        print(json.dumps(measure(mode, int(threads), args)))
        return
    common = ["finetune", "--repeats", str(args.repeats), "--batch", str(args.batch), "--size", str(args.size)]
    for threads in args.threads:
        if args.smoke:
            res = {mode: measure(mode, threads, args) for mode in MODES}
        else:
            res = {mode: run_isolated(common + ["--threads", str(threads), "--child", f"{mode}:{threads}"]) for mode in MODES}
        ours, official, allgrad = res["frozen_eval"], res["official"], res["all_gradients"]
        print(
            f"finetune: synthetic R18 1dl, batch {args.batch}, {args.size}x{args.size}, {threads} thread(s); "
            f"{ours['trainable']} of {ours['total']} parameters train ({100 * ours['trainable'] / ours['total']:.2f} %)"
            + (" [smoke]" if args.smoke else "")
        )
        print(
            f"finetune {threads}T frozen-in-eval {ours['ms']:8.1f} ms (CPU {ours['cpu_ms']:8.1f}) {ours['peak_mib']:7.1f} MiB | "
            f"official style (frozen requires_grad=False, train mode) {official['ms']:8.1f} ms (CPU {official['cpu_ms']:8.1f}) "
            f"{official['peak_mib']:7.1f} MiB | speed-up x{official['ms'] / ours['ms']:.2f} wall, "
            f"x{official['cpu_ms'] / ours['cpu_ms']:.2f} CPU, peak memory ours/official "
            f"{ours['peak_mib'] / max(official['peak_mib'], 1e-6):.2f}"
        )
        print(
            f"finetune {threads}T second baseline, not the official code (every parameter requires gradients): "
            f"{allgrad['ms']:8.1f} ms (CPU {allgrad['cpu_ms']:8.1f}) {allgrad['peak_mib']:7.1f} MiB | ours x"
            f"{allgrad['ms'] / ours['ms']:.2f} wall, peak memory ours/all-gradients "
            f"{ours['peak_mib'] / max(allgrad['peak_mib'], 1e-6):.2f}"
        )
