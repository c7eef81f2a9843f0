"""RPL + CoroCL: losses against hand computations; frozen closed-set path; what trains."""
import math

import pytest
import torch
from detectron2.modeling import build_model

import rba_plugin.modeling.pixel  # noqa: F401  (registers the architecture)
from rba_plugin.modeling.pixel.rpl_losses import (
    corocl_loss,
    positive_energy_loss,
    rpl_inlier_losses,
    sample_pixel_embeddings,
    softmax_entropy,
)
from tests.pixel_utils import state_snapshot, tiny_batch, tiny_pixel_cfg, train_steps


def _entropy(ps):
    return -sum(p * math.log(p) for p in ps)


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_softmax_entropy_hand():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    assert softmax_entropy(logits).item() == pytest.approx(_entropy([0.25, 0.75]), abs=1e-6)


def test_rpl_inlier_losses_hand():
    # Two pixels; pixel 1 is not inlier and must not count.
    rpl = torch.tensor([[1.0, 0.0], [0.0, 5.0]]).t().reshape(1, 2, 1, 2)  # pixel0: (1, 0), pixel1: (0, 5)
    base = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).t().reshape(1, 2, 1, 2)  # pixel0: (0, 2) -> pseudo label 1
    inlier = torch.tensor([[[True, False]]])
    ce, dis = rpl_inlier_losses(rpl, base, inlier, entropy_t=2.0)
    p_rpl = _softmax([1.0, 0.0])
    p_base = _softmax([0.0, 2.0])
    assert ce.item() == pytest.approx(-math.log(p_rpl[1]), abs=1e-6)
    assert dis.item() == pytest.approx(((_entropy(p_base) - _entropy(p_rpl)) / 2.0) ** 2, abs=1e-6)
    # Ground-truth targets instead of pseudo-labels.
    ce_gt, _ = rpl_inlier_losses(rpl, base, inlier, targets=torch.tensor([[[0, 0]]]))
    assert ce_gt.item() == pytest.approx(-math.log(p_rpl[0]), abs=1e-6)


def test_rpl_inlier_losses_empty_mask_is_zero_with_gradient():
    rpl = torch.randn(1, 3, 2, 2, requires_grad=True)
    ce, dis = rpl_inlier_losses(rpl, torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    assert ce.item() == 0.0 and dis.item() == 0.0
    (ce + dis).backward()
    assert torch.equal(rpl.grad, torch.zeros_like(rpl))


def test_positive_energy_hand_and_empty():
    # pixel0 (outlier): logsumexp(0, ln 3) = ln 4 > 0 -> ln 4; pixel1 (outlier): logsumexp(-5,-5) < 0 -> 0;
    # pixel2 (inlier) ignored.
    logits = torch.tensor([[0.0, math.log(3.0)], [-5.0, -5.0], [9.0, 9.0]]).t().reshape(1, 2, 1, 3)
    mask = torch.tensor([[[True, True, False]]])
    assert positive_energy_loss(logits, mask).item() == pytest.approx(math.log(4.0) / 2, abs=1e-6)
    x = logits.clone().requires_grad_(True)
    empty = positive_energy_loss(x, torch.zeros_like(mask))
    assert empty.item() == 0.0 and not torch.isnan(empty)
    empty.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def _corocl_by_hand(anchors, a_lab, contrast, c_lab, tau, positions):
    total, count = 0.0, 0
    for i, r in enumerate(anchors):
        neg = sum(math.exp(float(r @ n) / tau) for n, l in zip(contrast, c_lab) if l != a_lab[i])
        terms = []
        for j, (p, l) in enumerate(zip(contrast, c_lab)):
            if l != a_lab[i] or j == positions[i]:
                continue
            e = math.exp(float(r @ p) / tau)
            terms.append(-math.log(e / (e + neg)))
        if terms:
            total += sum(terms) / len(terms)
            count += 1
    return total / count


def test_corocl_hand():
    g = torch.Generator().manual_seed(0)
    contrast = torch.nn.functional.normalize(torch.randn(6, 3, generator=g), dim=1)
    c_lab = torch.tensor([1, 1, 0, 0, 1, 0])
    anchors, a_lab, positions = contrast[:4], c_lab[:4], torch.arange(4)
    got = corocl_loss(anchors, a_lab, contrast, c_lab, tau=0.1, anchor_positions=positions)
    want = _corocl_by_hand(anchors.double(), a_lab.tolist(), contrast.double(), c_lab.tolist(), 0.1, positions.tolist())
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_corocl_without_positives_or_samples_is_zero():
    a = torch.nn.functional.normalize(torch.randn(2, 3), dim=1).requires_grad_(True)
    # Each anchor is its own only same-label entry -> no positive once self-pairs are dropped.
    loss = corocl_loss(a, torch.tensor([0, 1]), a, torch.tensor([0, 1]), tau=0.1, anchor_positions=torch.arange(2))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    empty = corocl_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), a, torch.tensor([0, 1]))
    assert empty.item() == 0.0


def test_sample_pixel_embeddings_counts_and_membership():
    emb = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 0, :] = True
    mask[1, 2, 2] = True
    allowed = {0.0, 1.0, 2.0, 17.0}
    picked = sample_pixel_embeddings(emb, mask, max_views=3, generator=torch.Generator().manual_seed(1))
    assert picked.shape == (3, 1) and set(picked.flatten().tolist()) <= allowed
    assert len(set(picked.flatten().tolist())) == 3  # without replacement
    assert sample_pixel_embeddings(emb, mask, max_views=10).shape == (4, 1)


@pytest.fixture(scope="module")
def base_state():
    torch.manual_seed(0)
    base = build_model(tiny_pixel_cfg("ClosedSet"))
    # Train the base a little so its BN statistics and weights are not at initialisation.
    train_steps(base, [tiny_batch(seed=3)], steps=2)
    return state_snapshot(base)


@pytest.fixture
def closed_set_and_rpl(base_state):
    base = build_model(tiny_pixel_cfg("ClosedSet"))
    base.load_state_dict(base_state)
    torch.manual_seed(1)
    rpl = build_model(tiny_pixel_cfg("RPL"))
    incompatible = rpl.load_state_dict(base_state, strict=False)
    return base, rpl, incompatible


def test_rpl_loads_closed_set_checkpoint_and_copies_aspp(closed_set_and_rpl):
    base, rpl, incompatible = closed_set_and_rpl
    assert not incompatible.unexpected_keys
    # Only the expand conv and the projector are new; the residual ASPP came from the head's.
    assert all(k.startswith(("ood_method.residual_block.expand", "ood_method.residual_block.projector")) for k in incompatible.missing_keys)
    head_aspp = base.sem_seg_head.decoder["res5"]["project_conv"].state_dict()
    for k, v in rpl.ood_method.residual_block.aspp.state_dict().items():
        assert torch.equal(v, head_aspp[k]), k


def test_rpl_trains_only_the_residual_block(closed_set_and_rpl):
    _, rpl, _ = closed_set_and_rpl
    before = state_snapshot(rpl)
    # Raw outlier images for CoroCL; both images hold an outlier, so the official gate passes.
    batches = [tiny_batch(seed=s, raw_outliers=True) for s in range(2)]
    losses = train_steps(rpl, batches, steps=3)
    assert set(losses) == {"loss_rpl_inlier_ce", "loss_rpl_entropy_dis", "loss_rpl_positive_energy", "loss_corocl"}
    after = rpl.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(k.startswith("ood_method.residual_block.") for k in changed), sorted(changed)[:5]
    assert any(k.startswith("ood_method.residual_block.expand") for k in changed)
    assert any(k.startswith("ood_method.residual_block.projector") for k in changed)
    assert any("running_mean" in k for k in changed)  # the residual ASPP's own BN trains


def test_rpl_closed_set_prediction_is_bit_identical(closed_set_and_rpl):
    base, rpl, _ = closed_set_and_rpl
    train_steps(rpl, [tiny_batch(seed=5)], steps=2)
    base.eval()
    rpl.eval()
    batch = tiny_batch(seed=9, h=64, w=96)
    batch[0]["height"], batch[0]["width"] = 80, 120  # resized back to another original size
    with torch.no_grad():
        out_base, out_rpl = base(batch), rpl(batch)
    for a, b in zip(out_base, out_rpl):
        assert torch.equal(a["sem_seg"], b["sem_seg"])
        assert b["sem_seg"].shape == (4, a["sem_seg"].shape[1], a["sem_seg"].shape[2])
        assert b["ood_score"].shape == a["sem_seg"].shape[1:]
    assert out_rpl[0]["sem_seg"].shape[1:] == (80, 120)
    # The RPL score differs from the base score: the residual is active.
    assert not torch.equal(out_base[0]["ood_score"], out_rpl[0]["ood_score"])


def test_rpl_score_is_smoothed_energy_of_rpl_logits(closed_set_and_rpl):
    from rba_plugin.modeling.ood.scores import gaussian_smooth

    _, rpl, _ = closed_set_and_rpl
    rpl.eval()
    batch = tiny_batch(n=1, seed=2)
    with torch.no_grad():
        out = rpl(batch)[0]
        images = rpl.preprocess_image(batch)
        feats = rpl.backbone(images.tensor)
        head = rpl.sem_seg_head
        dec_in = head.decode(feats)
        residual, _ = rpl.ood_method.residual_block(feats["res5"], dec_in.shape[-2:])
        rpl_logits = head.predictor(head.decoder["res2"]["fuse_conv"](dec_in + residual))
        up = torch.nn.functional.interpolate(rpl_logits, scale_factor=4, mode="bilinear", align_corners=False)
        energy = -torch.logsumexp(up, dim=1)
        want = gaussian_smooth(energy, kernel_size=7, sigma=1.0)[0]
    torch.testing.assert_close(out["ood_score"], want)


def test_rpl_corocl_uses_raw_outlier_images(closed_set_and_rpl):
    _, rpl, _ = closed_set_and_rpl
    batch = tiny_batch(seed=4)
    for i, x in enumerate(batch):
        x["outlier_image"] = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
        sem = torch.zeros(48, 48, dtype=torch.long)
        sem[10:30, 10:30] = 254
        x["outlier_sem_seg"] = sem
    rpl.train()
    torch.manual_seed(0)
    with_raw = rpl(batch)["loss_corocl"]
    for x in batch:
        del x["outlier_image"], x["outlier_sem_seg"]
    torch.manual_seed(0)
    without = rpl(batch)["loss_corocl"]
    assert torch.isfinite(with_raw) and with_raw.item() != without.item()


def test_rpl_without_outliers_has_zero_outlier_terms(closed_set_and_rpl):
    _, rpl, _ = closed_set_and_rpl
    rpl.train()
    losses = rpl(tiny_batch(with_outliers=False))
    assert losses["loss_rpl_positive_energy"].item() == 0.0
    assert losses["loss_corocl"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_rpl_bad_inlier_target_names_the_key():
    cfg = tiny_pixel_cfg("RPL")
    cfg.MODEL.RPL.INLIER_TARGET = "labels"
    with pytest.raises(ValueError, match="MODEL.RPL.INLIER_TARGET"):
        build_model(cfg)


def test_rpl_starts_from_a_closed_set_checkpoint_file(tmp_path, base_state):
    from detectron2.checkpoint import DetectionCheckpointer

    base = build_model(tiny_pixel_cfg("ClosedSet"))
    base.load_state_dict(base_state)
    DetectionCheckpointer(base, save_dir=str(tmp_path)).save("model_final")
    rpl = build_model(tiny_pixel_cfg("RPL"))
    DetectionCheckpointer(rpl).load(str(tmp_path / "model_final.pth"))
    head_aspp = base.sem_seg_head.decoder["res5"]["project_conv"].state_dict()
    for k, v in rpl.ood_method.residual_block.aspp.state_dict().items():
        assert torch.equal(v, head_aspp[k]), k
    for k, v in base.state_dict().items():
        assert torch.equal(v, rpl.state_dict()[k]), k
    # With the option off, the residual ASPP keeps its own initialisation.
    cfg = tiny_pixel_cfg("RPL")
    cfg.MODEL.RPL.INIT_FROM_HEAD_ASPP = False
    fresh = build_model(cfg)
    w = fresh.ood_method.residual_block.aspp.convs[0].weight.clone()
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    assert torch.equal(fresh.ood_method.residual_block.aspp.convs[0].weight, w)
