#!/usr/bin/env python3
"""Train or evaluate an rba_plugin model with Detectron2.

    python tools/train_net.py --config-file configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python tools/train_net.py --config-file CFG --resume          # continue from OUTPUT_DIR's last checkpoint
    python tools/train_net.py --config-file CFG --num-gpus 2      # one process per GPU (gloo on CPU)
    python tools/train_net.py --config-file CFG --num-gpus 8 --num-machines 2 --machine-rank 0|1 \\
        --dist-url tcp://HOST_OF_RANK_0:29500                      # two machines, run on each
    python tools/train_net.py --config-file CFG MODEL.ALLOW_PARTIAL_LOAD True  # load a mismatched MODEL.WEIGHTS

A NaN / inf loss term stops training with an error naming it; checkpoints are written atomically.

The trainer (optimizer, LR schedule, mappers, evaluators) lives in rba_plugin.engine.
"""
from __future__ import annotations

import rba_plugin  # noqa: F401  (registers models, mappers and datasets)
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from rba_plugin.engine import SafeCheckpointer, Trainer, launch
from rba_plugin.engine import setup as setup_config


def setup(args):
    """Config from --config-file and the trailing KEY VALUE overrides; logging and seeding."""
    return setup_config(args.config_file, args.opts, args)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # Evaluation refuses a checkpoint lacking any module of the model (MODEL.ALLOW_PARTIAL_LOAD overrides).
        SafeCheckpointer(cfg, model, allow_new_modules=False).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
