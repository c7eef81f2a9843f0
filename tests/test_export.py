"""ONNX (run by onnxruntime) and TorchScript export: the exported graph gives the PyTorch model's
``sem_seg`` and every exported score at two input sizes from one export, for the official
Mask2Former fixtures (their weights) and a per-pixel model; refusals name the module."""
import importlib
import os

import pytest
import torch

from rba_plugin.export import ExportedModel, ExportError, export_model, output_names
from rba_plugin.export import exporter as exporter_module
from rba_plugin.layers.ms_deform_attn_func import _MSDeformAttnFunction, compiled_op_available
from rba_plugin.modeling.meta_arch.mask_former import MaskFormer
from rba_plugin.modeling.pixel import PixelOODSegmentor

from .m2f_build import build_on, fixture_cfg, load_fixture
from .pixel_utils import tiny_pixel_cfg

ATOL = 1e-4
# The module (rba_plugin.layers re-exports a function of the same name).
msda_module = importlib.import_module("rba_plugin.layers.ms_deform_attn")
FIXTURES = ["m2f_swin_micro_rba_seed7.pt", "m2f_swin_micro_3level_seed11.pt"]
# Several scores, so that "every exported score" covers more than the default one.
M2F_SCORES = ["rba", "msp", "energy"]
PIXEL_SCORES = ["energy", "maxlogit"]  # RPL: smoothed 7x7 by default (reflect padding in the graph)


def _pytorch_outputs(model, image: torch.Tensor, size):
    with torch.no_grad():
        out = model([{"image": image, "height": size[0], "width": size[1]}])[0]
    scores = out.get("ood_scores") or {model.scorer.names[0]: out["ood_score"]}
    return {"sem_seg": out["sem_seg"], **{f"score_{name}": scores[name] for name in model.scorer.names}}


def _compare(exported: ExportedModel, model, image: torch.Tensor, size):
    expected = _pytorch_outputs(model, image, size)
    got = exported(image[None].float(), size)
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, (name, got[name].shape, expected[name].shape)
        err = (got[name] - expected[name]).abs().max().item()
        assert err <= ATOL, f"{exported.format} {name} at {tuple(image.shape[-2:])} -> {size}: max abs error {err:.3g}"


def _cases(image: torch.Tensor):
    """The export-size image at its size; a smaller crop (not a multiple of 32) at its size; and
    that crop with larger output maps (the graph resizes before it scores)."""
    h, w = image.shape[-2:]
    crop = image[:, : h - 21, : w - 37]
    return [(image, (h, w)), (crop, tuple(crop.shape[-2:])), (crop, (h + 10, w + 6))]


# The three-level fixture (three decoder layers, deformable attention over three levels) takes
# longest; it runs in the full suite.
@pytest.fixture(scope="module", params=[FIXTURES[0], pytest.param(FIXTURES[1], marks=pytest.mark.slow)])
def m2f(request, reference_dir):
    fixture = load_fixture(reference_dir / request.param)
    cfg = fixture_cfg(fixture)
    cfg.MODEL.OOD.SCORES = list(M2F_SCORES)
    model = build_on(cfg).eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    return fixture, cfg, model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_mask2former_fixture_export_matches_pytorch(m2f, fmt, tmp_path):
    fixture, cfg, model = m2f
    image = fixture["image"]
    path = str(tmp_path / f"model.{fmt}")
    meta = export_model(cfg, model, path, fmt, sample_size=tuple(image.shape[-2:]))
    exported = ExportedModel(path)
    assert exported.format == fmt and exported.names == output_names(M2F_SCORES) == meta["outputs"]
    assert meta["score_names"] == M2F_SCORES and meta["input_format"] == cfg.INPUT.FORMAT
    for img, size in _cases(image):
        _compare(exported, model, img, size)
    # And the official code's outputs, through the exported graph.
    got = exported(image[None].float(), tuple(image.shape[-2:]))
    assert (got["sem_seg"] - fixture["sem_scores"]).abs().max().item() <= ATOL
    assert (got["score_rba"] - fixture["rba"]).abs().max().item() <= ATOL


@pytest.fixture(scope="module")
def pixel_model():
    cfg = tiny_pixel_cfg("RPL")
    cfg.MODEL.OOD.SCORES = list(PIXEL_SCORES)
    torch.manual_seed(0)
    model = build_on(cfg).eval()
    assert isinstance(model, PixelOODSegmentor) and model.scorer.smoothing_kernel == 7
    return cfg, model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_per_pixel_export_matches_pytorch(pixel_model, fmt, tmp_path):
    cfg, model = pixel_model
    path = str(tmp_path / f"pixel.{fmt}")
    export_model(cfg, model, path, fmt, sample_size=(96, 128))
    exported = ExportedModel(path)
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    for img, size in _cases(image):
        _compare(exported, model, img, size)


def test_raml_is_refused_naming_the_module(tmp_path):
    cfg = tiny_pixel_cfg("RAML")
    model = build_on(cfg).eval()
    path = tmp_path / "raml.onnx"
    with pytest.raises(ExportError, match=r"module 'ood_method' \(RAML\): .*scipy"):
        export_model(cfg, model, str(path), "onnx", sample_size=(64, 64))
    assert not path.exists() and not os.listdir(tmp_path)


@pytest.mark.skipif(not compiled_op_available(), reason="needs the compiled deformable attention")
def test_untraceable_op_is_refused_naming_the_module(m2f, tmp_path, monkeypatch):
    # The compiled op is an autograd Function a trace cannot record: if the traceable path were
    # bypassed, the export must name where, not write a graph without it.
    fixture, cfg, model = m2f
    monkeypatch.setattr(msda_module, "ms_deform_attn", lambda *args: _MSDeformAttnFunction.apply(*args))
    path = tmp_path / "m.torchscript"
    with pytest.raises(ExportError, match=r"_MSDeformAttnFunction in module 'sem_seg_head\.pixel_decoder\.transformer"):
        export_model(cfg, model, str(path), "torchscript", sample_size=tuple(fixture["image"].shape[-2:]))
    assert not os.listdir(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_size_frozen_at_export_is_refused(m2f, fmt, tmp_path, monkeypatch):
    # Level sizes read back as Python ints (as the code did before it was made traceable) freeze
    # the export size into the graph; the check at a second size must catch it.
    from rba_plugin.modeling.pixel_decoder import msdeformattn

    def frozen(shapes, device):
        return torch.as_tensor([[int(h), int(w)] for h, w in shapes], device=device)

    fixture, cfg, model = m2f
    monkeypatch.setattr(msdeformattn, "spatial_shapes_tensor", frozen)
    path = tmp_path / f"m.{fmt}"
    with pytest.raises(ExportError, match=r"at input size \d+x\d+"):
        export_model(cfg, model, str(path), fmt, sample_size=tuple(fixture["image"].shape[-2:]))
    assert not os.listdir(tmp_path)


def test_verification_sizes_respect_the_model():
    class Fixed(torch.nn.Module):
        def input_size_multiple(self):
            return (64, 128)

    assert exporter_module.verification_sizes(torch.nn.Module(), (256, 512)) == [(256, 512), (328, 552)]
    assert exporter_module.verification_sizes(Fixed(), (100, 100)) == [(128, 128), (192, 256)]


def test_unknown_format_and_old_opset_are_refused(m2f, tmp_path):
    _, cfg, model = m2f
    with pytest.raises(ValueError, match="export format"):
        export_model(cfg, model, str(tmp_path / "m"), "tflite")
    with pytest.raises(ValueError, match="GridSample"):
        export_model(cfg, model, str(tmp_path / "m"), "onnx", opset=13)
    assert isinstance(model, MaskFormer) and not os.listdir(tmp_path)


def test_exported_model_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "plain.onnx"
    import onnx
    from onnx import helper, TensorProto

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    with pytest.raises(ValueError, match="no rba_plugin metadata"):
        ExportedModel(str(path))
    with pytest.raises(FileNotFoundError):
        ExportedModel(str(tmp_path / "missing.onnx"))


@pytest.mark.parametrize("shape", [(37, 50), (2, 40, 33)])
def test_gaussian_smooth_is_torchvisions_blur_exactly(shape):
    # The score smoothing is written out (a fixed-shape kernel, so ONNX can hold it); it must stay
    # torchvision's GaussianBlur(7, 1) of the official RPL / PEBAL test code, bit for bit.
    from torchvision.transforms.functional import gaussian_blur

    from rba_plugin.modeling.ood.scores import gaussian_smooth

    score = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 5
    for kernel, sigma in ((7, 1.0), (5, 2.5)):
        expected = gaussian_blur(score.unsqueeze(-3), [kernel, kernel], [sigma, sigma]).squeeze(-3)
        assert torch.equal(gaussian_smooth(score, kernel, sigma), expected)
