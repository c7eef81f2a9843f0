#!/usr/bin/env python3
"""Generates the synthetic street-scene benchmark (train / val / anomaly / outlier pool).

    python tools/make_synthetic_dataset.py                      # $DETECTRON2_DATASETS/synthcity
    python tools/make_synthetic_dataset.py --root /data/synthcity --num-train 1000 --seed 1

The data is cached: nothing happens when the root already holds this generator version with the
same parameters (use --force to regenerate). The registered ``synthcity_*`` datasets use the
default parameters; other parameters need ``rba_plugin.data.register_synthcity(root, params)``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rba_plugin.data.anomaly_datasets import datasets_root  # noqa: E402
from rba_plugin.data.synthetic import SynthCityParams, ensure_synthcity  # noqa: E402


def main(argv=None) -> int:
    defaults = SynthCityParams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="output folder (default $DETECTRON2_DATASETS/synthcity)")
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--num-anomaly", type=int, default=defaults.num_anomaly)
    parser.add_argument("--num-outliers", type=int, default=defaults.num_outliers)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=1, help="processes (results do not depend on it)")
    parser.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = parser.parse_args(argv)
    params = SynthCityParams(num_train=args.num_train, num_val=args.num_val, num_anomaly=args.num_anomaly,
                             num_outliers=args.num_outliers, height=args.height, width=args.width, seed=args.seed,
                             outlier_size=defaults.outlier_size)
    root = args.root or os.path.join(datasets_root(), "synthcity")
    start = time.perf_counter()
    root = ensure_synthcity(root, params, force=args.force, workers=args.workers)
    print(f"synthcity ready in {root} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
