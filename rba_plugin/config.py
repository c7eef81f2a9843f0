"""The plugin's configuration: Detectron2's defaults plus every key rba_plugin reads.

Key names follow Mask2Former (``MODEL.MASK_FORMER.*``, ``MODEL.SEM_SEG_HEAD.*``, ``MODEL.SWIN.*``)
and RbA, so the official config files merge unchanged. Each ``add_*_config`` adds one group.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.config import get_cfg as _detectron2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["get_cfg", "add_maskformer2_config", "add_anomaly_data_config"]


def add_maskformer2_config(cfg: CfgNode) -> None:
    """Mask2Former's model, input, solver and test keys (the closed-set model)."""


def add_anomaly_data_config(cfg: CfgNode) -> None:
    """Anomaly datasets, outlier pasting and OOD evaluation keys."""
    # Outlier pasting (names from RbA so its released configs merge).
    cfg.INPUT.OOD_LABEL = 254  # label of pasted outlier pixels; excluded from class masks
    cfg.INPUT.OOD_PROB = 0.1  # p_out: probability that a training image gets an outlier
    cfg.INPUT.COCO_ROOT = "coco"  # outlier pool root, relative to $DETECTRON2_DATASETS
    cfg.INPUT.COCO_PROXY_SIZE = 300  # size of the fixed, seeded proxy subset of the pool


def get_cfg() -> CfgNode:
    """Detectron2's default config with every key of the plugin added."""
    cfg = _detectron2_get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_anomaly_data_config(cfg)
    return cfg
