from .linear import Linear, linear, onednn_linear_available
from .ms_deform_attn import MSDeformAttn
from .ms_deform_attn_func import (
    check_ms_deform_attn_inputs,
    compiled_op_available,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

__all__ = [
    "Linear",
    "linear",
    "onednn_linear_available",
    "MSDeformAttn",
    "check_ms_deform_attn_inputs",
    "compiled_op_available",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
