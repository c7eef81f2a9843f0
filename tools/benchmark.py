#!/usr/bin/env python3
"""Benchmarks of rba_plugin, one sub-command each; every one prints ratios measured side by side.

    python tools/benchmark.py msda        # compiled deformable attention vs the PyTorch oracle
    python tools/benchmark.py eval        # streaming anomaly metrics vs scikit-learn
    python tools/benchmark.py model       # Swin-B 1dl inference: reference vs fused attention vs onnxruntime; fine-tuning step
    python tools/benchmark.py finetune    # one RbA fine-tuning step: frozen-in-eval vs the official code's style
    python tools/benchmark.py pixel       # official PEBAL / RPL / DenseHybrid / RAML networks vs D2 DeepLabV3+ R101
    python tools/benchmark.py all         # every benchmark in turn

Each sub-command lives in tools/benchmarks/<name>.py with ``add_arguments(parser)`` and
``run(args)``, and has a ``--smoke`` mode (tiny sizes, in-process) that a test runs. Absolute
timings on a shared 2-core machine are noisy; compare the ratios.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Order of `all`.
BENCHMARKS = ["msda", "model", "eval", "finetune", "pixel"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="name", required=True)
    sub.add_parser("all", help="run every benchmark with its defaults")
    modules = {}
    for name in BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        modules[name] = module
        sub_parser = sub.add_parser(name, help=module.__doc__.splitlines()[0])
        module.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    if args.name == "all":
        for name, module in modules.items():
            sub_parser = argparse.ArgumentParser()
            module.add_arguments(sub_parser)
            print(f"== {name}")
            module.run(sub_parser.parse_args([]))
    else:
        modules[args.name].run(args)


if __name__ == "__main__":
    main()
