"""Optimizer of the per-pixel branch (``PixelOODSegmentor``): the method's LR multipliers
(:func:`rba_plugin.modeling.pixel.lr_multipliers_from_config`) over its trainable parameters,
with the optimizer named by ``SOLVER.OPTIMIZER`` and detectron2's per-parameter clipping.

Mask2Former's recipe (backbone multiplier, norm / embedding decay, full-model clipping) does not
apply here: each method already freezes what it must not train and names its own multipliers.
"""
from __future__ import annotations

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

from ..modeling.pixel.optim import lr_multipliers_from_config, pixel_param_groups

__all__ = ["PIXEL_META_ARCHITECTURES", "build_pixel_optimizer", "is_pixel_model_config"]

# Meta-architectures whose optimizer this module builds.
PIXEL_META_ARCHITECTURES = ("PixelOODSegmentor",)


def is_pixel_model_config(cfg) -> bool:
    """True when ``cfg.MODEL.META_ARCHITECTURE`` is a per-pixel segmentor."""
    return cfg.MODEL.META_ARCHITECTURE in PIXEL_META_ARCHITECTURES


def build_pixel_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` ("SGD", "ADAM" or "ADAMW") over the trainable parameters of ``model``,
    one group per learning-rate multiplier of the configured method.

    Raises:
        ValueError: unknown ``SOLVER.OPTIMIZER``, or a model without trainable parameters.
    """
    solver = cfg.SOLVER
    groups = pixel_param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, lr_multipliers_from_config(cfg))
    if not groups:
        raise ValueError(
            f"MODEL.PIXEL_OOD.METHOD={cfg.MODEL.PIXEL_OOD.METHOD!r}: the model has no trainable parameter"
        )
    name = solver.OPTIMIZER.upper()
    if name == "SGD":
        optimizer = torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV)
    elif name == "ADAM":  # RPL's official optimizer
        optimizer = torch.optim.Adam(groups, lr=solver.BASE_LR)
    elif name == "ADAMW":
        optimizer = torch.optim.AdamW(groups, lr=solver.BASE_LR)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer '{solver.OPTIMIZER}' for the per-pixel branch "
                         "(SGD, ADAM or ADAMW)")
    # Detectron2's per-parameter clipping ("value" / "norm"); "full_model" is Mask2Former's and
    # is refused rather than silently ignored.
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        raise ValueError("SOLVER.CLIP_GRADIENTS.CLIP_TYPE 'full_model' is Mask2Former's; the per-pixel branch "
                         "supports 'value' and 'norm'")
    return maybe_add_gradient_clipping(cfg, optimizer)
