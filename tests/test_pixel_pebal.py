"""PEBAL on DeepLabV3+: loss wiring against hand formulas; only the final block trains."""
import pytest
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


def _hand_losses(logits, targets, C, *, outlier_weight, m_in, m_out, b1, b2):
    """PEBAL Eqs. 2-8 written out independently (means over each pixel set, sums for Eq. 8)."""
    p = logits.softmax(dim=1)
    E = -torch.logsumexp(logits[:, :C], dim=1)
    a = E**2
    out = targets == 254
    inl = (targets != 255) & ~out
    p_abs = p[:, C] / a
    terms_in = []
    for n, i, j in inl.nonzero().tolist():
        terms_in.append(-torch.log(p[n, targets[n, i, j], i, j] + p_abs[n, i, j]))
    terms_out = []
    for n, i, j in out.nonzero().tolist():
        terms_out.append(torch.stack([-torch.log(p[n, c, i, j] + p_abs[n, i, j]) for c in range(C + 1)]).mean())
    pal = torch.stack(terms_in).mean() + (outlier_weight * torch.stack(terms_out).mean() if terms_out else 0.0)
    hinge = torch.relu(E[inl] - m_in).pow(2).mean() + (torch.relu(m_out - E[out]).pow(2).mean() if out.any() else 0.0)
    smooth = (E[:, 1:, :] - E[:, :-1, :]).abs().sum() + (E[:, :, 1:] - E[:, :, :-1]).abs().sum()
    sparse = E.abs().sum()
    return {"pal": pal, "hinge": 0.1 * hinge, "smooth": b1 * smooth, "sparse": b2 * sparse}


@pytest.mark.parametrize("with_outliers", [True, False])
def test_pebal_losses_match_the_paper_formulas(base_state, with_outliers):
    model = _pebal(base_state)
    model.train()
    batch = tiny_batch(n=1, h=32, w=32, with_outliers=with_outliers, seed=2)
    if with_outliers:
        batch[0]["sem_seg"][10:20, 10:20] = 254
    losses = model(batch)
    with torch.no_grad():
        images = model.preprocess_image(batch)
        logits = model.ood_method.logits(model.sem_seg_head, model.sem_seg_head.decode(model.backbone(images.tensor)))
    want = _hand_losses(logits.double(), batch[0]["sem_seg"][None], 4, outlier_weight=1.0, m_in=-12.0, m_out=-6.0, b1=5e-4, b2=3e-6)
    torch.testing.assert_close(losses["loss_pebal_pal"].double(), torch.as_tensor(want["pal"]).double(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss_pebal_energy"].double(), torch.as_tensor(want["hinge"]).double(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss_pebal_smooth"].double(), want["smooth"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(losses["loss_pebal_sparsity"].double(), want["sparse"], rtol=1e-4, atol=1e-9)
    assert all(torch.isfinite(v) for v in losses.values())


def test_pebal_code_options_reach_the_losses(base_state):
    model = _pebal(base_state, SMOOTH_WEIGHT=3e-6, SPARSITY_WEIGHT=5e-4, SMOOTH_NORM="l2", SPARSITY_NORM="l2", SPARSITY_ON="outlier")
    model.train()
    batch = tiny_batch(n=1, h=32, w=32, seed=2)
    batch[0]["sem_seg"][10:20, 10:20] = 254
    losses = model(batch)
    with torch.no_grad():
        images = model.preprocess_image(batch)
        logits = model.ood_method.logits(model.sem_seg_head, model.sem_seg_head.decode(model.backbone(images.tensor)))
    E = -torch.logsumexp(logits[:, :4], dim=1)
    smooth = 0.5 * ((E[:, 1:] - E[:, :-1]) ** 2).sum() + 0.5 * ((E[:, :, 1:] - E[:, :, :-1]) ** 2).sum()
    sparse = E[batch[0]["sem_seg"][None] == 254].pow(2).sum().sqrt()
    torch.testing.assert_close(losses["loss_pebal_smooth"], 3e-6 * smooth, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(losses["loss_pebal_sparsity"], 5e-4 * sparse, rtol=1e-4, atol=1e-9)


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


@pytest.mark.parametrize("key,value", [("SMOOTH_NORM", "l3"), ("SPARSITY_ON", "inlier"), ("REG_REDUCTION", "max")])
def test_pebal_bad_option_names_the_key(key, value):
    cfg = tiny_pixel_cfg("PEBAL")
    setattr(cfg.MODEL.PEBAL, key, value)
    with pytest.raises(ValueError, match=f"MODEL.PEBAL.{key}"):
        build_model(cfg)
