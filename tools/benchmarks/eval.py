"""Streaming anomaly metrics (AnomalyMetrics) vs scikit-learn over all pixels of 1024x2048 frames.

Frames have smooth scores, a few anomaly boxes and a void band. Each measurement runs in a fresh
process (tools/benchmarks/common.py's run_isolated). Prints seconds and peak memory added for: AnomalyMetrics pixel metrics over --frames frames; scikit-learn (AP, AUROC, ROC curve
for FPR95) on the first --sklearn-frames frames (all pixels in RAM, as the reference codes do),
with the per-frame speed ratio; AnomalyMetrics with component metrics (score maps cached in
memory up to --cache-mb, the rest in a temporary folder); and the pixel metrics' peak memory over
--frames-large frames.
"""
from __future__ import annotations

import argparse
import json

import cv2
import numpy as np

from rba_plugin.evaluation import AnomalyMetrics

from .common import peak_rss_bytes, run_isolated, time_and_peak


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--sklearn-frames", type=int, default=10, help="subset scikit-learn gets (RAM bound)")
    parser.add_argument("--frames-large", type=int, default=1000, help="frames for the memory check; 0 skips")
    parser.add_argument("--cache-mb", type=float, default=256, help="in-memory score cache of the component run")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--distinct", type=int, default=8, help="distinct frames, cycled (generation is not timed)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "kind:frames", internal


def make_frames(count: int, height: int, width: int, seed: int = 0):
    """``count`` (H x W float32 score, H x W uint8 label) pairs."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        label = np.zeros((height, width), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            y, x = int(rng.integers(height // 3, height - 120)), int(rng.integers(0, width - 200))
            label[y: y + int(rng.integers(20, 120)), x: x + int(rng.integers(20, 200))] = 1
        label[: height // 8] = 255
        coarse = rng.random((height // 32, width // 32)).astype(np.float32)
        score = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        score += 0.6 * (label == 1) + 0.05 * rng.standard_normal((height, width), dtype=np.float32)
        frames.append((score, label))
    return frames


def _frames_for(args: argparse.Namespace):
    return make_frames(args.distinct, args.height, args.width)


def measure(kind: str, count: int, args: argparse.Namespace) -> dict:
    """One measurement (run in a fresh process): seconds, peak MiB added, and the metric values."""
    frames = _frames_for(args)
    out: dict = {}

    def ours(with_components: bool):
        def fn():
            metrics = AnomalyMetrics(with_components=with_components, cache_memory_bytes=int(args.cache_mb * 2**20),
                                     min_pred_size=500, min_gt_size=100)
            for i in range(count):
                metrics.update(*frames[i % len(frames)])
            out.update(metrics.compute())
            metrics.close()
        return fn

    def sklearn_fn():
        from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

        subset = [frames[i % len(frames)] for i in range(count)]
        scores = np.concatenate([s[l != 255] for s, l in subset])
        labels = np.concatenate([l[l != 255] for _, l in subset])
        out["AP"] = average_precision_score(labels, scores)
        out["AUROC"] = roc_auc_score(labels, scores)
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        out["FPR95"] = float(fpr[np.argmax(tpr >= 0.95)])

    if kind == "sklearn":
        import sklearn.metrics  # noqa: F401  (import cost is not part of the measurement)
    fn = {"ours": ours(False), "components": ours(True), "sklearn": sklearn_fn}[kind]
    timing = time_and_peak(fn, repeats=1, warmup=0)
    return {"s": timing["ms"] / 1e3, "peak_mib": timing["peak_mib"],
            "process_peak_mib": peak_rss_bytes() / 2**20, **{k: float(v) for k, v in out.items()}}


def run(args: argparse.Namespace) -> None:
    if args.child:
        kind, count = args.child.split(":")
        print(json.dumps(measure(kind, int(count), args)))
        return
    common = ["eval", "--height", str(args.height), "--width", str(args.width), "--distinct", str(args.distinct),
              "--cache-mb", str(args.cache_mb)]

    def child(kind: str, count: int) -> dict:
        return run_isolated(common + ["--child", f"{kind}:{count}"])

    megapixels = args.height * args.width / 1e6
    print(f"eval: {args.frames} frames of {args.height}x{args.width} ({megapixels:.1f} MP each), "
          f"{args.distinct} distinct frames cycled, each measurement in a fresh process")
    ours = child("ours", args.frames)
    print(f"eval AnomalyMetrics pixel metrics : {ours['s']:8.2f} s  {ours['peak_mib']:8.1f} MiB  "
          f"({1e3 * ours['s'] / args.frames:.1f} ms/frame)  AP {ours['AP']:.4f} FPR95 {ours['FPR95']:.4f}")
    sk = child("sklearn", args.sklearn_frames)
    sub = child("ours", args.sklearn_frames)
    per_frame_ours = ours["s"] / args.frames
    per_frame_sk = sk["s"] / args.sklearn_frames
    print(f"eval scikit-learn ({args.sklearn_frames:3d} frames)      : {sk['s']:8.2f} s  {sk['peak_mib']:8.1f} MiB  "
          f"({1e3 * per_frame_sk:.1f} ms/frame)  AP {sk['AP']:.4f} FPR95 {sk['FPR95']:.4f} "
          f"(float32 scores; ours on the same frames, float16: AP {sub['AP']:.4f} FPR95 {sub['FPR95']:.4f})")
    print(f"eval speed-up per frame x{per_frame_sk / per_frame_ours:.1f}; peak memory scikit-learn "
          f"({args.sklearn_frames} frames) / ours ({args.frames} frames) x{sk['peak_mib'] / max(ours['peak_mib'], 0.1):.1f} "
          f"(scikit-learn grows with the frame count, the histogram does not)")
    full = child("components", args.frames)
    print(f"eval AnomalyMetrics + components   : {full['s']:8.2f} s  {full['peak_mib']:8.1f} MiB  "
          f"(cache {args.cache_mb:.0f} MiB in memory, rest on disk)  sIoU {full['sIoU']:.4f} "
          f"PPV {full['PPV']:.4f} mean_F1 {full['mean_F1']:.4f}")
    if args.frames_large:
        large = child("ours", args.frames_large)
        verdict = "under" if large["peak_mib"] < 1024 else "OVER"
        print(f"eval AnomalyMetrics pixel metrics, {args.frames_large} frames: {large['s']:8.2f} s  peak "
              f"{large['peak_mib']:.1f} MiB added ({verdict} 1 GiB); whole process peak "
              f"{large['process_peak_mib']:.0f} MiB (python, torch, detectron2, the {args.distinct} source frames)")
