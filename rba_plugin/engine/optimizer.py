"""One optimizer builder for every model: Detectron2's ``get_default_optimizer_params`` with the
learning-rate factors the model declares, and optional full-model gradient clipping.

Hyper-parameters per parameter (Mask2Former's recipe, read from ``SOLVER``):

* learning rate ``BASE_LR`` x ``BACKBONE_MULTIPLIER`` under ``backbone.`` x the model's own factor
  (``model.lr_factors()``: parameter-name prefix -> factor, first match wins; e.g. RPL's 10x on its
  expand conv, RAML's MCA head);
* weight decay ``WEIGHT_DECAY``, except ``WEIGHT_DECAY_NORM`` in normalisation layers,
  ``WEIGHT_DECAY_EMBED`` in ``nn.Embedding`` layers (queries, level embeddings) and 0 for Swin's
  relative position bias tables and absolute position embedding;
* frozen parameters (``requires_grad=False``) are left out; groups with equal values are merged.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Dict, List, Mapping, Type

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

__all__ = ["optimizer_param_groups", "build_optimizer", "with_full_model_gradient_clipping", "NO_DECAY_PARAM_NAMES"]

logger = logging.getLogger(__name__)

# Swin's position parameters: no weight decay (Mask2Former matches them by name).
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def _prefix_factor(factors: Mapping[str, float]) -> Callable[[str], float]:
    def factor(name: str) -> float:
        return next((f for p, f in factors.items() if name == p or name.startswith(p + ".")), 1.0)

    return factor


def optimizer_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
    backbone_multiplier: float = 1.0,
    lr_factors: Mapping[str, float] = {},
) -> List[Dict[str, Any]]:
    """Parameter groups (see the module docstring), in the model's parameter order.

    Args:
        lr_factors: parameter-name prefix -> learning-rate factor (first match wins), on top of
            ``backbone_multiplier`` for parameters under ``backbone``.
    """
    backbone = _prefix_factor({"backbone": backbone_multiplier})
    own = _prefix_factor(lr_factors)
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        lr_factor_func=lambda name: backbone(name) * own(name),
        overrides={name: {"weight_decay": 0.0} for name in NO_DECAY_PARAM_NAMES},
    )
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    if not embeddings:
        return groups
    # Detectron2 sets per-type decay for normalisation layers only: embeddings are set here, and
    # the groups re-formed in the model's parameter order (as one pass over the model forms them).
    per_param = [{**{k: v for k, v in g.items() if k != "params"}, "params": [p]} for g in groups for p in g["params"]]
    for item in per_param:
        if id(item["params"][0]) in embeddings:
            item["weight_decay"] = weight_decay_embed
    order = {id(p): i for i, p in enumerate(model.parameters())}
    per_param.sort(key=lambda item: order[id(item["params"][0])])
    return reduce_param_groups(per_param)


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


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` ("SGD", "ADAM" or "ADAMW") over :func:`optimizer_param_groups`, with
    full-model clipping when SOLVER.CLIP_GRADIENTS.CLIP_TYPE is "full_model" (Detectron2's
    per-parameter clipping otherwise).

    Raises:
        ValueError: an unknown optimizer, or a model without a trainable parameter.
    """
    solver = cfg.SOLVER
    model = getattr(model, "module", model)  # DDP-wrapped
    lr_factors = model.lr_factors() if callable(getattr(model, "lr_factors", None)) else {}
    groups = optimizer_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
        lr_factors=lr_factors,
    )
    if not groups:
        raise ValueError(f"{type(model).__name__}: the model has no trainable parameter (everything is frozen)")
    # Logged here, where training starts, rather than where a model freezes itself (evaluation
    # and the tools build the same model).
    prefixes = getattr(model, "trainable_prefixes", None)
    if prefixes is not None:
        trainable = sum(p.numel() for group in groups for p in group["params"])
        total = sum(p.numel() for p in model.parameters())
        logger.info("Fine-tuning %d of %d parameters (%.4f %%): %s; every other module is frozen in eval mode.",
                    trainable, total, 100.0 * trainable / max(total, 1), ", ".join(prefixes))
    name = solver.OPTIMIZER.upper()
    if name == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": solver.MOMENTUM, "nesterov": solver.NESTEROV}
    elif name == "ADAM":  # the official optimizer of PEBAL, RPL and DenseHybrid
        optimizer_cls, kwargs = torch.optim.Adam, {"eps": solver.ADAM_EPS}
    elif name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {"eps": solver.ADAM_EPS}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer '{solver.OPTIMIZER}' (SGD, ADAM or ADAMW)")
    clip = solver.CLIP_GRADIENTS
    full_model_clip = clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0.0
    if full_model_clip:
        optimizer_cls = with_full_model_gradient_clipping(optimizer_cls, clip.CLIP_VALUE)
    optimizer = optimizer_cls(groups, lr=solver.BASE_LR, **kwargs)
    if clip.CLIP_TYPE != "full_model":
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer
