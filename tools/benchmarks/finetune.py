"""One RbA fine-tuning iteration: frozen-in-eval design vs frozen parts left training.

Ours: the FREEZE_* keys freeze every parameter outside the class head and mask MLP and keep those
modules in eval mode, so autograd records nothing through the backbone and pixel decoder.
Baseline (RbA's official behaviour, plus autograd through everything): the whole model in
train mode with every parameter requiring gradients, while the optimizer still updates only the
class head and mask MLP. Each is measured in a fresh process on the synthetic R18 fine-tuning
config, batch 2, and the ratios are printed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import rba_plugin  # noqa: F401
from rba_plugin.config import load_config
from rba_plugin.engine import Trainer
from rba_plugin.modeling.freeze import trainable_parameter_count

from .common import run_isolated, time_and_peak
from .model import _random_scene

REPO_ROOT = Path(__file__).resolve().parents[2]
FINETUNE = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_rba_finetune.yaml"
MODES = ("frozen_eval", "train_mode_autograd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="square crop side")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def _batch(batch: int, size: int, num_classes: int):
    rng = np.random.default_rng(0)
    inputs = [_random_scene(rng, size, size, num_classes) for _ in range(batch)]
    for x in inputs:  # a pasted outlier square in every image
        x["sem_seg"][size // 4 : size // 2, size // 4 : size // 2] = 254
    return inputs


def measure(mode: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(str(FINETUNE), ["MODEL.WEIGHTS", ""])
    model = Trainer.build_model(cfg)  # frozen-in-eval (ours)
    optimizer = Trainer.build_optimizer(cfg, model)
    trainable, total = trainable_parameter_count(model)
    model.train()
    if mode == "train_mode_autograd":
        for module in model.modules():  # undo the eval pinning: plain nn.Module.train
            module.__dict__.pop("train", None)
        model.train()
        for param in model.parameters():
            param.requires_grad_(True)
    inputs = _batch(args.batch, args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)

    def step():
        losses = model(inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    result = time_and_peak(step, repeats=args.repeats)
    result.update(trainable=trainable, total=total)
    return result


def run(args: argparse.Namespace) -> None:
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    common = ["finetune", "--threads", str(args.threads), "--repeats", str(args.repeats),
              "--batch", str(args.batch), "--size", str(args.size)]
    res = {mode: run_isolated(common + ["--child", mode]) for mode in MODES}
    ours, base = res["frozen_eval"], res["train_mode_autograd"]
    print(
        f"finetune: synthetic R18 1dl, batch {args.batch}, {args.size}x{args.size}, {args.threads} threads; "
        f"{ours['trainable']} of {ours['total']} parameters train ({100 * ours['trainable'] / ours['total']:.2f} %)"
    )
    print(
        f"finetune frozen-in-eval {ours['ms']:8.1f} ms {ours['peak_mib']:7.1f} MiB | train-mode+autograd "
        f"{base['ms']:8.1f} ms {base['peak_mib']:7.1f} MiB | speed-up x{base['ms'] / ours['ms']:.2f}, "
        f"peak memory ours/baseline {ours['peak_mib'] / max(base['peak_mib'], 1e-6):.2f}"
    )
