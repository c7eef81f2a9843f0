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
    # Pool dataset name; "coco_outliers" reads $DETECTRON2_DATASETS/<COCO_ROOT> (prepared by
    # tools/prepare_coco_outliers.py), "synthcity_outliers" is the synthetic benchmark's pool.
    cfg.INPUT.OUTLIER_POOL = "coco_outliers"
    cfg.INPUT.OOD_PROXY_SEED = 0  # seed of the proxy subset: the same on every rank and run
    # Pasted object's longer side as a fraction of the crop's shorter side, drawn uniformly.
    cfg.INPUT.OOD_SCALE_RANGE = (0.1, 0.5)

    # OOD evaluation (rba_plugin.evaluation.OODEvaluator).
    cfg.TEST.OOD = CfgNode()
    # Output keys to evaluate; [] = "ood_score" plus every entry of "ood_scores".
    cfg.TEST.OOD.SCORE_KEYS = []
    cfg.TEST.OOD.WITH_COMPONENTS = True  # sIoU / PPV / mean F1 (needs a second pass over cached maps)
    # Component threshold delta (prediction = score >= delta); None = best pixel F1 on the dataset.
    cfg.TEST.OOD.COMPONENT_THRESHOLD = None
    # [min predicted, min ground-truth] component sizes in pixels; [] = the dataset's track.
    cfg.TEST.OOD.COMPONENT_SIZES = []
    cfg.TEST.OOD.CACHE_MEMORY_MB = 2048  # float16 score maps beyond this go to a temp directory
    cfg.TEST.OOD.WRITE_CURVES = True  # PR / ROC PNGs and a JSON of the results in OUTPUT_DIR


def get_cfg() -> CfgNode:
    """Detectron2's default config with every key of the plugin added."""
    cfg = _detectron2_get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_anomaly_data_config(cfg)
    return cfg
