"""VCA prototype baseline: classifier (official and former forms), loss, SupCon against hand
computations; initialisation, checkpoint conversion, training scope."""
import math

import pytest
import torch
from detectron2.modeling import build_model

import rba_plugin.modeling.pixel  # noqa: F401
from rba_plugin.modeling.pixel.contrastive import supcon_loss
from rba_plugin.evaluation import UnknownIoU
from rba_plugin.modeling.loss_terms import PixelTargets
from rba_plugin.modeling.loss_terms.vca import VCACrossEntropy
from rba_plugin.modeling.pixel.vca import PrototypeClassifier
from torch.nn import functional as F
from tests.pixel_utils import state_snapshot, tiny_batch, tiny_pixel_cfg, train_steps


def _classifier(sigma_param="direct", eps=1e-10, use_norm=False, squared=False, dtype=torch.float64):
    return PrototypeClassifier(embed_dim=2, num_classes=2, squared_distance=squared, sigma_param=sigma_param, eps=eps,
                               use_norm=use_norm).to(dtype)


def test_prototype_classifier_hand():
    # Official: l_k = -||f - mu_k|| / (2 sigma_k^2 + 1e-10), sigma learnt directly.
    clf = _classifier()
    with torch.no_grad():
        clf.means.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        clf.sigmas.copy_(torch.tensor([1.0, -2.0]))  # sigma may cross 0; only sigma^2 matters
        clf.unknown_logit.fill_(-1.5)
    f = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64).t().reshape(1, 2, 1, 2)  # pixels (0,0), (3,0)
    logits = clf(f)
    d1, d2 = 2 + 1e-10, 8 + 1e-10
    want = torch.tensor([[0.0, -5.0 / d2, -1.5], [-3.0 / d1, -4.0 / d2, -1.5]], dtype=torch.float64)
    want = want.t().reshape(1, 3, 1, 2)
    torch.testing.assert_close(logits, want, rtol=1e-15, atol=0)
    # The former head: log sigma, no epsilon, optionally the squared distance.
    old = _classifier(sigma_param="log", eps=0.0)
    with torch.no_grad():
        old.means.copy_(clf.means)
        old.log_sigmas.copy_(torch.tensor([0.0, math.log(2.0)]))
        old.unknown_logit.fill_(-1.5)
    want = torch.tensor([[0.0, -5.0 / 8.0, -1.5], [-3.0 / 2.0, -4.0 / 8.0, -1.5]], dtype=torch.float64)
    want = want.t().reshape(1, 3, 1, 2)
    torch.testing.assert_close(old(f), want)
    old.squared_distance = True
    want_sq = torch.tensor([[0.0, -25.0 / 8.0, -1.5], [-9.0 / 2.0, -16.0 / 8.0, -1.5]], dtype=torch.float64)
    want_sq = want_sq.t().reshape(1, 3, 1, 2)
    torch.testing.assert_close(old(f), want_sq)


def test_prototype_classifier_cosine_hand():
    # use_norm: l_k = -cos(f, mu_k) / (2 sigma_k^2 + 1e-10) (the official sign: the least
    # similar prototype gets the largest logit).
    clf = _classifier(use_norm=True)
    with torch.no_grad():
        clf.means.copy_(torch.tensor([[1.0, 0.0], [3.0, 4.0]]))
        clf.sigmas.copy_(torch.tensor([1.0, 0.5]))
        clf.unknown_logit.fill_(0.25)
    f = torch.tensor([[2.0, 0.0], [0.0, -1.0]], dtype=torch.float64).t().reshape(1, 2, 1, 2)
    cos = [[1.0, 0.6], [0.0, -0.8]]
    den = [2 + 1e-10, 0.5 + 1e-10]
    want = torch.tensor([[-cos[p][0] / den[0], -cos[p][1] / den[1], 0.25] for p in range(2)], dtype=torch.float64)
    torch.testing.assert_close(clf(f)[0, :, 0].t(), want, rtol=1e-15, atol=1e-15)


def test_vca_spec_example():
    # C = 1, D = 2, mu = (3, 4), sigma = 1, gamma = 0; two pixels with e = 0 labelled 0 and 254:
    # l_0 = -5 / (2 + 1e-10) = -2.5; CE = (log(1 + e^2.5) + log(1 + e^-2.5)) / 2 = 1.328890.
    clf = PrototypeClassifier(2, 1).double()
    with torch.no_grad():
        clf.means.copy_(torch.tensor([[3.0, 4.0]]))
        clf.sigmas.fill_(1.0)
        clf.unknown_logit.fill_(0.0)
    logits = clf(torch.zeros(1, 2, 1, 2, dtype=torch.float64))
    labels = torch.tensor([[[0, 254]]])
    loss = VCACrossEntropy(upsampling="nearest")({"open_set_logits": logits}, PixelTargets(labels))["loss_vca_ce"]
    want = (math.log1p(math.exp(2.5)) + math.log1p(math.exp(-2.5))) / 2
    assert want == pytest.approx(1.328890, abs=1e-6)
    assert loss.item() == pytest.approx(want, rel=1e-9)


def test_vca_loss_upsamples_nearest_and_keeps_the_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([[[0, 1, 254, 2], [1, 255, 0, 0], [2, 2, 254, 1], [0, 1, 1, 255]]])
    before = labels.clone()
    got = VCACrossEntropy(upsampling="nearest")({"open_set_logits": logits}, PixelTargets(labels))["loss_vca_ce"]
    assert torch.equal(labels, before)  # the official code relabels in place; we copy
    # By hand: label pixel (y, x) reads logit cell (y // 2, x // 2); 254 is class 2 (C = 2 known).
    terms = []
    for y in range(4):
        for x in range(4):
            t = int(labels[0, y, x])
            if t == 255:
                continue
            t = 2 if t == 254 else t
            col = logits[0, :, y // 2, x // 2]
            terms.append(float(torch.logsumexp(col, 0) - col[t]))
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    bilinear = VCACrossEntropy(upsampling="bilinear")({"open_set_logits": logits}, PixelTargets(labels))["loss_vca_ce"]
    up = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=False)
    want = F.cross_entropy(up, labels.masked_fill(labels == 254, 2), ignore_index=255)
    assert bilinear.item() == pytest.approx(want.item(), rel=1e-12)


def test_vca_initialisation_follows_the_official_head():
    torch.manual_seed(0)
    big = PrototypeClassifier(embed_dim=4, num_classes=20000)
    assert big.sigmas.std().item() == pytest.approx(0.01, rel=0.03)  # N(0, 0.01), learnt directly
    assert abs(big.sigmas.mean().item()) < 1e-3
    assert big.means.std().item() == pytest.approx(0.01, rel=0.03)
    unknown = torch.stack([PrototypeClassifier(1, 1).unknown_logit.detach() for _ in range(2000)])
    assert unknown.std().item() == pytest.approx(0.01, rel=0.1)  # gamma ~ N(0, 0.01)
    log = PrototypeClassifier(4, 3, sigma_param="log")
    assert torch.equal(log.log_sigmas, torch.zeros(3))  # the former head: sigma = 1
    assert not hasattr(log, "sigmas")


def test_prototype_classifier_passes_gradcheck():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    for use_norm in (False, True):
        clf = _classifier(use_norm=use_norm)
        with torch.no_grad():
            clf.sigmas.copy_(torch.tensor([0.7, -1.3]))
            clf.means.copy_(torch.randn(2, 2, generator=g))

        def f(e, mu, sigma, gamma):
            clf.means, clf.sigmas, clf.unknown_logit = mu, sigma, gamma
            return clf(e)

        params = (emb, clf.means.detach().clone().requires_grad_(), clf.sigmas.detach().clone().requires_grad_(),
                  clf.unknown_logit.detach().clone().requires_grad_())
        del clf.means, clf.sigmas, clf.unknown_logit
        assert torch.autograd.gradcheck(f, params)


def test_old_log_sigma_checkpoint_loads_into_the_official_head():
    cfg = tiny_pixel_cfg("VCA")
    cfg.MODEL.VCA.SIGMA_PARAMETRIZATION = "log"
    torch.manual_seed(0)
    old = build_model(cfg)
    with torch.no_grad():
        old.ood_method.classifier.log_sigmas.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    state = state_snapshot(old)
    new = build_model(tiny_pixel_cfg("VCA"))  # official: sigma parametrised directly
    result = new.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(new.ood_method.classifier.sigmas, torch.exp(torch.tensor([0.1, -0.2, 0.3, 0.0])))
    torch.testing.assert_close(new.ood_method.classifier.two_sigma_sq(), old.ood_method.classifier.two_sigma_sq(),
                               rtol=1e-6, atol=0)
    # And back: a direct-sigma checkpoint into a log-sigma head.
    again = build_model(cfg)
    again.load_state_dict(state_snapshot(new), strict=True)
    torch.testing.assert_close(again.ood_method.classifier.log_sigmas, torch.tensor([0.1, -0.2, 0.3, 0.0]))


def test_official_head_needs_the_official_gradient_clip():
    """sigma ~ N(0, 0.01) makes the first losses ~1e5 with gradients ~1/sigma^3. With the official
    optimiser (SGD 0.005, momentum 0.9, gradient norm clipped at 35, as configs/*/vca*.yaml) the
    loss falls to O(1) while sigma grows to O(1); unclipped, the first step throws sigma to ~1e5,
    where every logit is ~0 and the head no longer learns."""
    batches = [tiny_batch(seed=s) for s in range(2)]
    results = {}
    for clip in (35.0, None):
        torch.manual_seed(0)
        model = build_model(tiny_pixel_cfg("VCA"))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=5e-3, momentum=0.9)
        first = None
        for step in range(6):
            loss = model(batches[step % 2])["loss_vca_ce"]
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        results[clip] = (first, loss.item(), model.ood_method.classifier.sigmas.detach().abs().max().item())
    first, last, sigma = results[35.0]
    assert first > 1e3 and last < 3.0 and 0.05 < sigma < 5.0, results
    assert results[None][2] > 1e3, results


def test_vca_bad_options_name_the_key():
    for key, value in [("SIGMA_PARAMETRIZATION", "exp"), ("LOSS_UPSAMPLING", "bicubic")]:
        cfg = tiny_pixel_cfg("VCA")
        setattr(cfg.MODEL.VCA, key, value)
        with pytest.raises(ValueError, match=f"MODEL.VCA.{key}"):
            build_model(cfg)
    cfg = tiny_pixel_cfg("VCA")
    cfg.MODEL.VCA.USE_NORM = True
    cfg.MODEL.VCA.SQUARED_DISTANCE = True
    with pytest.raises(ValueError, match="MODEL.VCA.SQUARED_DISTANCE"):
        build_model(cfg)


def _supcon_by_hand(z, labels, tau):
    total, count = 0.0, 0
    for i in range(len(z)):
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(len(z)) if a != i)
        pos = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos)
        count += 1
    return total / count


def test_supcon_hand():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])  # the lone label-2 anchor has no positive
    got = supcon_loss(z, labels, tau=0.5)
    assert got.item() == pytest.approx(_supcon_by_hand(z.double(), labels.tolist(), 0.5), rel=1e-5)
    single = supcon_loss(z[:1], labels[:1])
    assert single.item() == 0.0


def test_unknown_iou_hand():
    metric = UnknownIoU()
    labels = torch.tensor([[0, 1, 1, 255]])
    metric.update(torch.tensor([[True, True, False, True]]), labels)  # I=1, U=3 (void ignored)
    metric.update(torch.tensor([[False, True, True, False]]), labels)  # I=2, U=2
    assert metric.compute() == pytest.approx(100 * 3 / 5)


def test_vca_trains_decoder_and_head_only_and_outlier_is_unknown():
    cfg = tiny_pixel_cfg("VCA")
    cfg.MODEL.VCA.SUPCON_WEIGHT = 0.1
    torch.manual_seed(0)
    model = build_model(cfg)
    before = state_snapshot(model)
    batches = [tiny_batch(seed=s) for s in range(2)]
    labels_before = [x["sem_seg"].clone() for b in batches for x in b]
    losses = train_steps(model, batches, steps=2, lr=1e-2)
    assert set(losses) == {"loss_vca_ce", "loss_vca_supcon"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.equal(x["sem_seg"], y) for x, y in zip([x for b in batches for x in b], labels_before))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith(("sem_seg_head.decoder.", "ood_method.")) for k in changed), sorted(changed)[:5]
    assert not any(k.startswith("backbone.") for k in changed)
    assert any(k.startswith("ood_method.classifier.unknown_logit") for k in changed)


def test_vca_loss_counts_pasted_outliers_as_unknown():
    torch.manual_seed(0)
    model = build_model(tiny_pixel_cfg("VCA"))
    model.train()
    batch = tiny_batch(n=1, seed=2, with_outliers=False)
    batch[0]["sem_seg"][:] = 254  # every pixel is a pasted outlier
    # A huge unknown constant makes every pixel confidently "unknown": the loss must vanish.
    with torch.no_grad():
        model.ood_method.classifier.unknown_logit.fill_(1e4)
    assert model(batch)["loss_vca_ce"].item() == pytest.approx(0.0, abs=1e-6)
    model.eval()
    with torch.no_grad():
        out = model(batch)[0]
    assert bool(out["unknown_mask"].all())
    assert torch.allclose(out["ood_score"], torch.ones_like(out["ood_score"]))
    assert out["sem_seg"].shape == (4, 64, 64)
