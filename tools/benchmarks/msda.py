"""Compiled multi-scale deformable attention vs the PyTorch oracle at Mask2Former's encoder shapes.

Batch 1, a 512x1024 input (levels 64x128, 32x64, 16x32), 8 heads, 4 points, 32 channels per
head, every token a query. Prints forward and forward+backward milliseconds and the peak memory
each adds, for both implementations, and the oracle / compiled ratios.
"""
from __future__ import annotations

import argparse

import torch

from rba_plugin.layers import compiled_op_available, ms_deform_attn, ms_deform_attn_pytorch

from .common import time_and_peak


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)


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


def run(args: argparse.Namespace) -> None:
    if not compiled_op_available():
        raise SystemExit("benchmark msda: rba_plugin._C is not built; run `make setup` first")
    torch.set_num_threads(args.threads)
    value, shapes, starts, locations, weights = make_inputs(args.height, args.width)
    print(
        f"msda shapes: levels {shapes.tolist()}, {value.shape[1]} queries, 8 heads x 32 ch, "
        f"4 points, {args.threads} threads"
    )

    def forward(op):
        def step():
            with torch.no_grad():
                op(value, shapes, starts, locations, weights)
        return step

    def forward_backward(op):
        def step():
            v = value.detach().requires_grad_()
            loc = locations.detach().requires_grad_()
            w = weights.detach().requires_grad_()
            op(v, shapes, starts, loc, w).sum().backward()
        return step

    results = {}
    for name, op in (("compiled", ms_deform_attn), ("pytorch", ms_deform_attn_pytorch)):
        results[name, "fwd"] = time_and_peak(forward(op), repeats=args.repeats)
        results[name, "fwd+bwd"] = time_and_peak(forward_backward(op), repeats=args.repeats)
    for phase in ("fwd", "fwd+bwd"):
        c_ms, c_mem = results["compiled", phase]
        p_ms, p_mem = results["pytorch", phase]
        print(
            f"msda {phase:8s} compiled {c_ms:8.1f} ms {c_mem:7.1f} MiB | pytorch {p_ms:8.1f} ms "
            f"{p_mem:7.1f} MiB | speed-up x{p_ms / c_ms:.2f}, memory ratio x{p_mem / max(c_mem, 0.1):.2f}"
        )
