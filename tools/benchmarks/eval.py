"""Streaming anomaly metrics (AnomalyMetrics) vs scikit-learn and the old float16 path, 1024x2048 frames.

Frames have smooth float32 scores, a few anomaly boxes and a void band. Each measurement runs in
a fresh process (tools/benchmarks/common.py's run_isolated) and prints seconds and the peak
memory it added:

* exact pixel metrics (protocol "exact", the default) over --frames frames;
* the float16 histogram path that AnomalyMetrics used before the exact protocol (kept here only,
  for comparison: it rounds every score to float16 first) over the same frames;
* scikit-learn (AP, AUROC, the ROC curve for FPR95; all pixels in RAM, as the reference codes do)
  on the first --sklearn-frames frames, the exact path on the same frames (its values must equal
  scikit-learn's) and the per-frame speed ratio;
* protocol "smiyc" (the official per-frame binning) on those frames;
* the exact protocol with component metrics (score maps cached: --cache-mb in RAM, rest on disk);
* the exact pixel metrics' peak memory over --frames-large frames (target < 1 GiB).

``--smoke`` runs every measurement on tiny frames in this process (a test runs it so the
benchmark cannot rot); its memory numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np

from rba_plugin.evaluation import AnomalyMetrics
from rba_plugin.evaluation.anomaly_metrics import to_float16

from .common import peak_rss_bytes, run_isolated, time_and_peak

SMOKE = {"frames": 3, "sklearn_frames": 2, "frames_large": 4, "height": 64, "width": 128, "distinct": 2,
         "cache_mb": 0.01}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--sklearn-frames", type=int, default=10, help="subset scikit-learn gets (RAM bound)")
    parser.add_argument("--frames-large", type=int, default=1000, help="frames for the memory check; 0 skips")
    parser.add_argument("--cache-mb", type=float, default=256, help="in-memory score cache of the component run")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--distinct", type=int, default=8, help="distinct frames, cycled (generation is not timed)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, in this process (for the tests)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "kind:frames", internal


def make_frames(count: int, height: int, width: int, seed: int = 0):
    """``count`` (H x W float32 score, H x W uint8 label) pairs."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        label = np.zeros((height, width), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            y = int(rng.integers(height // 3, max(height // 3 + 1, height - 120)))
            x = int(rng.integers(0, max(1, width - 200)))
            label[y: y + int(rng.integers(max(2, height // 50), max(3, height // 8))),
                  x: x + int(rng.integers(max(2, width // 100), max(3, width // 10)))] = 1
        label[: height // 8] = 255
        coarse = rng.random((max(2, height // 32), max(2, width // 32))).astype(np.float32)
        score = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        score += 0.6 * (label == 1) + 0.05 * rng.standard_normal((height, width), dtype=np.float32)
        frames.append((score, label))
    return frames


class Float16Histogram:
    """The pixel metrics AnomalyMetrics computed before the exact protocol (kept for comparison).

    Scores are rounded to float16 and counted in 2 x 65536 bins keyed on the float16 bit pattern:
    exact for float16 scores, 1 MiB whatever the frame count, but every float32 score is rounded.
    """

    def __init__(self):
        bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
        keys = np.where(bits & 0x8000, ~bits, bits | 0x8000).astype(np.int64)
        keys[0x8000] = keys[0]
        self._keys = keys
        self.counts = np.zeros((2, 1 << 16), np.int64)

    def update(self, score, label) -> None:
        keys = self._keys[to_float16(score).view(np.uint16)]
        for cls in (0, 1):
            self.counts[cls] += np.bincount(keys[label == cls], minlength=1 << 16)

    def metrics(self) -> dict:
        neg, pos = self.counts[0][::-1], self.counts[1][::-1]
        present = (neg + pos) > 0
        tp, fp = np.cumsum(pos[present]), np.cumsum(neg[present])
        num_pos, num_neg = tp[-1], fp[-1]
        recall = tp / num_pos
        ap = float(np.sum(np.diff(recall, prepend=0.0) * tp / (tp + fp)))
        fpr, tpr = np.concatenate([[0.0], fp / num_neg]), np.concatenate([[0.0], recall])
        auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        first = int(np.searchsorted(recall, 0.95))
        return {"AP": ap, "AUROC": auroc, "FPR95": float(fp[first] / num_neg) if first < len(fp) else 1.0}


def measure(kind: str, count: int, args: argparse.Namespace, frames=None) -> dict:
    """One measurement (run in a fresh process): seconds, peak MiB added, and the metric values."""
    frames = frames if frames is not None else make_frames(args.distinct, args.height, args.width)
    out: dict = {}

    def anomaly_metrics(protocol: str, with_components: bool):
        def fn():
            metrics = AnomalyMetrics(with_components=with_components, cache_memory_bytes=int(args.cache_mb * 2**20),
                                     min_pred_size=500, min_gt_size=100, protocol=protocol)
            for i in range(count):
                metrics.update(*frames[i % len(frames)])
            out.update(metrics.compute())
            if metrics.pixels is not None:
                out["key_disk_mib"] = metrics.pixels.store.disk_bytes / 2**20
            metrics.close()
        return fn

    def float16_fn():
        histogram = Float16Histogram()
        for i in range(count):
            histogram.update(*frames[i % len(frames)])
        out.update(histogram.metrics())

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
    fn = {"exact": anomaly_metrics("exact", False), "smiyc": anomaly_metrics("smiyc", False),
          "components": anomaly_metrics("exact", True), "float16": float16_fn, "sklearn": sklearn_fn}[kind]
    if args.smoke:  # in-process: timing only
        start = time.perf_counter()
        fn()
        timing = {"ms": (time.perf_counter() - start) * 1e3, "peak_mib": float("nan")}
    else:
        timing = time_and_peak(fn, repeats=1, warmup=0)
    return {"s": timing["ms"] / 1e3, "peak_mib": timing["peak_mib"],
            "process_peak_mib": peak_rss_bytes() / 2**20, **{k: float(v) for k, v in out.items()}}


def run(args: argparse.Namespace) -> None:
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.child:
        kind, count = args.child.split(":")
        print(json.dumps(measure(kind, int(count), args)))
        return
    common = ["eval", "--height", str(args.height), "--width", str(args.width), "--distinct", str(args.distinct),
              "--cache-mb", str(args.cache_mb)]
    smoke_frames = make_frames(args.distinct, args.height, args.width) if args.smoke else None

    def child(kind: str, count: int) -> dict:
        if args.smoke:
            return measure(kind, count, args, smoke_frames)
        return run_isolated(common + ["--child", f"{kind}:{count}"])

    megapixels = args.height * args.width / 1e6
    print(f"eval: {args.frames} frames of {args.height}x{args.width} ({megapixels:.1f} MP each), "
          f"{args.distinct} distinct frames cycled, each measurement in a fresh process"
          + (" [smoke: tiny, in-process]" if args.smoke else ""))
    exact = child("exact", args.frames)
    f16 = child("float16", args.frames)
    print(f"eval exact pixel metrics (float32)  : {exact['s']:8.2f} s  {exact['peak_mib']:8.1f} MiB  "
          f"({1e3 * exact['s'] / args.frames:.1f} ms/frame, keys on disk {exact['key_disk_mib']:.0f} MiB)  "
          f"AP {exact['AP']:.6f} AUROC {exact['AUROC']:.6f} FPR95 {exact['FPR95']:.6f}")
    print(f"eval old float16 histogram          : {f16['s']:8.2f} s  {f16['peak_mib']:8.1f} MiB  "
          f"({1e3 * f16['s'] / args.frames:.1f} ms/frame)  AP {f16['AP']:.6f} AUROC {f16['AUROC']:.6f} "
          f"FPR95 {f16['FPR95']:.6f}; exact / float16 time x{exact['s'] / f16['s']:.1f}")
    sk = child("sklearn", args.sklearn_frames)
    sub = child("exact", args.sklearn_frames)
    sub16 = child("float16", args.sklearn_frames)
    sub_smiyc = child("smiyc", args.sklearn_frames)
    per_frame_exact = exact["s"] / args.frames
    per_frame_sk = sk["s"] / args.sklearn_frames
    print(f"eval scikit-learn ({args.sklearn_frames:3d} frames)       : {sk['s']:8.2f} s  {sk['peak_mib']:8.1f} MiB  "
          f"({1e3 * per_frame_sk:.1f} ms/frame)  AP {sk['AP']:.6f} AUROC {sk['AUROC']:.6f} FPR95 {sk['FPR95']:.6f}")
    gaps = {k: abs(sub[k] - sk[k]) for k in ("AP", "AUROC", "FPR95")}
    gaps16 = {k: abs(sub16[k] - sk[k]) for k in ("AP", "AUROC", "FPR95")}
    print(f"eval exact vs scikit-learn on those frames: |dAP| {gaps['AP']:.1e} |dAUROC| {gaps['AUROC']:.1e} "
          f"|dFPR95| {gaps['FPR95']:.1e}; old float16: |dAP| {gaps16['AP']:.1e} |dAUROC| {gaps16['AUROC']:.1e} "
          f"|dFPR95| {gaps16['FPR95']:.1e}; protocol smiyc: AP {sub_smiyc['AP']:.6f} ({sub_smiyc['s']:.2f} s, "
          f"{1e3 * sub_smiyc['s'] / args.sklearn_frames:.0f} ms/frame)")
    print(f"eval speed-up per frame, exact vs scikit-learn x{per_frame_sk / per_frame_exact:.1f} (target >= 10); "
          f"peak memory scikit-learn ({args.sklearn_frames} frames) / exact ({args.frames} frames) "
          f"x{sk['peak_mib'] / max(exact['peak_mib'], 0.1):.1f}")
    full = child("components", args.frames)
    print(f"eval exact + components             : {full['s']:8.2f} s  {full['peak_mib']:8.1f} MiB  "
          f"(float32 maps: {args.cache_mb:.0f} MiB in memory, rest on disk)  sIoU {full['sIoU']:.4f} "
          f"PPV {full['PPV']:.4f} mean_F1 {full['mean_F1']:.4f} delta {full['component_threshold']:.6g}")
    if args.frames_large:
        large = child("exact", args.frames_large)
        verdict = "smoke: not measured" if args.smoke else "under" if large["peak_mib"] < 1024 else "OVER"
        print(f"eval exact pixel metrics, {args.frames_large} frames: {large['s']:8.2f} s  peak "
              f"{large['peak_mib']:.1f} MiB added ({verdict} 1 GiB target; keys on disk "
              f"{large['key_disk_mib']:.0f} MiB); "
              f"whole process peak {large['process_peak_mib']:.0f} MiB (python, torch, detectron2, the "
              f"{args.distinct} source frames)")
