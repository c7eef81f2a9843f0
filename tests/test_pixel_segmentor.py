"""PixelOODSegmentor: configs, building, the plain train / infer interface, errors."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_backbone, build_model, build_sem_seg_head

import rba_plugin.modeling.pixel  # noqa: F401
from rba_plugin.config import get_cfg
from tests.conftest import REPO_ROOT
from tests.pixel_utils import tiny_batch, tiny_pixel_cfg

SYNTH = sorted((REPO_ROOT / "configs" / "synthcity" / "pixel").glob("*.yaml"))
REAL = sorted((REPO_ROOT / "configs" / "cityscapes" / "pixel").rglob("*.yaml"))


def _load(path: Path):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.mark.parametrize("path", SYNTH + REAL, ids=lambda p: p.name)
def test_every_config_merges_into_get_cfg(path):
    cfg = _load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "PixelOODSegmentor"


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in SYNTH if not p.name.startswith("Base")], ids=lambda p: p.name)
def test_synthetic_configs_build_train_and_infer(path):
    cfg = _load(path)
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = tiny_batch(n=2, h=256, w=256, num_classes=19, seed=1)
    model.train()
    losses = model(batch)
    assert losses and all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    test = tiny_batch(n=1, h=256, w=512, num_classes=19, seed=2)
    with torch.no_grad():
        out = model(test)[0]
    assert out["sem_seg"].shape == (19, 256, 512)
    assert out["ood_score"].shape == (256, 512)
    assert torch.isfinite(out["ood_score"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in REAL if not p.name.startswith("Base")], ids=lambda p: p.name)
def test_real_scale_configs_build(path):
    cfg = _load(path)
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"  # SyncBN needs a process group
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 40e6  # a ResNet-101 DeepLabV3+ or the WideResNet-38 DeepWV3Plus


def test_piecewise_head_reproduces_detectron2_head_exactly():
    torch.manual_seed(0)
    model = build_model(tiny_pixel_cfg("ClosedSet"))
    model.eval()
    images = model.preprocess_image(tiny_batch(n=1, seed=3))
    with torch.no_grad():
        feats = model.backbone(images.tensor)
        ours = model.sem_seg_head.classify(model.sem_seg_head.decode(feats))
        theirs = model.sem_seg_head.layers(feats)
    assert torch.equal(ours, theirs)


def test_outputs_are_resized_to_the_original_size():
    cfg = tiny_pixel_cfg("ClosedSet")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()
    batch = tiny_batch(n=2, h=60, w=90, seed=3)  # padded to 64 x 96 inside
    batch[1]["height"], batch[1]["width"] = 120, 180
    with torch.no_grad():
        out = model(batch)
    assert out[0]["sem_seg"].shape == (4, 60, 90) and out[0]["ood_score"].shape == (60, 90)
    assert out[1]["sem_seg"].shape == (4, 120, 180) and out[1]["ood_score"].shape == (120, 180)
    # Max-logit score (higher = more anomalous) of the returned logits.
    torch.testing.assert_close(out[0]["ood_score"], -out[0]["sem_seg"].max(dim=0).values)


def _seeded_loss(model, batch):
    torch.manual_seed(123)  # the same ASPP dropout mask in every call
    return model(batch)["loss_sem_seg"]


def test_closed_set_ignores_pasted_outliers_and_held_out_classes():
    cfg = tiny_pixel_cfg("ClosedSet")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = tiny_batch(n=1, seed=4, with_outliers=False)
    clean = _seeded_loss(model, batch)
    pasted = tiny_batch(n=1, seed=4, with_outliers=False)
    pasted[0]["sem_seg"][30:40, 30:40] = 254
    # Equal to the loss with those pixels marked void.
    voided = tiny_batch(n=1, seed=4, with_outliers=False)
    voided[0]["sem_seg"][30:40, 30:40] = 255
    assert torch.equal(_seeded_loss(model, pasted), _seeded_loss(model, voided))
    assert not torch.equal(clean, _seeded_loss(model, voided))
    cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES = [2]
    torch.manual_seed(0)
    held = build_model(cfg)
    held.load_state_dict(model.state_dict())
    held.train()
    no2 = tiny_batch(n=1, seed=4, with_outliers=False)
    no2[0]["sem_seg"][no2[0]["sem_seg"] == 2] = 255
    assert torch.equal(_seeded_loss(held, batch), _seeded_loss(model, no2))
    assert not torch.equal(_seeded_loss(held, batch), _seeded_loss(model, batch))


def test_unknown_method_names_the_key():
    cfg = tiny_pixel_cfg("NoSuchMethod")
    with pytest.raises(ValueError, match="MODEL.PIXEL_OOD.METHOD"):
        build_model(cfg)


def test_training_needs_sem_seg():
    torch.manual_seed(0)
    model = build_model(tiny_pixel_cfg("ClosedSet"))
    model.train()
    batch = tiny_batch(n=1)
    del batch[0]["sem_seg"]
    with pytest.raises(ValueError, match="sem_seg"):
        model(batch)


def _d2_deeplab(paths):
    return [p for p in paths if _load(p).MODEL.SEM_SEG_HEAD.NAME == "PixelDeepLabV3PlusHead"]


@pytest.mark.parametrize("path", [p for p in _d2_deeplab(SYNTH + REAL) if p.name.startswith("closed_set") and "+" not in p.name],
                         ids=lambda p: p.name)
def test_head_runs_on_any_feature_size_with_the_official_global_pooling(path):
    # The official DeepLabV3+ networks pool the ASPP's image branch globally (AdaptiveAvgPool2d(1)),
    # so every size runs: here the feature maps of a 720x1280 Road Anomaly frame (refused before
    # with the Cityscapes crop), a 4:3 photo and a training crop. Computed independently: the
    # branch's 1x1 conv + ReLU on the spatial mean. (Every method config takes its base's head;
    # the official WideResNet-38 head is checked against its fixtures.)
    cfg = _load(path)
    with torch.device("meta"):
        shapes = build_backbone(cfg).output_shape()
    torch.manual_seed(0)
    head = build_sem_seg_head(cfg, shapes).eval()
    aspp = head.aspp
    assert aspp.pool_kernel_size is None
    for height, width in [(720, 1280), (480, 640), tuple(cfg.INPUT.CROP.SIZE)]:
        features = {name: torch.randn(1, shape.channels, -(-height // shape.stride), -(-width // shape.stride))
                    for name, shape in shapes.items() if name in head.in_features}
        coarse = features[head.coarse_feature]
        with torch.no_grad():
            pooled = aspp.convs[-1](coarse)  # the image-pooling branch, before upsampling
            conv = aspp.convs[-1][1]
            expected = torch.relu(torch.einsum("oc,nc->no", conv.weight[:, :, 0, 0], coarse.mean((2, 3))) + conv.bias)
            assert pooled.shape[-2:] == (1, 1)
            torch.testing.assert_close(pooled[:, :, 0, 0], expected, rtol=1e-4, atol=1e-5)
            logits = head.layers(features)
        assert logits.shape[-2:] == features[head.finest_feature].shape[-2:]


def test_global_pooling_equals_detectron2s_window_on_training_crops():
    # Training is unchanged: on a crop, Detectron2's window (crop / stride) is the whole map.
    from detectron2.layers import ASPP

    cfg = tiny_pixel_cfg("ClosedSet")
    torch.manual_seed(0)
    head = build_model(cfg).sem_seg_head.eval()
    crop_h, crop_w = 256 // 16, 512 // 16
    window = ASPP(head.coarse_in_channels, head.aspp.convs[0].out_channels, cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS,
                  norm=cfg.MODEL.SEM_SEG_HEAD.NORM, activation=torch.nn.functional.relu,
                  pool_kernel_size=(crop_h, crop_w), dropout=cfg.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT).eval()
    window.load_state_dict(head.aspp.state_dict())
    x = torch.randn(2, head.coarse_in_channels, crop_h, crop_w)
    with torch.no_grad():
        torch.testing.assert_close(head.aspp(x), window(x), rtol=1e-6, atol=1e-6)


def test_param_groups_hold_only_trainable_parameters_with_the_method_factors():
    from rba_plugin.engine import build_optimizer

    cfg = tiny_pixel_cfg("RPL")
    cfg.SOLVER.BASE_LR = 1e-4
    model = build_model(cfg)
    groups = build_optimizer(cfg, model).param_groups
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    low, high = sorted(by_lr)
    assert low == pytest.approx(1e-4) and high == pytest.approx(1e-4 * cfg.MODEL.RPL.EXPAND_LR_MULT)
    expand = {id(model.ood_method.residual_block.expand.weight)}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert by_lr[high] == expand and by_lr[low] | expand == trainable and not (by_lr[low] & expand)
    assert build_model(tiny_pixel_cfg("PEBAL")).lr_factors() == {}
