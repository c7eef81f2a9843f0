"""The official per-pixel networks on the CPU next to Detectron2's DeepLabV3+ R101.

Inference (``model(batched_inputs)`` of ``PixelOODSegmentor``: no_grad, eval mode, batch 1,
anomaly score and resizing included) of the shipped configs: PEBAL (WRN-38 DeepLabV3+, 20
outputs, ``configs/cityscapes/pixel/pebal.yaml``), RPL+CoroCL (plus the residual block, ``final``
run twice), DenseHybrid (plus ``logits_ood``) and RAML (torchvision ResNet-101 at output stride 16
and its metric head, 19 classes, with its URS region proposals and region embeddings), against Detectron2's DeepLabV3+ R101 with max-logit
(``configs/cityscapes/pixel/d2_deeplab/closed_set_R101.yaml``: DeepLab stem, output stride 16,
multi-grid 1-2-4; BN for SyncBN on the CPU), all with random weights. Each case runs in a fresh
process; the lines give wall milliseconds per image, CPU seconds per image (all threads; steadier
than wall time when other processes share the cores), the peak memory the forward pass adds, and
each as a ratio to the Detectron2 model. ``--smoke`` runs every case once at a tiny size.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .common import run_isolated, time_and_peak

REPO_ROOT = Path(__file__).resolve().parents[2]
BASELINE = "d2_deeplabv3plus_r101"
CONFIGS = {
    BASELINE: "configs/cityscapes/pixel/d2_deeplab/closed_set_R101.yaml",
    "pebal": "configs/cityscapes/pixel/pebal.yaml",
    "rpl_corocl": "configs/cityscapes/pixel/rpl_corocl.yaml",
    "densehybrid": "configs/cityscapes/pixel/densehybrid.yaml",
    "raml": "configs/cityscapes/pixel/raml.yaml",
}
CASES = tuple(CONFIGS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--sizes", default="512x1024,1024x2048", help="comma-separated HxW image sizes")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (the first call sets up oneDNN kernels)")
    parser.add_argument("--smoke", action="store_true", help="every case once at 64x128 (a quick check)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)


def _build(case: str, height: int, width: int):
    """(the segmentor, its parameter count), random weights."""
    import rba_plugin  # noqa: F401  (registers the plugin's components)
    from detectron2.modeling import build_model

    from rba_plugin.config import load_config

    cfg = load_config(str(REPO_ROOT / CONFIGS[case]), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"], freeze=False)
    if case == BASELINE:
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"  # SyncBN needs a process group
        # The config's ASPP pools over (crop size / 16) windows, which must tile the feature map
        # (they do at 512x1024 and 1024x2048); other sizes pool over the whole image instead.
        crop_h, crop_w = cfg.INPUT.CROP.SIZE
        if height % crop_h or width % crop_w:
            cfg.INPUT.CROP.ENABLED = False
    model = build_model(cfg).eval()
    return model, sum(p.numel() for p in model.parameters())


def measure(case: str, size: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    height, width = (int(v) for v in size.split("x"))
    model, params = _build(case, height, width)
    batch = [{"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8), "height": height, "width": width}]

    def infer():
        with torch.no_grad():
            model(batch)

    cpu_start = time.process_time()
    result = time_and_peak(infer, repeats=args.repeats, warmup=args.warmup)
    # CPU seconds of all threads per call (warm-up included): on a shared machine the wall time
    # also counts the time other processes hold the cores; the CPU time counts only this work.
    result["cpu_s"] = (time.process_time() - cpu_start) / (args.repeats + args.warmup)
    result["params"] = params
    return result


def run(args: argparse.Namespace) -> None:
    if args.child:
        print(json.dumps(measure(args.child, args.size, args)))
        return
    sizes = ["64x128"] if args.smoke else args.sizes.split(",")
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"pixel benchmark: unknown cases {unknown}; known: {', '.join(CASES)}")
    repeats, warmup = (1, 0) if args.smoke else (args.repeats, args.warmup)
    print(
        f"pixel: official per-pixel networks vs Detectron2 DeepLabV3+ R101, CPU inference, batch 1, random "
        f"weights, {args.threads} threads, median of {repeats} (warm-up {warmup}), each case in a fresh process"
    )
    for size in sizes:
        common = ["pixel", "--threads", str(args.threads), "--repeats", str(repeats), "--warmup", str(warmup), "--size", size]
        results = {case: run_isolated(common + ["--child", case]) for case in cases}
        base = results.get(BASELINE)
        for case, res in results.items():
            line = (
                f"pixel {size} {case:22s} {res['params'] / 1e6:6.1f} M params {res['ms']:10.1f} ms/image "
                f"{res['cpu_s']:7.1f} CPU-s/image +{res['peak_mib']:7.0f} MiB peak"
            )
            if base is not None and case != BASELINE:
                line += (
                    f" | x{res['ms'] / base['ms']:.2f} time, x{res['cpu_s'] / base['cpu_s']:.2f} CPU time, "
                    f"x{res['peak_mib'] / max(base['peak_mib'], 1e-6):.2f} peak memory of {BASELINE}"
                )
            print(line, flush=True)
