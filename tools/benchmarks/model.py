"""Mask2Former inference on the CPU: reference vs fused attention vs onnxruntime, and the fine-tuning step.

Model: RbA's Swin-B single-decoder-layer model (configs/cityscapes/mask2former/swin/
maskformer2_swin_base_IN21k_384_bs16_90k_1dl.yaml, the released model's architecture) with random
weights (seed 0, the same in every case) on one --height x --width image. For each --threads
value, each case runs in a fresh process:

* ``unfused``: PyTorch with MODEL.FUSED_ATTENTION False and MODEL.SWIN.ONEDNN_LINEAR False: the
  reference implementations' attention (separate matmul / add / softmax, pad-roll-partition
  copies) and F.linear's MKL products, i.e. the official code's operations and speed;
* ``fused_mkl``: fused attention and layout (MODEL.FUSED_ATTENTION True), MKL products
  (MODEL.SWIN.ONEDNN_LINEAR False): what the attention work alone gives;
* ``fused``: PyTorch with the defaults (fused attention, oneDNN products): our inference;
* ``onnxruntime``: the fused model exported with rba_plugin.export (traced at a smaller size,
  checked at two sizes) and run by onnxruntime with that many intra-op threads.

Printed per case: median wall and CPU time per image (CPU = all threads of the process; steadier
than wall on a shared machine) and the peak memory it added; then the ratios, and how far the
outputs (sem_seg and the RbA map) of unfused and onnxruntime are from fused. Last, the RbA
fine-tuning step against the official code's style (tools/benchmarks/finetune.py).

``--smoke`` runs every line on the micro-Swin synthetic config at 64x128 in this process (a test
runs it so the benchmark cannot rot); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from detectron2.modeling import build_model

import rba_plugin  # noqa: F401
from rba_plugin.config import load_config
from rba_plugin.export import ExportedModel, export_model

from . import finetune
from .common import run_isolated, time_and_peak

REPO_ROOT = Path(__file__).resolve().parents[2]
SWIN_B_1DL = REPO_ROOT / "configs/cityscapes/mask2former/swin/maskformer2_swin_base_IN21k_384_bs16_90k_1dl.yaml"
SYNTHETIC = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"
CASES = ("unfused", "fused_mkl", "fused", "onnxruntime")
# case -> (MODEL.FUSED_ATTENTION, MODEL.SWIN.ONEDNN_LINEAR)
TORCH_CASES = {"unfused": (False, False), "fused_mkl": (True, False), "fused": (True, True)}
SMOKE = {"height": 64, "width": 128, "repeats": 1, "warmup": 0, "threads": [1]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts to measure")
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per case (after one warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--export-size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"),
                        help="size the ONNX graph is traced at (it runs at any size)")
    parser.add_argument("--config", default=str(SWIN_B_1DL))
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning step lines")
    parser.add_argument("--smoke", action="store_true", help="micro-Swin at 64x128, in this process (for the tests)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "case:threads", internal
    parser.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)  # ONNX file and outputs, internal


def _config(args, case: str):
    fused, onednn = TORCH_CASES[case]
    return load_config(args.config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.OOD.SCORES", "['rba']",
                                     "MODEL.FUSED_ATTENTION", str(fused), "MODEL.SWIN.ONEDNN_LINEAR", str(onednn)])


def _build(args, case: str):
    torch.manual_seed(0)  # the same random weights in every case
    return build_model(_config(args, case)).eval()


def _image(args) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, args.height, args.width), generator=generator, dtype=torch.uint8)


def export_onnx(args) -> str:
    """The fused model as ONNX in ``args.work_dir``; returns its path."""
    path = os.path.join(args.work_dir, "model.onnx")
    model = _build(args, "fused")
    export_model(_config(args, "fused"), model, path, "onnx", sample_size=tuple(args.export_size))
    return path


def measure(case: str, threads: int, args) -> dict:
    torch.set_num_threads(threads)
    image = _image(args)
    if case == "onnxruntime":
        exported = ExportedModel(os.path.join(args.work_dir, "model.onnx"), num_threads=threads)
        size = tuple(image.shape[-2:])

        def run():
            out = exported(image[None].float(), size)
            return out["sem_seg"], out["score_rba"]
    else:
        model = _build(args, case)

        def run():
            with torch.no_grad():
                out = model([{"image": image}])[0]
            return out["sem_seg"], out["ood_score"]

    result = time_and_peak(run, repeats=args.repeats, warmup=args.warmup)
    sem_seg, rba = run()
    np.save(os.path.join(args.work_dir, f"{case}_{threads}_sem_seg.npy"), sem_seg.numpy())
    np.save(os.path.join(args.work_dir, f"{case}_{threads}_rba.npy"), rba.numpy())
    return result


def _max_diff(work_dir: str, a: str, b: str, threads: int) -> str:
    diffs = []
    for name in ("sem_seg", "rba"):
        x = np.load(os.path.join(work_dir, f"{a}_{threads}_{name}.npy"))
        y = np.load(os.path.join(work_dir, f"{b}_{threads}_{name}.npy"))
        diffs.append(f"{name} {np.abs(x - y).max():.1e}")
    return ", ".join(diffs)


def run(args: argparse.Namespace) -> None:
    if args.smoke:
        args.config = str(SYNTHETIC)
        args.export_size = (SMOKE["height"], SMOKE["width"])
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.child:
        case, threads = args.child.split(":")
        if case == "export":
            export_onnx(args)
            print(json.dumps({}))
        else:
            print(json.dumps(measure(case, int(threads), args)))
        return
    with tempfile.TemporaryDirectory(prefix="rba_bench_model_") as work_dir:
        args.work_dir = work_dir
        _run(args)


def _run(args: argparse.Namespace) -> None:
    common = ["model", "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--height", str(args.height),
              "--width", str(args.width), "--config", args.config, "--work-dir", args.work_dir]

    def child(case: str, threads: int) -> dict:
        if args.smoke:
            return measure(case, threads, args)
        return run_isolated(common + ["--child", f"{case}:{threads}"])

    name = Path(args.config).stem
    print(f"model: {name}, random weights (seed 0), {args.height}x{args.width}, median of {args.repeats} "
          f"after {args.warmup} warm-up, "
          + ("[smoke: micro Swin, in-process]" if args.smoke else "each case in a fresh process"))
    # Exported in a child too: a large parent would weigh on the machine while the cases run.
    export_onnx(args) if args.smoke else run_isolated(common + ["--export-size", *map(str, args.export_size), "--child", "export:0"])
    for threads in args.threads:
        res = {case: child(case, threads) for case in CASES}
        for case in CASES:
            r = res[case]
            print(f"model {threads}T {case:12s}: wall {r['ms']:9.1f} ms  CPU {r['cpu_ms']:9.1f} ms  "
                  f"peak +{r['peak_mib']:7.1f} MiB")
        u, m, f, o = res["unfused"], res["fused_mkl"], res["fused"], res["onnxruntime"]
        print(f"model {threads}T fused vs unfused (official speed): x{u['ms'] / f['ms']:.2f} wall, "
              f"x{u['cpu_ms'] / f['cpu_ms']:.2f} CPU (target >= 1.25); peak memory fused/unfused "
              f"{f['peak_mib'] / max(u['peak_mib'], 1e-6):.2f}; of which fused attention and layout alone "
              f"(fused_mkl vs unfused) x{u['ms'] / m['ms']:.2f} wall, x{u['cpu_ms'] / m['cpu_ms']:.2f} CPU")
        # Judged by CPU time: other jobs on a shared machine stretch wall time by more than the gap.
        faster, slower = ("onnxruntime", f) if o["cpu_ms"] < f["cpu_ms"] else ("PyTorch fused", o)
        fast = o if faster == "onnxruntime" else f
        print(f"model {threads}T onnxruntime vs PyTorch fused: {faster} faster by CPU time, "
              f"x{slower['cpu_ms'] / fast['cpu_ms']:.2f} CPU, x{slower['ms'] / fast['ms']:.2f} wall; peak memory "
              f"onnxruntime/fused {o['peak_mib'] / max(f['peak_mib'], 1e-6):.2f}")
        print(f"model {threads}T outputs, max abs difference to fused: unfused {_max_diff(args.work_dir, 'unfused', 'fused', threads)}; "
              f"fused_mkl {_max_diff(args.work_dir, 'fused_mkl', 'fused', threads)}; "
              f"onnxruntime {_max_diff(args.work_dir, 'onnxruntime', 'fused', threads)}")
    if args.no_finetune:
        return
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    ft_args = ["--threads", *map(str, args.threads)] + (["--smoke"] if args.smoke else [])
    finetune.run(parser.parse_args(ft_args))
