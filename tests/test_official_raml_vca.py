"""RAML and VCA loss terms under their default (official) form against the unmodified official
code: value and every gradient of each case of tests/fixtures/official_losses (RAML's CDiceLoss
is float32-only in the official code; its cases are compared in float32 and in float64).

The terms are built from the plugin's config (defaults untouched), so these tests also pin that
the defaults are the official form."""
import pytest
import torch

import rba_plugin.modeling  # noqa: F401  (registers the config groups and terms)
from rba_plugin.config import get_cfg
from rba_plugin.modeling.loss_terms import PixelTargets
from rba_plugin.modeling.loss_terms.raml import (
    MCAInterLoss,
    MCAKnownLoss,
    MCAReconstructionLoss,
    MCASplitLoss,
    RAMLCircleLoss,
    RAMLClassifierLoss,
    RAMLSegLoss,
)
from rba_plugin.modeling.loss_terms.vca import VCACrossEntropy
from rba_plugin.modeling.pixel.vca import PrototypeClassifier
from tests.official_losses import description, official_case

# Gradients: max |ours - official| <= GRAD_RTOL * max |official| (norm-relative; float32 rounding
# makes an element-wise ratio meaningless where an element is near zero), and element-wise
# assert_close with rtol 1e-5 in float64.
GRAD_RTOL = 1e-5


def _cfg(num_classes: int, num_meta=None):
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.MCA.NUM_META = num_meta
    return cfg


def _check_grads(value, grads, tensors, float64: bool):
    ours = torch.autograd.grad(value, [tensors[k] for k in grads], allow_unused=True)
    for (name, want), got in zip(grads.items(), ours):
        got = torch.zeros_like(tensors[name]) if got is None else got
        got = got.double().reshape(want.shape)
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= GRAD_RTOL * max(scale, 1e-30), name
        if float64:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12 * max(scale, 1.0))


def _mca_terms(cfg):
    return [MCAKnownLoss(cfg), MCASplitLoss(cfg), MCAInterLoss(cfg)]


def _mca_outputs(pre, labels, dtype):
    pre = pre.detach().to(dtype).requires_grad_()
    return pre, {"meta_channels": pre.sigmoid()}, PixelTargets(labels)


# CDiceLoss(known_class=3) on 3 known + 2 meta channels: loss1 (known), loss2 (split), loss3
# (inter), loss = 0.1 (loss1 + loss2 + loss3); the plugin's terms carry the 0.1 each.
CDICE_KEYS = {"loss1": "loss_mca_known", "loss2": "loss_mca_split", "loss3": "loss_mca_inter"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["raml/cdice/loss1", "raml/cdice/loss2", "raml/cdice/loss3", "raml/cdice/loss",
                                  "raml/cdice_small_meta/loss2", "raml/cdice_small_meta/loss"])
def test_mca_cdice_equals_official(case, dtype):
    value, grads, inputs = official_case(case)
    assert "pre-sigmoid" in description("raml/cdice/loss1")  # the gradients are w.r.t. pre
    labels = official_case("raml/cdice/loss1")[2]["labels"]  # small_meta shares them
    pre, outputs, targets = _mca_outputs(inputs["pre"], labels, dtype)
    cfg = _cfg(num_classes=3, num_meta=2)
    losses = {}
    for term in _mca_terms(cfg):
        losses.update(term(outputs, targets))
    part = case.rsplit("/", 1)[1]
    ours = sum(losses.values()) if part == "loss" else losses[CDICE_KEYS[part]] / 0.1
    rtol = 1e-6 if dtype == torch.float32 else 1e-5  # float64 vs the official float32 rounding
    assert ours.item() == pytest.approx(value, rel=rtol, abs=1e-7)
    _check_grads(ours, grads, {"pre": pre}, float64=False)


def test_mca_default_channel_count_fills_twenty():
    # NUM_META None: 20 channels in all (the official conv3), so the fixture's 3 + 2 needs an
    # explicit NUM_META; 3 known classes alone give 17 meta channels.
    from rba_plugin.modeling.loss_terms.raml import mca_num_meta

    assert mca_num_meta(_cfg(num_classes=3)) == 17
    assert mca_num_meta(_cfg(num_classes=19)) == 1
    cfg = _cfg(num_classes=19)
    cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES = [13, 14, 15]
    assert mca_num_meta(cfg) == 4  # RAML's 16+3 setting: 16 known + 4 meta


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mca_reconstruction_equals_official(dtype):
    value, grads, inputs = official_case("raml/l_rec")
    pre = inputs["pre"].detach().to(dtype).requires_grad_()
    out = MCAReconstructionLoss(_cfg(3, 2))({"meta_channels": pre.sigmoid(), "images": inputs["X"].to(dtype)}, None)
    ours = out["loss_mca_rec"]
    assert ours.item() == pytest.approx(value, rel=1e-6)
    _check_grads(ours, grads, {"pre": pre}, float64=False)


def test_raml_seg_ce_equals_official_divided_by_batch():
    value, grads, inputs = official_case("raml/seg_ce_div_batch")
    cfg = _cfg(3)
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "cross_entropy"  # official utils/loss.py: plain CE (RAML configs set it)
    ours = RAMLSegLoss(cfg)({"logits": inputs["outputs"]}, PixelTargets(inputs["labels"]))["loss_sem_seg"]
    assert ours.item() == pytest.approx(value, rel=1e-12)
    _check_grads(ours, grads, inputs, float64=True)


def test_raml_circle_equals_official():
    value, grads, inputs = official_case("raml/circle_x0.1")
    outputs = {"region_embeddings": inputs["feat"], "region_labels": inputs["labels"]}
    ours = RAMLCircleLoss(_cfg(3))(outputs, None)["loss_raml_circle"]
    assert ours.item() == pytest.approx(value, rel=1e-12)
    _check_grads(ours, grads, inputs, float64=True)


def test_raml_metric_total_equals_official():
    value, grads, inputs = official_case("raml/metric_total")
    outputs = {"region_embeddings": inputs["feat"], "region_logits": inputs["cls_logits"],
               "region_labels": inputs["labels"]}
    cfg = _cfg(3)
    ours = RAMLCircleLoss(cfg)(outputs, None)["loss_raml_circle"]
    ours = ours + RAMLClassifierLoss(cfg)(outputs, None)["loss_raml_ce"]
    assert ours.item() == pytest.approx(value, rel=1e-12)
    _check_grads(ours, grads, inputs, float64=True)


@pytest.mark.parametrize("use_norm", [False, True])
def test_vca_loss_equals_official(use_norm):
    value, grads, inputs = official_case(f"vca/mahalanobis_loss/use_norm={use_norm}")
    cfg = get_cfg()
    cfg.MODEL.VCA.USE_NORM = use_norm
    clf = PrototypeClassifier(4, 3, sigma_param=cfg.MODEL.VCA.SIGMA_PARAMETRIZATION, eps=cfg.MODEL.VCA.SIGMA_EPS,
                              use_norm=use_norm).double()
    with torch.no_grad():
        clf.means.copy_(inputs["means"])
        clf.sigmas.copy_(inputs["sigmas"].reshape(-1))
        clf.unknown_logit.copy_(inputs["global_unknown"].reshape(()))
    embeddings = inputs["embeddings"]
    labels = inputs["gt"][:, 0].clone()
    before = labels.clone()
    logits = clf(embeddings)  # 3 x 3, nearest-upsampled to the 6 x 6 labels by the term
    ours = VCACrossEntropy(cfg)({"open_set_logits": logits}, PixelTargets(labels))["loss_vca_ce"]
    assert torch.equal(labels, before)  # the official relabels 254 -> C in place; we do not
    assert ours.item() == pytest.approx(value, rel=1e-12)
    params = {"embeddings": embeddings, "means": clf.means, "sigmas": clf.sigmas, "global_unknown": clf.unknown_logit}
    _check_grads(ours, grads, params, float64=True)
