"""Freezing parts of a model the way fine-tuning needs it: no gradients *and* eval mode.

Setting ``requires_grad=False`` alone leaves dropout, drop-path and BatchNorm statistic updates
running in the frozen modules while the model trains. :func:`freeze_except` freezes every
parameter outside an allow-list and keeps the frozen submodules in eval mode across
``model.train()`` calls, so a frozen module computes exactly what it computes at inference.
"""
from __future__ import annotations

import logging
from typing import Iterable, List, Tuple

from torch import nn

__all__ = ["freeze_except", "trainable_parameter_count"]

logger = logging.getLogger(__name__)


def _matches(name: str, prefixes: Tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    # Replaces train() on frozen modules: they stay in eval mode whatever the caller asks.
    return nn.Module.train(self, False)


def freeze_except(model: nn.Module, trainable: Iterable[str], follow_mode: Iterable[str] = ()) -> List[str]:
    """Freeze every parameter of ``model`` whose name is not under one of the ``trainable`` prefixes.

    A prefix names a submodule or parameter by its dotted path (``"sem_seg_head.predictor.class_embed"``).
    Submodules that hold no trainable parameter are put in eval mode and kept there; modules
    that contain both (e.g. the predictor, of which only the heads train) keep train mode, and
    their frozen leaf children stay in eval. Modules named in ``follow_mode`` keep following
    ``train()`` / ``eval()`` themselves even without a trainable parameter (a module whose flag
    selects *what* it computes, e.g. a per-pixel method's training outputs, whose trained part may
    live in another module); their submodules are frozen as usual.

    Returns:
        The names of the parameters left trainable.

    Raises:
        ValueError: if a prefix matches no parameter (a typo would silently freeze everything).
    """
    prefixes = tuple(trainable)
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(_matches(n, (prefix,)) for n in names):
            raise ValueError(f"freeze_except: no parameter of the model is under '{prefix}'")
    kept = []
    for name, param in model.named_parameters():
        keep = _matches(name, prefixes)
        param.requires_grad_(keep)
        if keep:
            kept.append(name)
    follow = set(follow_mode)
    for module_name, module in model.named_modules():
        if module is model or module_name in follow:
            continue
        own = [f"{module_name}.{n}" for n, _ in module.named_parameters()]
        has_trainable = any(_matches(n, prefixes) for n in own)
        # A module with no trainable parameter below it (parameter-free ones such as dropout
        # included) is frozen unless it sits inside a trainable prefix.
        if not has_trainable and not _matches(module_name, prefixes):
            module.eval()
            module.train = _frozen_train.__get__(module)  # bound per instance, no global patch
    return kept


def trainable_parameter_count(model: nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
