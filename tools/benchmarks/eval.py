"""Streaming anomaly metrics (AnomalyMetrics) vs scikit-learn over all pixels of 1024x2048 frames.

Frames have smooth scores, a few anomaly boxes and a void band. Prints seconds and peak memory
added for: AnomalyMetrics pixel metrics over --frames frames; scikit-learn (AP, AUROC, ROC curve
for FPR95) on the first --sklearn-frames frames (all pixels in RAM, as the reference codes do),
with the per-frame speed ratio; AnomalyMetrics with component metrics (score maps cached in
memory up to --cache-mb, the rest in a temporary folder); and the pixel metrics' peak memory over
--frames-large frames.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from rba_plugin.evaluation import AnomalyMetrics

from .common import PeakRSS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--sklearn-frames", type=int, default=10, help="subset scikit-learn gets (RAM bound)")
    parser.add_argument("--frames-large", type=int, default=1000, help="frames for the memory check; 0 skips")
    parser.add_argument("--cache-mb", type=float, default=256, help="in-memory score cache of the component run")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--distinct", type=int, default=8, help="distinct frames, cycled (generation is not timed)")


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


def _measure(fn, with_total=False):
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    if with_total:
        return result, seconds, mem.added_mib, mem.baseline / 2**20
    return result, seconds, mem.added_mib


def run(args: argparse.Namespace) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    frames = make_frames(args.distinct, args.height, args.width)
    megapixels = args.height * args.width / 1e6
    print(f"eval: {args.frames} frames of {args.height}x{args.width} ({megapixels:.1f} MP each), "
          f"{args.distinct} distinct frames cycled")

    def ours(count, with_components=False, cache_mb=0.0):
        def fn():
            metrics = AnomalyMetrics(with_components=with_components, cache_memory_bytes=int(cache_mb * 2**20),
                                     min_pred_size=500, min_gt_size=100)
            for i in range(count):
                metrics.update(*frames[i % len(frames)])
            result = metrics.compute()
            metrics.close()
            return result
        return fn

    large_mib = 0.0
    if args.frames_large:  # first, so no earlier run has grown the process
        _, large_s, large_mib, baseline_mib = _measure(ours(args.frames_large), with_total=True)
        verdict = "under" if large_mib < 1024 else "OVER"
        print(f"eval AnomalyMetrics pixel metrics, {args.frames_large} frames: {large_s:8.2f} s  peak "
              f"{large_mib:.1f} MiB added ({verdict} 1 GiB) over the process's {baseline_mib:.0f} MiB "
              f"(python, torch, detectron2, scikit-learn, the {args.distinct} source frames)")
    pixel, ours_s, ours_mib = _measure(ours(args.frames))
    print(f"eval AnomalyMetrics pixel metrics : {ours_s:8.2f} s  {ours_mib:8.1f} MiB  "
          f"({1e3 * ours_s / args.frames:.1f} ms/frame)  AP {pixel['AP']:.4f} FPR95 {pixel['FPR95']:.4f}")

    def sklearn_fn():
        subset = [frames[i % len(frames)] for i in range(args.sklearn_frames)]
        scores = np.concatenate([s[l != 255] for s, l in subset])
        labels = np.concatenate([l[l != 255] for _, l in subset])
        ap = average_precision_score(labels, scores)
        auroc = roc_auc_score(labels, scores)
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        return ap, auroc, fpr[np.argmax(tpr >= 0.95)]

    (sk_ap, _, sk_fpr95), sk_s, sk_mib = _measure(sklearn_fn)
    sub, sub_s, _ = _measure(ours(args.sklearn_frames))
    per_frame_ours = ours_s / args.frames
    per_frame_sk = sk_s / args.sklearn_frames
    print(f"eval scikit-learn ({args.sklearn_frames:3d} frames)      : {sk_s:8.2f} s  {sk_mib:8.1f} MiB  "
          f"({1e3 * per_frame_sk:.1f} ms/frame)  AP {sk_ap:.4f} FPR95 {sk_fpr95:.4f} "
          f"(float32 scores; ours on the same frames, float16: AP {sub['AP']:.4f} FPR95 {sub['FPR95']:.4f})")
    # The allocator reuses what the first run of ours freed, so compare with its largest figure.
    ours_reference = max(ours_mib, large_mib, 0.1)
    print(f"eval speed-up per frame x{per_frame_sk / per_frame_ours:.1f}; memory: scikit-learn for "
          f"{args.sklearn_frames} frames {sk_mib:.0f} MiB vs ours for up to {max(args.frames, args.frames_large)} "
          f"frames {ours_reference:.0f} MiB, x{sk_mib / ours_reference:.1f} "
          f"(scikit-learn grows with the frame count, the histogram does not)")

    full, full_s, full_mib = _measure(ours(args.frames, with_components=True, cache_mb=args.cache_mb))
    print(f"eval AnomalyMetrics + components   : {full_s:8.2f} s  {full_mib:8.1f} MiB  "
          f"(cache {args.cache_mb:.0f} MiB in memory, rest on disk)  sIoU {full['sIoU']:.4f} "
          f"PPV {full['PPV']:.4f} mean_F1 {full['mean_F1']:.4f}")
