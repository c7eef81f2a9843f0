"""The compiled multi-scale deformable attention op against its PyTorch oracle."""
import subprocess
import sys

import pytest
import torch

import rba_plugin.layers.ms_deform_attn_func as msda_func
from rba_plugin.layers import MSDeformAttn, compiled_op_available, ms_deform_attn, ms_deform_attn_pytorch

from .conftest import REPO_ROOT


def make_inputs(shapes, batch=1, heads=2, channels=4, queries=7, points=3, dtype=torch.float32,
                outside=0.0, seed=0, device="cpu", requires_grad=False):
    """Random op inputs; ``outside`` widens locations beyond [0, 1] by that margin on each side."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    levels = len(shapes)
    value = torch.rand(batch, int(areas.sum()), heads, channels, generator=gen, dtype=dtype)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=dtype)
    locations = locations * (1 + 2 * outside) - outside
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    tensors = [value, spatial_shapes, level_start_index, locations, weights]
    tensors = [t.to(device) for t in tensors]
    if requires_grad:
        for i in (0, 3, 4):
            tensors[i].requires_grad_(True)
    return tensors


CASES = {
    "one_level": dict(shapes=[(5, 7)]),
    "non_square_levels": dict(shapes=[(12, 20), (6, 10), (3, 5), (1, 3)], heads=4, channels=8),
    "batch": dict(shapes=[(8, 6), (4, 3)], batch=3, queries=11),
    "outside": dict(shapes=[(9, 4), (5, 2)], outside=0.3),
    "single_head_chunked_backward": dict(shapes=[(6, 6), (3, 3)], heads=1, queries=40),
}


def test_compiled_op_is_built():
    import rba_plugin._C  # noqa: F401

    assert compiled_op_available(torch.device("cpu"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_forward_matches_oracle(case):
    inputs = make_inputs(**CASES[case])
    ours = ms_deform_attn(*inputs)
    oracle = ms_deform_attn_pytorch(*inputs)
    assert ours.shape == oracle.shape
    assert (ours - oracle).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_backward_matches_oracle(case):
    inputs = make_inputs(**CASES[case], dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(ms_deform_attn_pytorch(*inputs).shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    wrt = (inputs[0], inputs[3], inputs[4])
    ours = torch.autograd.grad(ms_deform_attn(*inputs), wrt, grad_out)
    oracle = torch.autograd.grad(ms_deform_attn_pytorch(*inputs), wrt, grad_out)
    for name, a, b in zip(("value", "sampling_locations", "attention_weights"), ours, oracle):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), name


def test_outside_locations_read_zero():
    value, shapes, starts, locations, weights = make_inputs([(4, 4)], queries=3)
    locations = torch.full_like(locations, 1.5)  # every sample beyond the right/bottom edge
    assert ms_deform_attn(value, shapes, starts, locations, weights).abs().max().item() == 0.0


def test_hand_computed_sample():
    # A 2x2 map with one channel; sampling its centre (0.5, 0.5) averages the 4 pixels.
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    shapes = torch.tensor([[2, 2]])
    starts = torch.tensor([0])
    locations = torch.tensor([0.5, 0.5]).view(1, 1, 1, 1, 1, 2)
    weights = torch.full((1, 1, 1, 1, 1), 2.0)
    # Pixel centre of (row 0, col 1) is at x = 0.75, y = 0.25: reads exactly 2.
    out_centre = ms_deform_attn(value, shapes, starts, locations, weights)
    out_pixel = ms_deform_attn(value, shapes, starts, torch.tensor([0.75, 0.25]).view(1, 1, 1, 1, 1, 2), weights)
    assert out_centre.item() == pytest.approx(2.0 * 2.5)
    assert out_pixel.item() == pytest.approx(2.0 * 2.0)


@pytest.mark.parametrize("case", ["one_level", "non_square_levels", "outside"])
def test_gradcheck_float64(case):
    params = dict(CASES[case])
    params.update(queries=3, points=2, channels=2)
    inputs = make_inputs(**params, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ms_deform_attn, tuple(inputs), eps=1e-6, atol=1e-5)


def test_backward_independent_of_thread_count():
    inputs = make_inputs([(6, 5), (3, 2)], heads=1, queries=30, dtype=torch.float64, requires_grad=True)
    grads = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = ms_deform_attn(*inputs)
            grads.append(torch.autograd.grad(out.sum(), (inputs[0], inputs[3], inputs[4])))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def _bad_inputs():
    good = make_inputs([(4, 6), (2, 3)], batch=2)
    value, shapes, starts, locations, weights = good
    return {
        "value_rank": ((value[0], shapes, starts, locations, weights), "value"),
        "value_tokens": ((value[:, :-1], shapes, starts, locations, weights), "value"),
        "locations_levels": ((value, shapes, starts, locations[:, :, :, :1], weights), "sampling_locations"),
        "locations_batch": ((value, shapes, starts, locations[:1], weights), "sampling_locations"),
        "weights_shape": ((value, shapes, starts, locations, weights[..., :1]), "attention_weights"),
        "weights_dtype": ((value, shapes, starts, locations, weights.double()), "attention_weights"),
        "locations_dtype": ((value, shapes, starts, locations.double(), weights), "sampling_locations"),
        "shapes_dtype": ((value, shapes.int(), starts, locations, weights), "spatial_shapes"),
        "shapes_rank": ((value, shapes.flatten(), starts, locations, weights), "spatial_shapes"),
        "starts_inconsistent": ((value, shapes, starts + 1, locations, weights), "level_start_index"),
        "starts_length": ((value, shapes, starts[:1], locations, weights), "level_start_index"),
        "value_int": ((value.long(), shapes, starts, locations.long(), weights.long()), "value"),
    }


@pytest.mark.parametrize("op", [ms_deform_attn, ms_deform_attn_pytorch], ids=["compiled", "fallback"])
@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_bad_input_names_argument(op, case):
    args, name = _bad_inputs()[case]
    with pytest.raises(ValueError, match=name):
        op(*args)


def test_dispatch_falls_back_without_compiled_op(monkeypatch):
    inputs = make_inputs([(5, 3)], dtype=torch.float64, requires_grad=True)
    calls = []
    real = msda_func.ms_deform_attn_pytorch

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(msda_func, "_C", None)
    monkeypatch.setattr(msda_func, "ms_deform_attn_pytorch", spy)
    out = msda_func.ms_deform_attn(*inputs)
    assert calls == [1]
    assert torch.allclose(out, real(*inputs))


def test_missing_extension_logs_once_and_uses_fallback():
    # A fresh interpreter in which `rba_plugin._C` cannot be found.
    code = r"""
import importlib.abc, logging, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rba_plugin._C":
            raise ModuleNotFoundError("No module named 'rba_plugin._C'", name=name)
        return None
sys.meta_path.insert(0, Block())
logging.basicConfig(level=logging.INFO, format="%(name)s|%(message)s")
import torch
from rba_plugin.layers import ms_deform_attn, compiled_op_available
assert not compiled_op_available()
v = torch.rand(1, 4, 1, 2); s = torch.tensor([[2, 2]]); st = torch.tensor([0])
out = ms_deform_attn(v, s, st, torch.rand(1, 3, 1, 1, 2, 2), torch.rand(1, 3, 1, 1, 2))
print("shape", tuple(out.shape))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "shape (1, 3, 2)" in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if "rba_plugin._C is not built" in ln]
    assert len(lines) == 1


def test_module_output_shape_and_grad():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3)
    shapes = torch.tensor([[4, 6], [2, 3]])
    starts = torch.tensor([0, 24])
    src = torch.randn(2, 30, 16, requires_grad=True)
    ref = torch.rand(2, 30, 2, 2)
    out = module(src, ref, src, shapes, starts)
    assert out.shape == (2, 30, 16)
    out.sum().backward()
    assert module.sampling_offsets.weight.grad is not None and src.grad is not None


def test_module_compiled_matches_fallback(monkeypatch):
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)
    shapes = torch.tensor([[4, 6], [2, 3]])
    starts = torch.tensor([0, 24])
    src, ref = torch.randn(1, 30, 16), torch.rand(1, 30, 2, 2)
    compiled = module(src, ref, src, shapes, starts)
    monkeypatch.setattr(msda_func, "_C", None)
    fallback = module(src, ref, src, shapes, starts)
    assert (compiled - fallback).abs().max().item() <= 1e-5


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_forward_backward_match_oracle(case):
    assert compiled_op_available(torch.device("cuda")), "rba_plugin._C was built without CUDA kernels"
    inputs = make_inputs(**CASES[case], dtype=torch.float64, device="cuda", requires_grad=True)
    wrt = (inputs[0], inputs[3], inputs[4])
    ours = ms_deform_attn(*inputs)
    oracle = ms_deform_attn_pytorch(*inputs)
    assert (ours - oracle).abs().max().item() <= 1e-10
    grad_out = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, wrt, grad_out), torch.autograd.grad(oracle, wrt, grad_out)):
        assert torch.allclose(a, b, atol=1e-9, rtol=0)


@pytest.mark.gpu
@gpu
def test_cuda_gradcheck():
    inputs = make_inputs([(5, 4), (2, 3)], queries=3, points=2, channels=40, dtype=torch.float64,
                         device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(ms_deform_attn, tuple(inputs), eps=1e-6, atol=1e-5)
