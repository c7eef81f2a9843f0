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
from rba_plugin.config import check_config, get_cfg
from rba_plugin.modeling.pixel.vca import (PrototypeClassifier, class_embedding_sums, fit_open_set_scales,
                                          loss_pixel_weights)
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


# ---------------------------------------------------------------- class-mean prototype init


def _brute_force_class_stats(emb, labels, num_classes):
    """Nearest-upsample the embeddings to the label size (as the loss upsamples the logits),
    then per class: the mean embedding and the mean of |e - mu|^2 over its label pixels."""
    up = F.interpolate(emb, size=labels.shape[-2:], mode="nearest")
    flat = up.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
    lab = labels.reshape(-1)
    out = {}
    for k in range(num_classes):
        pts = flat[lab == k]
        if len(pts):
            mu = pts.mean(dim=0)
            out[k] = (mu, len(pts), ((pts - mu) ** 2).sum(dim=1).mean(), F.cosine_similarity(pts, mu[None]).mean())
    return out


@pytest.mark.parametrize("size", [(8, 12), (7, 10)])  # an exact stride of 4, and sizes it does not divide
def test_class_embedding_sums_match_a_brute_force_mean(size):
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(2, 5, 2, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2,) + size, generator=g)
    labels[0, :2] = 255  # void
    labels[1, 3:5, 4:7] = 254  # pasted outliers
    labels[1, 0, 0] = -1  # anything outside [0, C) counts for nothing
    sums, counts = class_embedding_sums(emb, labels, num_classes=4)
    want = _brute_force_class_stats(emb, labels, 4)
    assert counts[3].item() == 0 and torch.equal(sums[3], torch.zeros(5, dtype=torch.float64))
    for k, (mu, n, _, _) in want.items():
        assert counts[k].item() == n
        torch.testing.assert_close(sums[k] / counts[k], mu)
    assert counts.sum().item() == ((labels >= 0) & (labels < 4)).sum().item()


def _vca_model(**vca):
    cfg = tiny_pixel_cfg("VCA")
    for key, value in vca.items():
        setattr(cfg.MODEL.VCA, key, value)
    torch.manual_seed(0)
    return build_model(cfg)


def _eval_embeddings(model, batch):
    """The classifier's input at inference, caught with a forward hook (N x D x h x w)."""
    caught = []
    handle = model.ood_method.classifier.register_forward_hook(lambda m, inp, out: caught.append(inp[0]))
    model.eval()
    with torch.no_grad():
        model(batch)
    handle.remove()
    return torch.cat(caught)


def test_loss_pixel_weights_reproduce_the_vca_loss():
    # sum_pj w_pj (-log softmax(logits_p)_j) / sum w is VCACrossEntropy's nearest-upsampled loss.
    g = torch.Generator().manual_seed(5)
    for size, small in [((8, 12), (2, 3)), ((7, 10), (3, 4))]:
        logits = torch.randn(2, 4, *small, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (2,) + size, generator=g)
        labels[0, :2] = 255
        labels[1, 2:4, 3:6] = 254
        want = VCACrossEntropy(upsampling="nearest")({"open_set_logits": logits}, PixelTargets(labels))["loss_vca_ce"]
        weights = loss_pixel_weights(labels.masked_fill(labels == 254, 3), small, 4)
        flat = logits.permute(0, 2, 3, 1).reshape(-1, 4)
        got = -(weights * flat.log_softmax(dim=1)).sum() / weights.sum()
        assert got.item() == pytest.approx(want.item(), rel=1e-12)


def test_fit_open_set_scales_recovers_the_generating_model():
    # Labels drawn from softmax([-a_k s_pk, gamma]) with known a, gamma: the fit finds them.
    g = torch.Generator().manual_seed(6)
    scores = torch.rand(100000, 3, generator=g, dtype=torch.float64) * 4
    a_true, gamma_true = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64), -1.0
    logits = torch.cat([-scores * a_true, torch.full((len(scores), 1), gamma_true, dtype=torch.float64)], dim=1)
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=g)[:, 0]
    weights = F.one_hot(labels, 4).double()
    a, gamma = fit_open_set_scales(scores, weights, torch.ones(3, dtype=torch.float64), 0.0)
    torch.testing.assert_close(a, a_true, rtol=0.05, atol=0)
    assert gamma == pytest.approx(gamma_true, abs=0.05)
    # A scale not fitted keeps its value; the others adapt around it.
    a_fixed, _ = fit_open_set_scales(scores, weights, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), 0.0,
                                     free=torch.tensor([True, True, False]))
    assert a_fixed[2].item() == 1.0 and a_fixed[0].item() == pytest.approx(2.0, rel=0.05)
    # No unknown pixel: gamma is not fitted (the loss would fall as gamma -> -inf) and stays.
    known = labels < 3
    a_known, kept = fit_open_set_scales(scores[known], weights[known], torch.ones(3, dtype=torch.float64), 0.25)
    assert kept == 0.25 and torch.all(a_known > 0)


def _loss_gradient_at(model, batches, names):
    """d(VCA loss over ``batches``, eval-mode embeddings) / d(the classifier parameters ``names``)."""
    clf = model.ood_method.classifier
    model.eval()
    caught = []
    handle = clf.register_forward_hook(lambda m, inp, out: caught.append(out))
    for b in batches:
        model(b)
    handle.remove()
    labels = torch.cat([torch.stack([x["sem_seg"] for x in b]) for b in batches])
    loss = VCACrossEntropy(upsampling="nearest")({"open_set_logits": torch.cat(caught)}, PixelTargets(labels))
    return torch.autograd.grad(loss["loss_vca_ce"], [getattr(clf, n) for n in names])


@pytest.mark.parametrize("variant", [{}, {"SIGMA_PARAMETRIZATION": "log"}, {"SQUARED_DISTANCE": True},
                                     {"USE_NORM": True}])
def test_class_mean_init_equals_brute_force_class_means_and_minimises_the_loss(variant):
    model = _vca_model(PROTOTYPE_INIT="class_means", PROTOTYPE_INIT_BATCHES=2, **variant)
    clf = model.ood_method.classifier
    assert model.data_init_batches() == 2
    batches = [tiny_batch(n=2, seed=s) for s in range(2)]
    for b in batches:  # class 3 never appears: its prototype stays as initialised
        for x in b:
            x["sem_seg"][x["sem_seg"] == 3] = 255
    sigma_name = "log_sigmas" if variant.get("SIGMA_PARAMETRIZATION") == "log" else "sigmas"
    random_mean, random_sigma = clf.means[3].detach().clone(), getattr(clf, sigma_name)[3].item()
    model.train()
    model.initialize_from_data(batches)
    assert model.training  # the mode is restored
    emb = torch.cat([_eval_embeddings(model, b) for b in batches]).double()
    labels = torch.cat([torch.stack([x["sem_seg"] for x in b]) for b in batches])
    want = _brute_force_class_stats(emb, labels, 4)  # 254 and 255 are outside [0, 4): left out
    assert sorted(want) == [0, 1, 2]
    for k, (mu, _, _, _) in want.items():
        torch.testing.assert_close(clf.means[k].double(), mu, rtol=1e-5, atol=1e-6)
    assert torch.equal(clf.means[3], random_mean)
    assert getattr(clf, sigma_name)[3].item() == random_sigma
    # Scales and unknown logit minimise the model's own loss on these batches, means fixed: the
    # gradient there is ~0, far below the one at the official random init.
    grad_sigma, grad_unknown = _loss_gradient_at(model, batches, [sigma_name, "unknown_logit"])
    assert grad_sigma[:3].abs().max().item() < 1e-3 and abs(grad_unknown.item()) < 1e-4
    official = _vca_model(**variant)
    official.load_state_dict({k: v for k, v in model.state_dict().items() if "classifier" not in k}, strict=False)
    grad_official = _loss_gradient_at(official, batches, [sigma_name, "unknown_logit"])
    assert grad_official[0][:3].abs().max().item() > 1e-2


def test_class_mean_init_leaves_out_outlier_pixels():
    # Moving every pasted outlier (254) to another image content must not change the means.
    model = _vca_model(PROTOTYPE_INIT="class_means")
    batch = tiny_batch(n=2, seed=4)
    model.initialize_from_data([batch])
    means = model.ood_method.classifier.means.detach().clone()
    relabelled = [dict(x, sem_seg=x["sem_seg"].clone()) for x in batch]
    for x in relabelled:
        x["sem_seg"][x["sem_seg"] == 254] = 0  # the same pixels now count for class 0
    model.initialize_from_data([relabelled])
    changed = model.ood_method.classifier.means.detach()
    assert not torch.allclose(changed[0], means[0])
    torch.testing.assert_close(changed[1:], means[1:])


def test_prototype_init_defaults_to_the_official_random_init():
    cfg = get_cfg()
    assert cfg.MODEL.VCA.PROTOTYPE_INIT == "random"
    model = _vca_model()
    assert model.ood_method.prototype_init == "random" and model.data_init_batches() == 0
    # Only the synthetic config departs from the official recipe.
    cityscapes = get_cfg()
    cityscapes.merge_from_file("configs/cityscapes/pixel/d2_deeplab/vca_R101.yaml")
    assert cityscapes.MODEL.VCA.PROTOTYPE_INIT == "random"
    synthetic = get_cfg()
    synthetic.merge_from_file("configs/synthcity/pixel/vca.yaml")
    assert synthetic.MODEL.VCA.PROTOTYPE_INIT == "class_means"


def test_prototype_init_options_are_checked():
    cfg = tiny_pixel_cfg("VCA")
    cfg.MODEL.VCA.PROTOTYPE_INIT = "kmeans"
    with pytest.raises(ValueError, match="MODEL.VCA.PROTOTYPE_INIT"):
        check_config(cfg)
    cfg = tiny_pixel_cfg("VCA")
    cfg.MODEL.VCA.PROTOTYPE_INIT_BATCHES = 0
    with pytest.raises(ValueError, match="MODEL.VCA.PROTOTYPE_INIT_BATCHES"):
        check_config(cfg)


def test_loaded_prototypes_are_not_reinitialised():
    trained = _vca_model()
    model = _vca_model(PROTOTYPE_INIT="class_means", PROTOTYPE_INIT_BATCHES=3)
    assert model.data_init_batches() == 3
    model.load_state_dict(state_snapshot(trained))  # e.g. resuming: the checkpoint holds them
    assert model.data_init_batches() == 0


def test_trainer_hook_hands_the_asked_batches_to_the_model():
    from types import SimpleNamespace

    from rba_plugin.engine.trainer import DataInitHook

    model = _vca_model(PROTOTYPE_INIT="class_means", PROTOTYPE_INIT_BATCHES=2)
    stream = (tiny_batch(n=1, seed=s) for s in range(100))
    built, seen = [], []

    def build_loader(cfg, extra_inputs=()):
        built.append(cfg)
        return stream

    model.ood_method.initialize_from_data = lambda head, batches: seen.extend(batches)
    hook = DataInitHook(build_loader)
    hook.trainer = SimpleNamespace(model=model, cfg="CFG")
    hook.before_train()
    assert built == ["CFG"] and len(seen) == 2
    # A model that asks for nothing (the official init) gets no loader built.
    hook.trainer = SimpleNamespace(model=_vca_model(), cfg="CFG")
    hook.before_train()
    assert len(built) == 1
