"""Per-method learning-rate multipliers, for a trainer's ``build_optimizer``.

RPL trains its expand conv at 10x the base rate (official code); RAML's stages use 0.1 for the
label predictor against 0.01 for the feature extractor (paper, appendix C.1). Only parameters
with ``requires_grad`` are returned, so frozen parts never reach the optimizer.
"""
from __future__ import annotations

from typing import Dict, List

from torch import nn

__all__ = ["lr_multipliers_from_config", "pixel_param_groups"]


def lr_multipliers_from_config(cfg) -> Dict[str, float]:
    """Parameter-name prefix -> learning-rate multiplier for the configured method."""
    method = cfg.MODEL.PIXEL_OOD.METHOD
    if method == "RPL":
        return {"ood_method.residual.expand": cfg.MODEL.RPL.EXPAND_LR_MULT}
    if method == "RAML" and cfg.MODEL.RAML.STAGE == "mca":
        mult = cfg.MODEL.MCA.HEAD_LR_MULT
        return {"sem_seg_head": mult, "ood_method.mca": mult}
    return {}


def pixel_param_groups(model: nn.Module, base_lr: float, weight_decay: float, lr_mults: Dict[str, float]) -> List[dict]:
    """One parameter group per multiplier (first matching prefix wins), trainable parameters only."""
    groups: Dict[float, List[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = next((m for p, m in lr_mults.items() if name == p or name.startswith(p + ".")), 1.0)
        groups.setdefault(mult, []).append(param)
    return [{"params": params, "lr": base_lr * mult, "weight_decay": weight_decay} for mult, params in groups.items()]
