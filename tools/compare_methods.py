#!/usr/bin/env python3
"""Train and evaluate every method of both branches on the synthetic benchmark with the same
budget, and write one ranked table (markdown and JSON) of AP, FPR95, AUROC, sIoU, PPV, mean F1
and closed-set mIoU.

    python tools/compare_methods.py --preset quick --output output/compare
    python tools/compare_methods.py --iters 50 --base-iters 200 --methods pixel_closed_set_maxlogit pixel_pebal
    python tools/compare_methods.py --list                    # the method table
    python tools/compare_methods.py ... --opts DATALOADER.NUM_WORKERS 0   # overrides for every run

Each method is one entry of rba_plugin.experiments.comparison.DEFAULT_METHODS (config, parent
run, anomaly score). Entries whose config file does not exist yet are skipped with a message; a method
that fails is reported in the table and does not stop the others. Fine-tunes start from their
parent's model_final.pth in <output>/runs/<parent>/. Runs share this process (the trainer is
rba_plugin.engine.Trainer, as in tools/train_net.py).
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import rba_plugin  # noqa: E402,F401  (registers models, mappers and datasets)
from rba_plugin.experiments.comparison import DEFAULT_METHODS, PRESETS, Budget, MethodEntry, run_comparison  # noqa: E402
from rba_plugin.experiments.runs import evaluate_run, isolated_logging, load_run_model, setup_run, train_run  # noqa: E402


def train_and_evaluate(entry: MethodEntry, config_file: str, opts: List[str], ood_dataset: str,
                       miou_dataset: Optional[str], resume: bool = False) -> Mapping[str, Mapping]:
    """Trains ``entry`` (unless ``entry.train`` is False: then loads MODEL.WEIGHTS) without
    evaluating, then evaluates on the OOD (and mIoU) datasets; ``{dataset: results}``. With
    ``resume``, training continues from the run folder's last checkpoint (a finished run is not
    trained again)."""
    with isolated_logging():
        cfg = setup_run(config_file, [*opts, "DATASETS.TEST", "()"])  # no evaluation inside training
        model = train_run(cfg, resume=resume) if entry.train else load_run_model(cfg)
        return evaluate_run(cfg, model, [d for d in (miou_dataset, ood_dataset) if d])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="output/compare", help="folder of the runs and the tables")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="iteration budget: quick (%s), full (the configs' schedules)" % (PRESETS["quick"],))
    parser.add_argument("--iters", type=int, default=None, help="fine-tuning iterations of every method (overrides the preset)")
    parser.add_argument("--base-iters", type=int, default=None, help="iterations of the closed-set runs (overrides the preset)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="names to run (their parents are added); default: every method")
    parser.add_argument("--ood-dataset", default="synthcity_anomaly")
    parser.add_argument("--miou-dataset", default="synthcity_val", help="'' = mIoU from the OOD dataset's labels")
    parser.add_argument("--rank-by", default="AP")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted comparison (same options and --output): each run resumes from "
                             "its last checkpoint, finished runs are only evaluated")
    parser.add_argument("--list", action="store_true", help="print the method table and exit")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides for every run")
    return parser.parse_args(argv)


def select_methods(names: Optional[List[str]]) -> List[MethodEntry]:
    """The named entries plus their ancestors, in table order."""
    table: Dict[str, MethodEntry] = {e.name: e for e in DEFAULT_METHODS}
    if names is None:
        return list(DEFAULT_METHODS)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(table)}")
    wanted = set()
    for name in names:
        while name is not None and name not in wanted:
            wanted.add(name)
            name = table[name].parent
    return [e for e in DEFAULT_METHODS if e.name in wanted]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.list:
        for e in DEFAULT_METHODS:
            print(f"{e.name:28s} {e.branch:12s} {e.config}  parent={e.parent} score={e.score or 'default'}"
                  f"{'' if e.train else ' (evaluation only)'}")
        return {}
    preset = PRESETS[args.preset]
    budget = Budget(
        base_iters=args.base_iters if args.base_iters is not None else preset.base_iters,
        finetune_iters=args.iters if args.iters is not None else preset.finetune_iters,
    )
    if len(args.opts) % 2:
        raise SystemExit(f"--opts needs KEY VALUE pairs, got {args.opts}")
    return run_comparison(
        select_methods(args.methods),
        functools.partial(train_and_evaluate, resume=args.resume),
        repo_root=str(REPO_ROOT),
        out_dir=args.output,
        budget=budget,
        ood_dataset=args.ood_dataset,
        miou_dataset=args.miou_dataset or None,
        user_opts=args.opts,
        rank_by=args.rank_by,
        meta={"preset": args.preset},
    )


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome.get("failed") else 0)
