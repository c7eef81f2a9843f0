"""Multi-scale deformable attention as a function: compiled kernels and the PyTorch oracle.

Semantics are those of Deformable-DETR's op. With N the batch, S = sum_l H_l * W_l value tokens,
M heads, D channels per head, Q queries, L levels and P points:

=====================  ===========================  ==============================================
argument               shape                        meaning
=====================  ===========================  ==============================================
value                  N x S x M x D                the levels' pixels, flattened row-major, concatenated
spatial_shapes         L x 2 (int64)                (H_l, W_l) of every level
level_start_index      L (int64)                    offset of level l in S: 0, H_0 W_0, ...
sampling_locations     N x Q x M x L x P x 2        (x, y) in [0, 1] relative to level l
attention_weights      N x Q x M x L x P            weight of every sample
returns                N x Q x (M * D)              sum of weighted bilinear samples per head
=====================  ===========================  ==============================================

A location is read bilinearly at pixel (x W_l - 0.5, y H_l - 0.5), with zeros outside the map,
exactly as ``grid_sample(..., align_corners=False, padding_mode="zeros")``.

While the model is traced (``torch.jit.trace``, ONNX export) :func:`ms_deform_attn` takes the
``grid_sample`` formulation with every level's size and offset read from ``spatial_shapes`` and
``level_start_index`` in the graph, so the traced model works at any input size (ONNX GridSample,
opset >= 16); the compiled kernels are an autograd ``Function`` that a trace cannot record.
"""
from __future__ import annotations

import importlib
import logging
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils.logger import log_first_n
from torch.autograd import Function
from torch.autograd.function import once_differentiable

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "compiled_op_available",
    "check_ms_deform_attn_inputs",
]

logger = logging.getLogger(__name__)


def _load_compiled_op():
    """Import ``rba_plugin._C`` once; return it, or None with one log line saying why."""
    try:
        compiled = importlib.import_module("rba_plugin._C")
    except ModuleNotFoundError as e:
        if e.name != "rba_plugin._C":
            raise  # something the extension itself needs is missing: a real error
        logger.info(
            "rba_plugin._C is not built; multi-scale deformable attention uses the PyTorch "
            "implementation (run `pip install -e .` to build the kernels)."
        )
        return None
    except ImportError as e:  # present but unloadable, e.g. built against another torch
        logger.warning(
            "rba_plugin._C could not be loaded (%s); multi-scale deformable attention uses the "
            "PyTorch implementation. Rebuild with `pip install -e .`.", e
        )
        return None
    return compiled


_C = _load_compiled_op()


def compiled_op_available(device: Optional[torch.device] = None) -> bool:
    """Whether the compiled kernels serve tensors on ``device`` (CPU when None)."""
    if _C is None:
        return False
    if device is not None and torch.device(device).type == "cuda":
        return bool(_C.has_cuda())
    return device is None or torch.device(device).type == "cpu"


def check_ms_deform_attn_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    """Raise ValueError naming the offending argument when the inputs do not fit together."""
    tensors = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"ms_deform_attn: {name} must be a torch.Tensor, got {type(t).__name__}")
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be N x S x M x D, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"ms_deform_attn: value must be floating point, got {value.dtype}")
    for name in ("sampling_locations", "attention_weights"):
        if tensors[name].dtype != value.dtype:
            raise ValueError(
                f"ms_deform_attn: {name} has dtype {tensors[name].dtype}, value has {value.dtype}; "
                "they must match"
            )
    for name in ("spatial_shapes", "level_start_index"):
        if tensors[name].dtype != torch.int64:
            raise ValueError(f"ms_deform_attn: {name} must be int64, got {tensors[name].dtype}")
    for name, t in tensors.items():
        if t.device != value.device:
            raise ValueError(f"ms_deform_attn: {name} is on {t.device}, value is on {value.device}")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be L x 2, got shape {tuple(spatial_shapes.shape)}"
        )
    num_levels = spatial_shapes.shape[0]
    n, s, m, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be N x Q x M x L x P x 2, got shape "
            f"{tuple(sampling_locations.shape)}"
        )
    sl = sampling_locations.shape
    if sl[0] != n or sl[2] != m or sl[3] != num_levels:
        raise ValueError(
            f"ms_deform_attn: sampling_locations has shape {tuple(sl)}, expected "
            f"({n}, Q, {m}, {num_levels}, P, 2) from value {tuple(value.shape)} and "
            f"{num_levels} levels in spatial_shapes"
        )
    if tuple(attention_weights.shape) != tuple(sl[:-1]):
        raise ValueError(
            f"ms_deform_attn: attention_weights has shape {tuple(attention_weights.shape)}, "
            f"expected {tuple(sl[:-1])} to match sampling_locations"
        )
    if tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(
            f"ms_deform_attn: level_start_index has shape {tuple(level_start_index.shape)}, "
            f"expected ({num_levels},)"
        )
    # Small tensors: one host transfer, also when they live on a GPU.
    shapes = spatial_shapes.tolist()
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"ms_deform_attn: spatial_shapes must be positive, got {shapes}")
    expected_starts = [0]
    for h, w in shapes[:-1]:
        expected_starts.append(expected_starts[-1] + h * w)
    if level_start_index.tolist() != expected_starts:
        raise ValueError(
            f"ms_deform_attn: level_start_index {level_start_index.tolist()} is inconsistent with "
            f"spatial_shapes {shapes} (expected {expected_starts})"
        )
    total = sum(h * w for h, w in shapes)
    if total != s:
        raise ValueError(
            f"ms_deform_attn: value has {s} tokens but spatial_shapes {shapes} sum to {total}"
        )


def _levels(spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> List[Tuple]:
    """(H_l, W_l, start_l) of every level: Python ints, or 0-dim tensors while tracing (so the
    traced graph reads them from its inputs instead of freezing the export size's values)."""
    if torch.jit.is_tracing():
        return [(spatial_shapes[i, 0], spatial_shapes[i, 1], level_start_index[i])
                for i in range(spatial_shapes.shape[0])]
    return [(h, w, start) for (h, w), start in zip(spatial_shapes.tolist(), level_start_index.tolist())]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Pure-PyTorch deformable attention on ``grid_sample``; the oracle of the compiled kernels.

    Same arguments and result as :func:`ms_deform_attn`. Autograd differentiates it directly.
    """
    if check_inputs:
        check_ms_deform_attn_inputs(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    n, _, m, d = value.shape
    _, q, _, num_levels, p, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] coordinates
    sampled = []
    for lvl, (h, w, start) in enumerate(_levels(spatial_shapes, level_start_index)):
        # N x HW x M x D -> (N M) x D x H x W
        value_l = value[:, start : start + h * w]
        value_l = value_l.permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # N x Q x M x P x 2 -> (N M) x Q x P x 2
        grid_l = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, q, p, 2)
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N M) x D x Q x P
    # (N M) x D x Q x (L P) weighted by (N M) x 1 x Q x (L P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, q, num_levels * p)
    out = (stacked * weights).sum(-1).view(n, m * d, q)
    return out.transpose(1, 2).contiguous()


class _MSDeformAttnFunction(Function):
    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return _C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = _C.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_locations, grad_weights


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention (see the module docstring for shapes).

    Runs the compiled kernels of ``rba_plugin._C`` for the tensors' device (C++ on the CPU,
    CUDA on a GPU) and :func:`ms_deform_attn_pytorch` where no kernel was built or while the
    model is traced (see the module docstring).

    Raises:
        ValueError: when an argument's shape, dtype or device does not fit the others.
    """
    if torch.jit.is_tracing():
        # The checks read values on the host (.tolist()); the trace would freeze them.
        return ms_deform_attn_pytorch(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            check_inputs=False,
        )
    check_ms_deform_attn_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    if not compiled_op_available(value.device):
        if _C is not None and value.is_cuda:
            log_first_n(
                logging.WARNING,
                "rba_plugin._C has no CUDA kernels; CUDA tensors use the PyTorch implementation. "
                "Rebuild with FORCE_CUDA=1 to compile them.",
                n=1,
                name=__name__,
            )
        return ms_deform_attn_pytorch(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            check_inputs=False,
        )
    return _MSDeformAttnFunction.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
