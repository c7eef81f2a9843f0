"""PEBAL on DeepLabV3+: loss wiring against hand formulas; only the final block trains."""
import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from detectron2.modeling import build_model

import rba_plugin.modeling.pixel  # noqa: F401
from tests.pixel_utils import state_snapshot, tiny_batch, tiny_pixel_cfg, train_steps


@pytest.fixture(scope="module")
def base_state():
    torch.manual_seed(0)
    base = build_model(tiny_pixel_cfg("ClosedSet"))
    train_steps(base, [tiny_batch(seed=3)], steps=2)
    return state_snapshot(base)


def _pebal(base_state, **overrides):
    cfg = tiny_pixel_cfg("PEBAL")
    for k, v in overrides.items():
        setattr(cfg.MODEL.PEBAL, k, v)
    torch.manual_seed(1)
    model = build_model(cfg)
    incompatible = model.load_state_dict(base_state, strict=False)
    assert sorted(incompatible.missing_keys) == ["ood_method.abstain.bias", "ood_method.abstain.weight"]
    return model


def _model_logits(model, batch):
    with torch.no_grad():
        images = model.preprocess_image(batch)
        return model.ood_method.logits(model.sem_seg_head, model.sem_seg_head.decode(model.backbone(images.tensor)))


def _official_hand(logits, targets, C):
    """PEBAL's code written out independently (losses.py Gambler / energy_loss, trainer.py):
    the abstention loss averaged over the clean images and over the images with outliers
    separately, penalty = 7x7 sigma-1 Gaussian blur (reflect borders, scipy) of LSE^2, and
    0.1 x (hinge + 5e-4 ||E_O|| + 3e-6 x 0.5 sum dE^2)."""
    p = logits.softmax(dim=1)
    E = -torch.logsumexp(logits[:, :C], dim=1)
    blurred = torch.from_numpy(np.stack([
        scipy.ndimage.gaussian_filter(e.numpy() ** 2, sigma=1.0, mode="mirror", truncate=3.0) for e in E]))
    a = p[:, C] / blurred
    out = targets == 254
    inl = (targets != 255) & ~out
    pal = 0.0
    has_out = [bool(out[n].any()) for n in range(len(targets))]
    for with_outliers in (False, True):
        group = [n for n in range(len(targets)) if has_out[n] == with_outliers]
        if not group:
            continue
        # Clean images hold no outlier pixel, so their inlier set is every non-void pixel.
        ins = [-math.log(p[n, targets[n, i, j], i, j] + a[n, i, j]) for n in group for i, j in inl[n].nonzero().tolist()]
        pal += sum(ins) / len(ins)
        if with_outliers:
            outs = [-math.log(max(p[n, c, i, j] + a[n, i, j], 1e-7)) for n in group
                    for i, j in out[n].nonzero().tolist() for c in range(C)]
            pal += 0.1 * sum(outs) / len(outs)
    h_in = torch.relu(E[inl] + 12.0).pow(2).mean()
    if out.any():
        energy = 0.5 * (h_in + torch.relu(-6.0 - E[out]).pow(2).mean()) + 5e-4 * E[out].pow(2).sum().sqrt()
    else:
        energy = h_in
    energy = energy + 3e-6 * 0.5 * (((E[:, 1:] - E[:, :-1]) ** 2).sum() + ((E[:, :, 1:] - E[:, :, :-1]) ** 2).sum())
    return pal, 0.1 * energy


def test_pebal_losses_match_the_official_code_written_out(base_state):
    model = _pebal(base_state)
    model.train()
    batch = tiny_batch(n=2, h=32, w=32, with_outliers=False, seed=2)
    batch[1]["sem_seg"][10:20, 10:20] = 254  # one clean image, one with an outlier
    losses = model(batch)
    logits = _model_logits(model, batch).double()
    targets = torch.stack([b["sem_seg"] for b in batch])
    pal, energy = _official_hand(logits, targets, 4)
    assert losses["loss_pebal_pal"].item() == pytest.approx(pal, rel=1e-4)
    energy_terms = losses["loss_pebal_energy"] + losses["loss_pebal_smooth"] + losses["loss_pebal_sparsity"]
    assert energy_terms.item() == pytest.approx(energy.item(), rel=1e-4)
    assert all(torch.isfinite(v) for v in losses.values())


def test_pebal_paper_form_matches_the_paper_formulas(base_state):
    """PEBAL Eqs. 2-8 with per-pixel means: PAL with a = E^2, outliers over all K+1 labels at
    weight 1, lambda 0.1 on the hinge, beta1 5e-4 mean |dE|, beta2 3e-6 mean |E|."""
    model = _pebal(base_state, FORM="paper")
    model.train()
    batch = tiny_batch(n=1, h=32, w=32, seed=2)
    batch[0]["sem_seg"][10:20, 10:20] = 254
    losses = model(batch)
    logits = _model_logits(model, batch).double()
    targets = batch[0]["sem_seg"][None]
    C = 4
    p = logits.softmax(dim=1)
    E = -torch.logsumexp(logits[:, :C], dim=1)
    a = p[:, C] / E**2
    out = targets == 254
    inl = (targets != 255) & ~out
    ins = [-torch.log(p[n, targets[n, i, j], i, j] + a[n, i, j]) for n, i, j in inl.nonzero().tolist()]
    outs = [torch.stack([-torch.log(p[n, c, i, j] + a[n, i, j]) for c in range(C + 1)]).mean()
            for n, i, j in out.nonzero().tolist()]
    pal = torch.stack(ins).mean() + torch.stack(outs).mean()
    hinge = torch.relu(E[inl] + 12).pow(2).mean() + torch.relu(-6 - E[out]).pow(2).mean()
    dy, dx = E[:, 1:] - E[:, :-1], E[:, :, 1:] - E[:, :, :-1]
    smooth = (dy.abs().sum() + dx.abs().sum()) / (dy.numel() + dx.numel())
    torch.testing.assert_close(losses["loss_pebal_pal"].double(), pal, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss_pebal_energy"].double(), 0.1 * hinge, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss_pebal_smooth"].double(), 5e-4 * smooth, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(losses["loss_pebal_sparsity"].double(), 3e-6 * E.abs().mean(), rtol=1e-4, atol=1e-12)


def test_pebal_trains_only_the_final_classification_block(base_state):
    model = _pebal(base_state)
    before = state_snapshot(model)
    train_steps(model, [tiny_batch(seed=s) for s in range(2)], steps=3, lr=1e-3)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = ("sem_seg_head.decoder.res2.fuse_conv.", "sem_seg_head.predictor.", "ood_method.abstain.")
    assert all(k.startswith(allowed) for k in changed), sorted(k for k in changed if not k.startswith(allowed))[:5]
    for prefix in allowed:
        assert any(k.startswith(prefix) for k in changed), prefix
    # The final block's BatchNorm trains too (it belongs to the block), the frozen ones do not.
    assert any(k.startswith("sem_seg_head.decoder.res2.fuse_conv.") and "running_mean" in k for k in changed)


def test_pebal_inference_uses_inlier_logits_and_energy(base_state):
    base = build_model(tiny_pixel_cfg("ClosedSet"))
    base.load_state_dict(base_state)
    model = _pebal(base_state)
    base.eval()
    model.eval()
    batch = tiny_batch(n=1, seed=7)
    with torch.no_grad():
        out, ref = model(batch)[0], base(batch)[0]
    # Untrained PEBAL: the inlier logits are the closed-set model's, bit for bit.
    assert torch.equal(out["sem_seg"], ref["sem_seg"])
    from rba_plugin.modeling.ood.scores import gaussian_smooth

    torch.testing.assert_close(out["ood_score"], gaussian_smooth(-torch.logsumexp(out["sem_seg"], dim=0), 7, 1.0))


@pytest.mark.parametrize("key,value", [("FORM", "code")])
def test_pebal_bad_option_names_the_key(key, value):
    cfg = tiny_pixel_cfg("PEBAL")
    setattr(cfg.MODEL.PEBAL, key, value)
    with pytest.raises(ValueError, match=f"MODEL.PEBAL.{key}"):
        build_model(cfg)
