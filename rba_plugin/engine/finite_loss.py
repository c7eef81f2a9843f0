"""Stop training at the first non-finite loss term or model output, naming it and the iteration.

Detectron2 checks only the sum of the losses, on the main process, and its message does not say
which term broke. The check here runs on every process on its own loss terms, after the backward
pass and before the optimizer step, so the weights are never updated with NaN gradients. Models
check their own training outputs before any loss or matching reads them
(:func:`rba_plugin.utils.finite.check_finite_outputs`); the trainer adds the iteration.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm

from ..utils.finite import NonFiniteOutputError

__all__ = ["NonFiniteLossError", "check_finite_losses", "FiniteLossSimpleTrainer", "FiniteLossAMPTrainer"]


class NonFiniteLossError(FloatingPointError):
    """A loss term or a model's training output became NaN or infinite."""


def check_finite_losses(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
    """Raise :class:`NonFiniteLossError` naming every non-finite term of ``loss_dict``."""
    tensors = [v.detach().float().reshape(()) for v in loss_dict.values() if torch.is_tensor(v)]
    if len(tensors) == len(loss_dict) and (not tensors or bool(torch.isfinite(torch.stack(tensors)).all())):
        return  # one device sync per step in the common case
    values = {name: float(value.detach()) if torch.is_tensor(value) else float(value) for name, value in loss_dict.items()}
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if bad:
        terms = ", ".join(f"{name} = {value}" for name, value in sorted(bad.items()))
        finite = ", ".join(f"{name} = {value:.4g}" for name, value in sorted(values.items()) if name not in bad)
        raise NonFiniteLossError(
            f"non-finite loss at iteration {iteration} (process {comm.get_rank()}): {terms}"
            + (f" (other terms: {finite})" if finite else "")
        )


class _FiniteLossCheck:
    """Mixin for SimpleTrainer subclasses: checks the loss terms where metrics are written, which
    ``run_step`` does after ``backward`` and before ``optimizer.step``, and names the iteration of
    a model's non-finite training output."""

    def run_step(self) -> None:
        try:
            super().run_step()
        except NonFiniteOutputError as error:
            raise NonFiniteLossError(
                f"non-finite model output at iteration {self.iter} (process {comm.get_rank()}): {error}"
            ) from error

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = "",
                       iter: Optional[int] = None) -> None:
        check_finite_losses(loss_dict, self.iter if iter is None else iter)
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class FiniteLossSimpleTrainer(_FiniteLossCheck, SimpleTrainer):
    """``SimpleTrainer`` that raises :class:`NonFiniteLossError` on a NaN / inf loss term."""


class FiniteLossAMPTrainer(_FiniteLossCheck, AMPTrainer):
    """``AMPTrainer`` that raises :class:`NonFiniteLossError` on a NaN / inf loss term."""
