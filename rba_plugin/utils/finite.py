"""Catching NaN / inf in a model's training outputs before anything consumes them.

A non-finite activation (diverged weights, an input normalisation dividing by almost zero) would
otherwise surface far from its cause: inside scipy's Hungarian solver ("matrix contains invalid
numeric entries") for Mask2Former, or as a NaN loss term of whichever loss reads it first. Models
call :func:`check_finite_outputs` on their training outputs; the trainer
(``rba_plugin.engine.finite_loss``) adds the iteration and the process to the message.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Tuple

import torch

__all__ = ["NonFiniteOutputError", "check_finite_outputs"]


class NonFiniteOutputError(FloatingPointError):
    """A model output holds NaN or infinite values (before any loss or matching ran)."""


def _named_tensors(value: Any, name: str) -> Iterator[Tuple[str, torch.Tensor]]:
    if torch.is_tensor(value):
        if value.is_floating_point():
            yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _named_tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _named_tensors(item, f"{name}[{index}]")


def check_finite_outputs(outputs: Any, model_name: str = "the model") -> None:
    """Raise :class:`NonFiniteOutputError` naming every floating-point tensor of ``outputs`` (a
    dict, list or tensor, searched recursively: ``aux_outputs[0].pred_masks``) that holds NaN or
    infinite values, with their counts. One device synchronisation when all are finite."""
    named: List[Tuple[str, torch.Tensor]] = list(_named_tensors(outputs, ""))
    if not named:
        return
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in named])
    if bool(finite.all()):
        return
    bad = []
    for (name, tensor), ok in zip(named, finite.tolist()):
        if not ok:
            values = tensor.detach()
            nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
            bad.append(f"{name} ({nan} NaN and {inf} infinite of {values.numel()} values)")
    raise NonFiniteOutputError(
        f"non-finite training outputs of {model_name}, before any loss or matching: {', '.join(bad)}. Check the "
        "input normalisation (MODEL.PIXEL_MEAN / PIXEL_STD), the learning rate and the weights the run started from"
    )
