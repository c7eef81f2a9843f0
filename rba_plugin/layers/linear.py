"""``nn.Linear`` whose CPU inference runs oneDNN's matrix product instead of MKL's.

PyTorch's float32 ``F.linear`` on the CPU calls MKL's sgemm. On CPUs MKL does not tune for, such
as the AMD EPYC machines this project runs on, that gives 95-110 GFLOP/s per core at Swin's
shapes, while oneDNN (also part of PyTorch, behind its CPU convolutions) computes the same
products at 220-240 GFLOP/s (``tools/benchmark.py model`` shows what it does to a whole model).
The result differs from MKL's only by float rounding (relative 1e-6).

oneDNN is used where no gradient is asked of the product (inference, frozen layers), on float32
CPU tensors, outside tracing (an exported graph holds a plain ``Linear``), and when PyTorch has
the operator (``torch.ops.mkldnn._linear_pointwise``, the one ``torch.compile`` emits on CPUs);
everywhere else, and with ``onednn=False``, it is ``F.linear``. Parameters and state-dict keys are
``nn.Linear``'s.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "linear", "onednn_linear_available"]

_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear operator."""
    return _ONEDNN_LINEAR is not None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, onednn: bool = True) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, by oneDNN where it applies (see the module docstring)."""
    if (
        onednn
        and _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.jit.is_tracing()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad)))
    ):
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) computed by :func:`linear`.

    Args:
        onednn: use oneDNN where it applies (False: always ``F.linear``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, onednn: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.onednn = onednn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, onednn=self.onednn)
