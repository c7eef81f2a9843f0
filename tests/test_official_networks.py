"""The official PEBAL, RPL(+CoroCL), DenseHybrid and RAML networks rebuilt from the plugin's parts
reproduce the official code: same state-dict keys and shapes (after the documented prefix
mapping), strict loading of the fixture recipe weights, and the same outputs, intermediates and
anomaly scores as the official forward passes (../shared/reference/pixel_official, seed 3)."""
from __future__ import annotations

from typing import Dict

import pytest
import torch
from detectron2.layers import ShapeSpec

from rba_plugin.modeling.backbone.raml_resnet import TorchvisionResNet
from rba_plugin.modeling.backbone.wider_resnet import WiderResNetA2
from rba_plugin.modeling.heads.deepwv3plus import DeepWV3PlusHead
from rba_plugin.modeling.heads.raml_deeplab import RAMLDeepLabV3PlusHead
from rba_plugin.modeling.official import (
    ResidualAnomalyBlock,
    build_official_network,
    densehybrid_official_score,
    energy_official_score,
    model_to_official_state_dict,
    official_to_model_state_dict,
    split_official_state_dict,
)
from rba_plugin.modeling.ood.scores import densehybrid_score, energy_score, gaussian_smooth

from .official_networks import PIXEL_OFFICIAL, checksums, read_key_table, recipe_state_dict

# test id -> (fixture stem, network name, number of classes)
NETWORKS = {
    "pebal": ("pebal_deepwv3plus", "pebal", 20),
    "rpl": ("rpl_corocl_deepwv3plus", "rpl_corocl", 19),
    "densehybrid": ("densehybrid_deepwv3plusth", "densehybrid", 19),
    "raml16": ("raml_dlv3p_r101_os16_16cls", "raml", 16),
    "raml19": ("raml_dlv3p_r101_os16_19cls", "raml", 19),
}
# Fixture outputs compared per network (the anomaly scores are checked separately).
OUTPUTS = {
    "pebal": ["logits"],
    "rpl": ["logits_vanilla", "logits_rpl", "logits"],
    "densehybrid": ["logits", "logits_ood"],
    "raml16": ["logits", "meta_channels", "features", "reconstruction"],
    "raml19": ["logits", "meta_channels", "features", "reconstruction"],
}
# Fixture intermediate -> (module path in the composed model, channel step of the fixture copy).
INTERMEDIATES = {
    "mod2": ("backbone.mod2", 8),
    "mod7": ("backbone.mod7", 32),
    "aspp": ("sem_seg_head.aspp", 8),
    "residual_atten_aspp": ("ood_method.residual_block.atten_aspp", 8),
    "layer1": ("backbone.layer1", 8),
    "layer4": ("backbone.layer4", 16),
}
REL_TOL = 1e-4


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (the README's tolerance measure)."""
    assert ours.shape == ref.shape, (tuple(ours.shape), tuple(ref.shape))
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


class OfficialRun:
    """One network built once: recipe weights loaded strictly, fixture input run with hooks."""

    def __init__(self, reference_dir, test_id: str):
        stem, name, num_classes = NETWORKS[test_id]
        folder = reference_dir / PIXEL_OFFICIAL
        self.test_id = test_id
        self.tsv = folder / f"{stem}_state_dict_keys.tsv"
        self.fixture = torch.load(folder / f"{stem}_seed3.pt")
        self.net = build_official_network(name, num_classes=num_classes)
        self.recipe = recipe_state_dict(self.tsv, self.fixture["seed"])
        self.load_result = self.net.load_official_state_dict(self.recipe, strict=True)
        self.net.eval()
        modules = dict(self.net.named_modules())
        self.captured: Dict[str, torch.Tensor] = {}
        first_conv = "backbone.mod1" if hasattr(self.net.backbone, "mod1") else "backbone.conv1"
        handles = [
            modules[first_conv].register_forward_pre_hook(
                lambda _m, args: self.captured.__setitem__("network_input", args[0].clone())
            )
        ]
        for key in self.fixture["intermediates"]:
            path, step = INTERMEDIATES[key]
            handles.append(
                modules[path].register_forward_hook(
                    lambda _m, _args, out, key=key, step=step: self.captured.__setitem__(key, out[:, ::step].clone())
                )
            )
        with torch.no_grad():
            self.outputs = self.net(self.fixture["input"])
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module")
def official_run(request, reference_dir) -> OfficialRun:
    """Indirectly parametrized by test id; module scope makes pytest run every test of one
    network before building the next, so each network is built and run once."""
    return OfficialRun(reference_dir, request.param)


def _networks():
    # Every test takes all networks: with one shared parameter list pytest groups the tests by
    # network (differing lists make it rebuild networks).
    return pytest.mark.parametrize("official_run", list(NETWORKS), indirect=True)


def _key_table(reference_dir, test_id):
    return read_key_table(reference_dir / PIXEL_OFFICIAL / f"{NETWORKS[test_id][0]}_state_dict_keys.tsv")


# ----------------------------------------------------------------------------- keys and weights


@pytest.mark.parametrize("test_id", list(NETWORKS))
def test_keys_and_shapes_match_official_table(reference_dir, test_id):
    _, name, num_classes = NETWORKS[test_id]
    net = build_official_network(name, num_classes=num_classes)
    table = {key: shape for key, shape, _ in _key_table(reference_dir, test_id)}
    ours = {key: tuple(v.shape) for key, v in net.official_state_dict().items()}
    assert ours == table
    # and the other direction: every official key has exactly one place in the composed model
    mapped = official_to_model_state_dict(table, net.layout)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == mapped
    n_params = sum(p.numel() for p in net.parameters())
    expected = {"pebal": 137_104_192, "rpl": 167_998_832, "densehybrid": 137_105_154, "raml16": 58_753_028,
                "raml19": 58_753_859}
    assert n_params == expected[test_id]


@_networks()
def test_recipe_weights_checksums_and_strict_load(official_run):
    run = official_run
    fixture = run.fixture
    assert [row[0] for row in fixture["state_dict_keys"]] == list(run.recipe)
    stored = fixture["weight_checksums"]
    rebuilt = checksums(run.recipe)
    assert rebuilt.keys() == stored.keys()
    assert all(tuple(rebuilt[k]) == tuple(stored[k]) for k in stored), "recipe tensors differ from the fixture"
    assert not run.load_result.missing_keys and not run.load_result.unexpected_keys
    # the loaded model gives the recipe tensors back under the official names
    official = run.net.official_state_dict()
    assert all(torch.equal(official[k], v) for k, v in run.recipe.items())
    assert sum(p.numel() for p in run.net.parameters()) == fixture["n_parameters"]


# ----------------------------------------------------------------------------- forward passes


@_networks()
def test_outputs_match_official(official_run):
    run, test_id = official_run, official_run.test_id
    errors = {key: rel_error(run.outputs[key], run.fixture[key]) for key in OUTPUTS[test_id]}
    print(f"{test_id} outputs max relative error: {errors}")
    assert all(e <= REL_TOL for e in errors.values()), errors
    if test_id == "rpl":
        assert run.outputs["proj"] is None and run.fixture["proj"] is None


@_networks()
def test_network_input_and_intermediates_match_official(official_run):
    run, test_id = official_run, official_run.test_id
    # the tensor entering the first convolution (DenseHybrid normalises inside the network)
    assert torch.equal(run.captured["network_input"], run.fixture["network_input"])
    errors = {key: rel_error(run.captured[key], ref) for key, ref in run.fixture["intermediates"].items()}
    print(f"{test_id} intermediates max relative error: {errors}")
    assert errors.keys() == run.fixture["intermediates"].keys()
    assert all(e <= REL_TOL for e in errors.values()), errors


@_networks()
def test_anomaly_score_matches_official(official_run):
    run, test_id = official_run, official_run.test_id
    ref = run.fixture["anomaly_score"]
    if test_id.startswith("raml"):
        # The released RAML code has no per-pixel anomaly score (czifan/RAML#4): none is made up.
        assert ref is None and "anomaly_score" not in run.outputs
        meta = run.outputs["meta_channels"]
        assert meta.shape[1] == 20 and 0 < meta.min() and meta.max() < 1
        return
    ours = run.outputs["anomaly_score"]
    ours = ours[0] if ref.dim() == 2 else ours  # PEBAL / RPL squeeze the batch of one
    errors = {"anomaly_score": rel_error(ours, ref)}
    if "energy_unsmoothed" in run.fixture:
        logits = run.outputs["logits"]
        errors["energy_unsmoothed"] = rel_error(energy_official_score(logits, smooth=False)[0], run.fixture["energy_unsmoothed"])
    print(f"{test_id} score max relative error: {errors}")
    assert all(e <= REL_TOL for e in errors.values()), errors
    assert torch.isfinite(ours).all()


@_networks()
def test_odd_input_size_runs(official_run):
    run = official_run
    image = torch.rand(1, 3, 37, 53)
    modules = dict(run.net.named_modules())
    shapes = {}
    hooks = [
        modules[p].register_forward_hook(lambda _m, _a, out, p=p: shapes.__setitem__(p, tuple(out.shape[-2:])))
        for p in ("backbone.mod2", "backbone.mod7", "backbone.layer1", "backbone.layer4") if p in modules
    ]
    with torch.no_grad():
        out = run.net(image)
    for hook in hooks:
        hook.remove()
    for key, value in out.items():
        if value is None or key == "features":
            continue
        assert value.shape[-2:] == (37, 53), key
        assert torch.isfinite(value).all(), key
    if "backbone.mod2" in shapes:  # WRN-38 rounds up: the README's 19x27 and 5x7
        assert shapes == {"backbone.mod2": (19, 27), "backbone.mod7": (5, 7)}
    else:
        assert shapes == {"backbone.layer1": (10, 14), "backbone.layer4": (3, 4)}
        assert out["features"].shape[-2:] == (10, 14)


# ----------------------------------------------------------------------------- scores


def test_official_energy_score_is_the_project_helpers():
    logits = torch.randn(2, 20, 23, 31) * 3
    score = energy_official_score(logits)
    assert torch.equal(score, gaussian_smooth(energy_score(logits[:, :19]), 7, 1.0))
    # the official call: torchvision GaussianBlur(7, sigma=1) on the 1 x H x W energy of one image
    from torchvision.transforms import GaussianBlur

    official = GaussianBlur(7, sigma=1)(-torch.logsumexp(logits[1, :19], 0).unsqueeze(0)).squeeze(0)
    assert torch.equal(score[1], official)
    with pytest.raises(ValueError, match="logits"):
        energy_official_score(torch.randn(2, 5, 4, 4))


def test_densehybrid_official_score_vs_project_helper():
    torch.manual_seed(0)
    logits, logits_ood = torch.randn(2, 19, 16, 16), torch.randn(2, 2, 16, 16) * 4
    official = densehybrid_official_score(logits, logits_ood)
    ours = densehybrid_score(logits, logits_ood)
    # the same quantity; log(softmax) vs log_softmax differ only by float rounding ...
    assert torch.allclose(official, ours, rtol=0, atol=1e-5)
    # ... except where the outlier probability underflows: the official score is -inf there
    extreme = torch.tensor([[0.0, -200.0]]).view(1, 2, 1, 1)
    zero = torch.zeros(1, 19, 1, 1)
    assert densehybrid_official_score(zero, extreme).item() == float("-inf")
    assert torch.isfinite(densehybrid_score(zero, extreme)).all()


# ----------------------------------------------------------------------------- key mapping


def test_key_mapping_strips_wrappers_and_routes():
    state = {
        "module.branch1.mod1.conv1.weight": 1,
        "branch1.aspp.features.0.0.weight": 2,
        "module.branch1.residual_block.atten_aspp.img_conv.0.weight": 3,
        "branch1.final.6.weight": 4,
    }
    mapped = official_to_model_state_dict(state, "rpl")
    assert mapped == {
        "backbone.mod1.conv1.weight": 1,
        "sem_seg_head.aspp.features.0.0.weight": 2,
        "ood_method.residual_block.atten_aspp.img_conv.0.weight": 3,
        "sem_seg_head.final.6.weight": 4,
    }
    assert official_to_model_state_dict(state, "rpl", method_prefix="rpl.")["rpl.residual_block.atten_aspp.img_conv.0.weight"] == 3
    back = model_to_official_state_dict(mapped, "rpl")
    assert back == {k.replace("module.", ""): v for k, v in state.items()}
    # NVIDIA's DataParallel checkpoint of DeepWV3Plus and an ImageNet trunk's extra keys
    nvidia = {"module.mod7.block1.convs.conv3.weight": 1, "module.bot_fine.weight": 2, "module.bn_out.0.weight": 3}
    mapped, unmapped = split_official_state_dict(nvidia, "wrn38")
    assert mapped == {"backbone.mod7.block1.convs.conv3.weight": 1, "sem_seg_head.bot_fine.weight": 2}
    assert unmapped == ["module.bn_out.0.weight"]
    with pytest.raises(KeyError, match="bn_out"):
        official_to_model_state_dict(nvidia, "wrn38")
    raml = {"backbone.layer4.2.bn3.weight": 1, "classifier.conv3.bias": 2}
    assert official_to_model_state_dict(raml, "raml") == {"backbone.layer4.2.bn3.weight": 1, "sem_seg_head.conv3.bias": 2}
    with pytest.raises(ValueError, match="unknown official layout"):
        official_to_model_state_dict(raml, "deeplab")
    with pytest.raises(KeyError, match="no official name"):
        model_to_official_state_dict({"ood_method.logits_ood.conv.weight": 1}, "pebal")


# ----------------------------------------------------------------------------- structure


def test_wider_resnet_shapes_strides_and_dilations():
    trunk = WiderResNetA2(structure=[1, 1, 1, 1, 1, 1], out_features=["mod2", "mod3", "mod4", "mod7"])
    assert {k: (v.channels, v.stride) for k, v in trunk.output_shape().items()} == {
        "mod2": (128, 2), "mod3": (256, 4), "mod4": (512, 8), "mod7": (4096, 8)
    }
    assert trunk.mod4.block1.convs.conv1.stride == (2, 2) and trunk.mod4.block1.proj_conv.stride == (2, 2)
    assert trunk.mod5.block1.convs.conv2.dilation == (2, 2)
    assert trunk.mod6.block1.convs.conv2.dilation == (4, 4) and trunk.mod7.block1.convs.conv2.dilation == (4, 4)
    assert trunk.mod6.block1.convs.dropout.p == 0.3 and trunk.mod7.block1.convs.dropout.p == 0.5
    assert isinstance(trunk.mod7.block1.convs.dropout, torch.nn.Dropout2d)
    assert not hasattr(trunk, "bn_out")
    undilated = WiderResNetA2(structure=[1, 1, 1, 1, 1, 1], dilation=False, out_features=["mod5", "mod7"])
    assert {k: v.stride for k, v in undilated.output_shape().items()} == {"mod5": 16, "mod7": 32}
    with pytest.raises(ValueError, match="six"):
        WiderResNetA2(structure=[3, 3, 6])
    with pytest.raises(ValueError, match="out_features"):
        WiderResNetA2(out_features=["res5"])


def test_torchvision_resnet_keeps_dilation_one_in_first_dilated_block():
    backbone = TorchvisionResNet(depth=101, output_stride=16)
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        "layer1": (256, 4), "layer4": (2048, 16)
    }
    layer4 = backbone.layer4
    assert layer4[0].conv2.dilation == (1, 1) and layer4[0].conv2.stride == (1, 1)
    assert layer4[0].downsample[0].stride == (1, 1)
    assert [b.conv2.dilation for b in layer4[1:]] == [(2, 2), (2, 2)]
    assert backbone.layer3[0].conv2.stride == (2, 2)  # v1.5: the stride is on the 3x3
    assert not any(k.startswith(("fc.", "avgpool")) for k in backbone.state_dict())
    with pytest.raises(ValueError, match="output_stride"):
        TorchvisionResNet(output_stride=4)


def test_heads_detectron2_protocol_and_errors():
    shapes = {"fine": ShapeSpec(channels=8, stride=2), "coarse": ShapeSpec(channels=16, stride=8)}
    head = DeepWV3PlusHead(shapes, num_classes=3, ignore_value=255)
    assert head.aspp_rates == (12, 24, 36)
    features = {"fine": torch.randn(2, 8, 10, 12), "coarse": torch.randn(2, 16, 3, 3)}
    parts = head.decode(features)
    assert parts["aspp"].shape == (2, 1280, 3, 3) and parts["dec0"].shape == (2, 304, 10, 12)
    head.eval()
    logits, losses = head(features, output_size=(19, 23))
    assert logits.shape == (2, 3, 19, 23) and losses == {}
    assert head(features)[0].shape == (2, 3, 20, 24)
    head.train()
    targets = torch.randint(0, 3, (2, 19, 23))
    targets[:, 0] = 255
    none, losses = head(features, targets)
    assert none is None and losses["loss_sem_seg"].requires_grad
    with pytest.raises(ValueError, match="output stride 4"):
        DeepWV3PlusHead({"fine": shapes["fine"], "coarse": ShapeSpec(channels=16, stride=4)}, num_classes=3)
    with pytest.raises(ValueError, match="fine and a coarse"):
        DeepWV3PlusHead({"a": shapes["fine"]}, num_classes=3)

    raml = RAMLDeepLabV3PlusHead(
        {"layer1": ShapeSpec(channels=8, stride=4), "layer4": ShapeSpec(channels=16, stride=16)}, num_classes=5
    ).eval()
    assert raml.aspp.project[-1].p == 0.1
    assert [c[0].dilation for c in raml.aspp.convs[1:4]] == [(6, 6), (12, 12), (18, 18)]
    out = raml.predict({"layer1": torch.randn(1, 8, 9, 10), "layer4": torch.randn(1, 16, 3, 3)}, (35, 39))
    assert out["logits"].shape == (1, 5, 35, 39) and out["meta_channels"].shape == (1, 20, 35, 39)
    assert out["features"].shape == (1, 256, 9, 10)


def test_residual_block_returns_projection_only_in_training():
    block = ResidualAnomalyBlock(in_channels=16, aspp_channels=8, decoder_in_channels=12, proj_dim=12)
    x = torch.randn(2, 16, 4, 5)
    block.train()
    residual, proj = block(x, (13, 17))
    assert residual.shape == (2, 12, 13, 17) and proj.shape == (2, 12, 13, 17)
    block.eval()
    residual, proj = block(x, (13, 17))
    assert residual.shape == (2, 12, 13, 17) and proj is None
