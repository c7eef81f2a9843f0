"""Mask2Former's optimizer: per-parameter LR / weight decay and full-model gradient clipping."""
from __future__ import annotations

import copy
import itertools
import logging
from typing import Any, Dict, List, Type

import torch
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

__all__ = ["maskformer_param_groups", "build_maskformer_optimizer", "with_full_model_gradient_clipping"]

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Swin's position parameters: no weight decay (Mask2Former matches them by name).
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def maskformer_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    backbone_multiplier: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
) -> List[Dict[str, Any]]:
    """Parameter groups as Mask2Former builds them.

    * LR ``base_lr``, times ``backbone_multiplier`` for parameters of modules under "backbone";
    * weight decay ``weight_decay``, except ``weight_decay_norm`` for normalisation layers,
      ``weight_decay_embed`` for ``nn.Embedding`` (queries, decoder level embeddings) and 0 for
      Swin's relative position bias tables and absolute position embedding;
    * frozen parameters (``requires_grad=False``) are left out; shared ones counted once.
    Groups with equal hyper-parameters are merged.
    """
    defaults = {"lr": base_lr, "weight_decay": weight_decay}
    groups = []
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            hyper = copy.copy(defaults)
            if "backbone" in module_name:
                hyper["lr"] = base_lr * backbone_multiplier
            if name in NO_DECAY_PARAM_NAMES:
                hyper["weight_decay"] = 0.0
            if isinstance(module, NORM_MODULE_TYPES):
                hyper["weight_decay"] = weight_decay_norm
            if isinstance(module, nn.Embedding):
                hyper["weight_decay"] = weight_decay_embed
            groups.append({"params": [param], **hyper})
    return reduce_param_groups(groups)


def with_full_model_gradient_clipping(optimizer_cls: Type[torch.optim.Optimizer], max_norm: float):
    """A subclass of ``optimizer_cls`` whose ``step`` first clips the global L2 gradient norm
    over all its parameters to ``max_norm``."""

    class FullModelGradientClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, max_norm)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelGradientClipping{optimizer_cls.__name__}"
    return FullModelGradientClippingOptimizer


def build_maskformer_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER ("ADAMW" or "SGD") over :func:`maskformer_param_groups`, with
    full-model clipping when SOLVER.CLIP_GRADIENTS.CLIP_TYPE is "full_model" (detectron2's
    per-parameter clipping otherwise)."""
    solver = cfg.SOLVER
    groups = maskformer_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
    )
    clip = solver.CLIP_GRADIENTS
    full_model_clip = clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0.0
    name = solver.OPTIMIZER.upper()
    if name == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": solver.MOMENTUM, "nesterov": solver.NESTEROV}
    elif name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer '{solver.OPTIMIZER}' (ADAMW or SGD)")
    if full_model_clip:
        optimizer_cls = with_full_model_gradient_clipping(optimizer_cls, clip.CLIP_VALUE)
    optimizer = optimizer_cls(groups, lr=solver.BASE_LR, **kwargs)
    if clip.CLIP_TYPE != "full_model":
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer
