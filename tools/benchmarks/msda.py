"""Compiled multi-scale deformable attention vs the PyTorch oracle at Mask2Former's encoder shapes.

Batch 1, a 512x1024 input (levels 64x128, 32x64, 16x32), 8 heads, 4 points, 32 channels per
head, every token a query. Prints forward and forward+backward milliseconds and the peak memory
each adds, for both implementations (each measured in a fresh process), and oracle / compiled
ratios.

``--smoke`` measures once at 64x128 in this process (a test runs it so the benchmark cannot rot).
"""
from __future__ import annotations

import argparse
import json

import torch

from rba_plugin.layers import compiled_op_available, ms_deform_attn, ms_deform_attn_pytorch

from .common import run_isolated, time_and_peak

OPS = {"compiled": ms_deform_attn, "pytorch": ms_deform_attn_pytorch}
PHASES = ("fwd", "fwd+bwd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--smoke", action="store_true", help="64x128, one repeat, in this process (for the tests)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "op:phase", internal


def make_inputs(height: int, width: int, heads: int = 8, channels: int = 32, points: int = 4):
    shapes = torch.tensor([[height // s, width // s] for s in (8, 16, 32)], dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    tokens = int(areas.sum())
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(1, tokens, heads, channels, generator=gen)
    locations = torch.rand(1, tokens, heads, len(shapes), points, 2, generator=gen)
    weights = torch.rand(1, tokens, heads, len(shapes), points, generator=gen).softmax(-1)
    return value, shapes, starts, locations, weights


def measure(op_name: str, phase: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    op = OPS[op_name]
    value, shapes, starts, locations, weights = make_inputs(args.height, args.width)

    def forward():
        with torch.no_grad():
            op(value, shapes, starts, locations, weights)

    def forward_backward():
        v = value.detach().requires_grad_()
        loc = locations.detach().requires_grad_()
        w = weights.detach().requires_grad_()
        op(v, shapes, starts, loc, w).sum().backward()

    return time_and_peak(forward if phase == "fwd" else forward_backward, repeats=args.repeats)


def run(args: argparse.Namespace) -> None:
    if args.smoke:
        args.height, args.width, args.repeats = 64, 128, 1
    if args.child:
        op_name, phase = args.child.split(":")
        print(json.dumps(measure(op_name, phase, args)))
        return
    if not compiled_op_available():
        raise SystemExit("benchmark msda: rba_plugin._C is not built; run `make setup` first")
    common = ["msda", "--threads", str(args.threads), "--repeats", str(args.repeats),
              "--height", str(args.height), "--width", str(args.width)]
    print(
        f"msda: {args.height}x{args.width} input, levels 1/8 1/16 1/32, every token a query, "
        f"8 heads x 32 ch, 4 points, {args.threads} threads" + (" [smoke: in-process]" if args.smoke else "")
    )
    for phase in PHASES:
        if args.smoke:
            res = {op: measure(op, phase, args) for op in OPS}
        else:
            res = {op: run_isolated(common + ["--child", f"{op}:{phase}"]) for op in OPS}
        c, p = res["compiled"], res["pytorch"]
        print(
            f"msda {phase:8s} compiled {c['ms']:8.1f} ms {c['peak_mib']:7.1f} MiB | pytorch "
            f"{p['ms']:8.1f} ms {p['peak_mib']:7.1f} MiB | speed-up x{p['ms'] / c['ms']:.2f}, "
            f"peak memory compiled/pytorch {c['peak_mib'] / max(p['peak_mib'], 1e-6):.2f}"
        )
