"""Per-pixel PEBAL, RPL and CoroCL loss terms against the official code: values and gradients on
the seeded cases of tests/fixtures/official_losses (PEBAL ``losses.py`` + ``trainer.py``, RPL
``PositiveEnergy.py`` + ``CoroCL.py`` + ``trainer.py``, run unmodified), and hand computations of
the official formulas and of the paper forms."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rba_plugin  # noqa: F401  (registers the terms and config groups)
from rba_plugin.config import get_cfg
from rba_plugin.modeling.loss_terms import PixelTargets, build_loss_terms
from rba_plugin.modeling.ood.losses import gambler_loss, gaussian_smooth, inlier_energy
from rba_plugin.modeling.pixel.rpl import downsample_labels

from .official_losses import official_case

PEBAL_TERMS = ["PEBALAbstention", "PEBALEnergyHinge", "PEBALSmoothness", "PEBALSparsity"]


def cfg_with(group: str, **keys):
    cfg = get_cfg()
    for key, value in keys.items():
        setattr(cfg.MODEL[group], key, value)
    return cfg


def grads_match(value, leaf, expected_grad, scale=1.0):
    (g,) = torch.autograd.grad(value, [leaf], allow_unused=True, retain_graph=True)
    g = torch.zeros_like(leaf) if g is None else g
    top = expected_grad.abs().max().item()
    torch.testing.assert_close(g, scale * expected_grad, rtol=1e-5, atol=1e-7 * max(top, 1e-300))


# --- PEBAL ------------------------------------------------------------------------------------


def pebal_terms(**keys):
    return {type(t).__name__: t for t in build_loss_terms(cfg_with("PEBAL", **keys), PEBAL_TERMS)}


def pebal_losses(terms, logits, labels, names=PEBAL_TERMS):
    outputs = {"logits": logits, "energy": inlier_energy(logits, logits.shape[1] - 1)}
    total = {}
    for name in names:
        total.update(terms[name](outputs, PixelTargets(labels)))
    return total


def pebal_labels(inputs, variant):
    labels = inputs["targets"].clone()
    if variant == "batch_without_ood_image":
        labels[2][labels[2] == 254] = 3  # the fixture's relabelling
    return labels


@pytest.mark.parametrize("variant", ["batch_with_ood_image", "batch_without_ood_image"])
def test_pebal_energy_loss_is_the_official_one_times_the_trainers_0_1(variant):
    expected, grads, inputs = official_case(f"pebal/energy_loss/{variant}")
    logits, labels = inputs["logits"], pebal_labels(inputs, variant)
    losses = pebal_losses(pebal_terms(), logits, labels, PEBAL_TERMS[1:])
    value = sum(losses.values())
    assert value.item() == pytest.approx(0.1 * expected, rel=1e-5)
    grads_match(value, logits, grads["logits"], scale=0.1)


@pytest.mark.parametrize("variant", ["batch_with_ood_image", "batch_without_ood_image"])
def test_pebal_abstention_averages_clean_and_outlier_images_separately(variant):
    terms = pebal_terms()
    expected_clean, grads_clean, inputs = official_case(f"pebal/gambler_clean_images/{variant}")
    logits, labels = inputs["logits"], pebal_labels(inputs, variant)
    clean = slice(0, 2) if variant == "batch_with_ood_image" else slice(0, 3)
    value = pebal_losses(terms, logits[clean], labels[clean], ["PEBALAbstention"])["loss_pebal_pal"]
    assert value.item() == pytest.approx(expected_clean, rel=1e-5)
    grads_match(value, logits, grads_clean["logits"])
    if variant == "batch_with_ood_image":
        expected_ood, grads_ood, _ = official_case(f"pebal/gambler_ood_images/{variant}")
        value = pebal_losses(terms, logits[2:], labels[2:], ["PEBALAbstention"])["loss_pebal_pal"]
        assert value.item() == pytest.approx(expected_ood, rel=1e-5)
        grads_match(value, logits, grads_ood["logits"])


@pytest.mark.parametrize("variant", ["batch_with_ood_image", "batch_without_ood_image"])
def test_pebal_total_equals_the_official_trainer(variant):
    expected, grads, inputs = official_case(f"pebal/trainer_total/{variant}")
    logits, labels = inputs["logits"], pebal_labels(inputs, variant)
    terms = pebal_terms()
    losses = pebal_losses(terms, logits, labels)
    assert all(t.weights[k] == 1.0 for t in terms.values() for k in t.weights)
    value = sum(losses.values())
    assert value.item() == pytest.approx(expected, rel=1e-5)
    grads_match(value, logits, grads["logits"])


def test_pebal_regularisers_equal_the_official_ones():
    terms = pebal_terms()
    for case, name in (("pebal/smooth_3e-6", "PEBALSmoothness"), ("pebal/sparsity_5e-4", "PEBALSparsity")):
        expected, grads, inputs = official_case(case)
        value = next(iter(pebal_losses(terms, inputs["logits"], inputs["targets"], [name]).values()))
        assert value.item() == pytest.approx(0.1 * expected, rel=1e-5)  # inside the trainer's 0.1
        grads_match(value, inputs["logits"], grads["logits"], scale=0.1)


def test_pebal_all_outlier_batch_is_finite_where_the_official_trainer_gives_nan():
    expected, _, _ = official_case("pebal/gambler_empty_clean_batch")
    assert math.isnan(expected)
    _, _, inputs = official_case("pebal/trainer_total/batch_with_ood_image")
    logits = inputs["logits"][2:].detach().requires_grad_()
    labels = inputs["targets"][2:]
    value = pebal_losses(pebal_terms(), logits, labels, ["PEBALAbstention"])["loss_pebal_pal"]
    # Only the outlier images' call remains (the clean-image call has nothing to average).
    probs = logits.softmax(1)
    reward = gaussian_smooth(torch.logsumexp(logits[:, :19], 1) ** 2, 7, 1.0)
    assert value.item() == pytest.approx(gambler_loss(probs, reward, labels, with_outliers=True).item(), rel=1e-12)
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_pebal_abstention_by_hand():
    # z_c = 0 for 19 classes, abstention logit log 19: p_c = 1/38, p_abs = 1/2; r = (log 19)^2
    # everywhere (the blur of a constant map is the constant).
    logits = torch.zeros(1, 20, 4, 4, dtype=torch.float64)
    logits[:, 19] = math.log(19)
    labels = torch.full((1, 4, 4), 2)
    labels[0, 0, :2] = 254
    labels[0, 3, :2] = 255
    terms = pebal_terms()
    a = 0.5 / math.log(19) ** 2
    per_pixel = -math.log(1 / 38 + a)
    assert per_pixel == pytest.approx(2.477084, abs=1e-6)
    got = pebal_losses(terms, logits, labels, ["PEBALAbstention"])["loss_pebal_pal"]
    assert got.item() == pytest.approx(per_pixel * 1.1, rel=1e-9)  # 2.724792: inliers + 0.1 x outliers
    clean = pebal_losses(terms, logits, labels.masked_fill(labels == 254, 2), ["PEBALAbstention"])["loss_pebal_pal"]
    assert clean.item() == pytest.approx(per_pixel, rel=1e-9)


def test_pebal_energy_loss_by_hand():
    # E = [-10, -13, -8] on [inlier, inlier, outlier]: 0.1 x (0.5 (2 + 4) + 5e-4 x 8 + 3e-6 x 0.5 (9 + 25)).
    energy = torch.tensor([[[-10.0, -13.0, -8.0]]], dtype=torch.float64)
    labels = torch.tensor([[[0, 1, 254]]])
    terms = pebal_terms()
    outputs = {"energy": energy}
    total = sum(terms[n](outputs, PixelTargets(labels))[k] for n, k in (
        ("PEBALEnergyHinge", "loss_pebal_energy"), ("PEBALSmoothness", "loss_pebal_smooth"),
        ("PEBALSparsity", "loss_pebal_sparsity")))
    assert total.item() == pytest.approx(0.1 * 3.004051, rel=1e-7)


def test_pebal_paper_form_by_hand():
    # Paper (Eqs. 3, 5-8, per-pixel means): PAL with a = E^2 and outliers over all K+1 labels at
    # weight 1; hinge sum of both means; beta1 = 5e-4 on mean |dE|, beta2 = 3e-6 on mean |E|.
    probs_logits = torch.log(torch.tensor([[[[0.6, 0.1]], [[0.3, 0.2]], [[0.1, 0.7]]]], dtype=torch.float64))
    labels = torch.tensor([[[0, 254]]])
    terms = pebal_terms(FORM="paper")
    losses = pebal_losses(terms, probs_logits, labels)
    energy = inlier_energy(probs_logits, 2)[0, 0].tolist()
    a = [e**2 for e in energy]
    pal = -math.log(0.6 + 0.1 / a[0]) + sum(-math.log(p + 0.7 / a[1]) for p in (0.1, 0.2, 0.7)) / 3
    assert losses["loss_pebal_pal"].item() == pytest.approx(pal, rel=1e-9)
    hinge = max(0, energy[0] + 12) ** 2 + max(0, -6 - energy[1]) ** 2
    assert losses["loss_pebal_energy"].item() == pytest.approx(0.1 * hinge, rel=1e-9)
    assert losses["loss_pebal_smooth"].item() == pytest.approx(5e-4 * abs(energy[1] - energy[0]), rel=1e-9)
    assert losses["loss_pebal_sparsity"].item() == pytest.approx(3e-6 * (abs(energy[0]) + abs(energy[1])) / 2, rel=1e-9)


def test_pebal_keys_override_the_forms_constants_and_bad_forms_are_refused():
    terms = pebal_terms(PAL_OUTLIER_WEIGHT=0.5, SMOOTH_WEIGHT=1e-3, SPARSITY_WEIGHT=2e-3)
    assert terms["PEBALAbstention"].outlier_weight == 0.5
    assert terms["PEBALSmoothness"].weight == pytest.approx(0.1 * 1e-3)
    assert terms["PEBALSparsity"].weight == pytest.approx(0.1 * 2e-3)
    with pytest.raises(ValueError, match="MODEL.PEBAL.FORM"):
        pebal_terms(FORM="code")


# --- RPL ----------------------------------------------------------------------------------------


def rpl_terms(**keys):
    cfg = cfg_with("RPL", **keys)
    return build_loss_terms(cfg, ["RPLInlierLoss", "RPLPositiveEnergy"])


@pytest.mark.parametrize("variant", ["with_outliers", "without_outliers"])
def test_rpl_losses_equal_the_official_ones(variant):
    inlier, energy = rpl_terms()
    _, _, inputs = official_case(f"rpl/energy_loss/entropy_part/{variant}")
    outputs = {"rpl_logits": inputs["logits"], "closed_set_logits": inputs["vanilla_logits"]}
    targets = PixelTargets(inputs["targets"])
    parts = {**inlier(outputs, targets), **energy(outputs, targets)}
    for key, case, factor in (("loss_rpl_inlier_ce", "entropy_part", 1.0), ("loss_rpl_entropy_dis", "reg", 1.0),
                              ("loss_rpl_positive_energy", "energy_part", 0.05)):
        expected, grads, _ = official_case(f"rpl/energy_loss/{case}/{variant}")
        assert parts[key].item() == pytest.approx(factor * expected, rel=1e-5, abs=1e-12)
        if grads:
            grads_match(parts[key], inputs["logits"], grads["logits"], scale=factor)
        else:  # no outlier pixel: the official energy part is a constant 0
            assert parts[key].item() == 0.0
    expected, grads, _ = official_case(f"rpl/trainer_total_without_corocl/{variant}")
    total = sum(parts.values())
    assert total.item() == pytest.approx(expected, rel=1e-5)
    grads_match(total, inputs["logits"], grads["logits"])


def test_rpl_entropy_clamps_probabilities_as_the_official_code():
    # One confident pixel: p = softmax([40, 0, 0]) has two classes below 1e-7, each adding
    # -1e-7 log 1e-7 = 1.61e-6 to the official entropy (no renormalisation).
    from rba_plugin.modeling.pixel.rpl_losses import softmax_entropy

    logits = torch.tensor([40.0, 0.0, 0.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    p0 = 1 / (1 + 2 * math.exp(-40))
    exact = -(p0 * math.log(p0)) + 2 * 40 * math.exp(-40) * p0  # -sum p log p
    assert softmax_entropy(logits).item() == pytest.approx(exact, rel=1e-9)
    clamped = -(p0 * math.log(p0)) - 2 * 1e-7 * math.log(1e-7)
    assert softmax_entropy(logits, 1e-7).item() == pytest.approx(clamped, rel=1e-9)


def test_rpl_inlier_losses_on_an_all_outlier_batch_are_zero_not_nan():
    inlier, _ = rpl_terms()
    logits = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    parts = inlier({"rpl_logits": logits, "closed_set_logits": logits.detach()},
                   PixelTargets(torch.tensor([[[254, 254], [255, 254]]])))
    assert all(v.item() == 0.0 for v in parts.values())
    sum(parts.values()).backward()
    assert torch.isfinite(logits.grad).all()


def test_rpl_hand_example():
    # Inlier pixel z = [2, 0], v = [1, 0]; outlier pixel z = [1, 1] (spec example): 0.258618.
    inlier, energy = rpl_terms()
    z = torch.tensor([[[[2.0, 1.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    targets = PixelTargets(torch.tensor([[[0, 254]]]))
    outputs = {"rpl_logits": z, "closed_set_logits": v}
    total = sum({**inlier(outputs, targets), **energy(outputs, targets)}.values())
    assert total.item() == pytest.approx(0.258618, abs=1e-6)


# --- CoroCL -------------------------------------------------------------------------------------


def corocl_term(**keys):
    (term,) = build_loss_terms(cfg_with("RPL", **keys), ["CoroCLLoss"])
    return term


def corocl_outputs(inputs, ood_gt=None):
    city, raw = inputs["city_proj"], inputs["ood_proj"]
    size = city.shape[-2:]
    return {
        "corocl_embeddings": F.normalize(city, dim=1), "corocl_labels": downsample_labels(inputs["city_gt"], size),
        "corocl_outlier_embeddings": F.normalize(raw, dim=1),
        "corocl_outlier_labels": downsample_labels(inputs["ood_gt"] if ood_gt is None else ood_gt, size),
    }


def test_corocl_equals_the_official_loss_on_the_same_random_stream():
    expected, grads, inputs = official_case("rpl/corocl/n5")
    term = corocl_term()
    assert term.weights == {"loss_corocl": 1.0} and term.weight == 1.0 and term.tau == 0.1 and term.max_views == 512
    torch.manual_seed(inputs["torch_manual_seed"])  # the four randperm draws use the global generator
    value = term(corocl_outputs(inputs), PixelTargets(inputs["city_gt"]))["loss_corocl"]
    assert value.item() == pytest.approx(expected, rel=1e-5)
    for name in ("city_proj", "ood_proj"):
        grads_match(value, inputs[name], grads[name])


def test_corocl_without_raw_objects_is_zero():
    expected, _, inputs = official_case("rpl/corocl/n0_no_coco_object")
    assert expected == 0.0
    inputs["city_proj"].requires_grad_(True)
    no_object = inputs["ood_gt"].masked_fill(inputs["ood_gt"] == 254, 0)
    value = corocl_term()(corocl_outputs(inputs, no_object), PixelTargets(inputs["city_gt"]))["loss_corocl"]
    assert value.item() == 0.0
    # Without raw images (the official gate did not pass) the term is a graph-connected zero.
    outputs = corocl_outputs(inputs)
    del outputs["corocl_outlier_embeddings"], outputs["corocl_outlier_labels"]
    assert corocl_term()(outputs, PixelTargets(inputs["city_gt"]))["loss_corocl"].requires_grad


def test_corocl_hand_example():
    # n = 1: city+ (1, 0), city- (0, 1), raw+ (0.6, 0.8), raw- (0.8, 0.6): loss 2.127226.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    raw = torch.tensor([[0.6, 0.8], [0.8, 0.6]]).T.reshape(1, 2, 1, 2)
    outputs = {"corocl_embeddings": emb, "corocl_labels": torch.tensor([[[254, 3]]]),
               "corocl_outlier_embeddings": raw, "corocl_outlier_labels": torch.tensor([[[254, 0]]])}
    value = corocl_term()(outputs, PixelTargets(torch.tensor([[[254, 3]]])))["loss_corocl"]
    assert value.item() == pytest.approx(-(6 - math.log(math.exp(6) + math.exp(0) + math.exp(8))), rel=1e-6)


def test_corocl_official_form_refuses_dropping_the_raw_background():
    with pytest.raises(ValueError, match="COROCL_OUTLIER_BG_AS_INLIER"):
        corocl_term(COROCL_OUTLIER_BG_AS_INLIER=False)
    assert corocl_term(COROCL_OUTLIER_BG_AS_INLIER=False, FORM="paper").form == "paper"
