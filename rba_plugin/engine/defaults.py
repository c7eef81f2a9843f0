"""The set-up every tool shares (Detectron2's ``default_setup`` for the plugin's config)."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import load_config

__all__ = ["setup"]


def setup(config_file: str, opts: Sequence[str] = (), args: Optional[argparse.Namespace] = None) -> CfgNode:
    """Frozen config from ``config_file`` and KEY VALUE ``opts`` (:func:`rba_plugin.config.load_config`),
    then Detectron2's ``default_setup`` (logging to OUTPUT_DIR/log.txt, the config dump, seeding
    with SEED, environment info) and the plugin's logger.

    Args:
        args: the tool's parsed Detectron2 command line (``default_argument_parser``); built from
            ``config_file`` and ``opts`` when None.
    """
    if args is None:
        args = default_argument_parser().parse_args(["--config-file", config_file, *opts])
    cfg = load_config(config_file, opts)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="rba_plugin")
    return cfg
