"""Mask2Former's loss terms against RbA's official criterion: values and gradients on the seeded
cases of tests/fixtures/official_losses (produced by running RbA's ``criterion.py`` unmodified),
plus the hand-computed examples of the official formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rba_plugin.config import get_cfg
from rba_plugin.modeling.criterion import build_set_criterion
from rba_plugin.modeling.loss_terms import PixelTargets

from .official_losses import case_names, official_case

ALL_INPUTS = ["class_scores", "class_scores_and_no_object", "energy", "outlier_logits"]
LABEL_CASES = ("out_void", "void_only", "out_only")

# Fixture variant -> RbA config keys (from each case's description).
OUTLIER_VARIANTS = {
    "squared_hinge_rba_released": ("squared_hinge", "nls", "tanh", -0.0, 5.0),
    "squared_hinge_rba_defaults": ("squared_hinge", "nls", "tanh", -1.0, -0.1),
    "squared_hinge_nls_sigmoid": ("squared_hinge", "nls", "sigmoid", -12.0, -10.0),
    "squared_hinge_nls_none": ("squared_hinge", "nls", "none", -1.0, -0.1),
    "squared_hinge_energy": ("squared_hinge", "energy", "none", -3.5, -2.5),
    "squared_hinge_softmax_entropy": ("squared_hinge", "softmax_entropy", "none", 2.5, 2.9),
    "squared_hinge_sum_entropy": ("squared_hinge", "sum_entropy", "none", 2.0, 2.5),
    "mse_rba": ("mse", "nls", "tanh", -1.0, -0.1),
    "l1_rba": ("l1", "nls", "tanh", -1.0, -0.1),
    "bce_rba": ("binary_cross_entropy", "nls", "tanh", -1.0, -0.1),
    "kl": ("kl", "nls", "tanh", -1.0, -0.1),
}


def criterion_for(**keys):
    cfg = get_cfg()
    for key, value in keys.items():
        setattr(cfg.MODEL.MASK_FORMER, key, value)
    return build_set_criterion(cfg, 19, ALL_INPUTS)


def outlier_keys(variant):
    func, target, norm, gamma_in, gamma_out = OUTLIER_VARIANTS[variant]
    return dict(OUTLIER_SUPERVISION=True, OUTLIER_LOSS_FUNC=func, OUTLIER_LOSS_TARGET=target, SCORE_NORM=norm,
                INLIER_UPPER_THRESHOLD=gamma_in, OUTLIER_LOWER_THRESHOLD=gamma_out)


def run_terms(criterion, inputs):
    outputs = {"pred_logits": inputs["pred_logits"], "pred_masks": inputs["pred_masks"]}
    if "ood_pred" in inputs:
        outputs["pred_outlier"] = inputs["ood_pred"]
    return criterion.term_losses(outputs, PixelTargets(inputs["sem_seg"]), auxiliary=False)


def assert_matches_official(value, grads, inputs, expected_value, expected_grads):
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected_value, rel=1e-5, abs=1e-12)
    names = list(expected_grads)
    got = torch.autograd.grad(value, [inputs[n] for n in names], allow_unused=True)
    for name, g in zip(names, got):
        g = torch.zeros_like(inputs[name]) if g is None else g
        scale = expected_grads[name].abs().max().item()
        torch.testing.assert_close(g, expected_grads[name], rtol=1e-5, atol=1e-7 * max(scale, 1e-300),
                                   msg=lambda m: f"gradient w.r.t. {name}: {m}")


@pytest.mark.parametrize("variant", sorted(OUTLIER_VARIANTS))
@pytest.mark.parametrize("labels", LABEL_CASES)
def test_outlier_losses_equal_rbas_criterion(variant, labels):
    expected, grads, inputs = official_case(f"rba_m2f/outlier_loss/{variant}/{labels}")
    losses = run_terms(criterion_for(**outlier_keys(variant)), inputs)
    assert_matches_official(losses["loss_outlier"], grads, inputs, expected, grads)


@pytest.mark.parametrize("score", ["energy", "nls"])
@pytest.mark.parametrize("labels", LABEL_CASES)
def test_smoothness_equals_rbas_criterion(score, labels):
    expected, grads, inputs = official_case(f"rba_m2f/smoothness_loss/{score}/{labels}")
    criterion = criterion_for(SMOOTHNESS_LOSS=True, SMOOTHNESS_SCORE=score, GAMBLER_LOSS=True)
    losses = run_terms(criterion, inputs)
    assert criterion.weight_dict["loss_smoothness"] == 3e-6
    assert_matches_official(losses["loss_smoothness"], grads, inputs, expected, grads)


@pytest.mark.parametrize("labels", LABEL_CASES)
def test_sparsity_equals_rbas_criterion(labels):
    expected, grads, inputs = official_case(f"rba_m2f/sparsity_loss/energy/{labels}")
    criterion = criterion_for(SPARSITY_LOSS=True, GAMBLER_LOSS=True, **outlier_keys("squared_hinge_energy"))
    losses = run_terms(criterion, inputs)
    assert criterion.weight_dict["loss_sparsity"] == 5e-4
    if not grads:  # no outlier pixel: the official value is a constant 0
        assert expected == 0.0 and losses["loss_sparsity"].item() == 0.0
        return
    assert_matches_official(losses["loss_sparsity"], grads, inputs, expected, grads)


def test_sparsity_is_zero_without_outlier_supervision():
    # RbA's targets carry no outlier mask unless OUTLIER_SUPERVISION is on: sparsity is then 0.
    _, _, inputs = official_case("rba_m2f/sparsity_loss/energy/out_void")
    losses = run_terms(criterion_for(SPARSITY_LOSS=True, GAMBLER_LOSS=True), inputs)
    assert losses["loss_sparsity"].item() == 0.0


@pytest.mark.parametrize("labels", LABEL_CASES)
def test_gambler_equals_rbas_criterion(labels):
    expected, grads, inputs = official_case(f"rba_m2f/gambler_loss/{labels}")
    criterion = criterion_for(GAMBLER_LOSS=True)
    losses = run_terms(criterion, inputs)
    assert set(losses) == {"loss_pal"}  # the class and mask losses are replaced
    assert_matches_official(losses["loss_pal"], grads, inputs, expected, grads)


@pytest.mark.parametrize("labels", ["out_void", "out_only"])
def test_densehybrid_equals_rbas_criterion(labels):
    expected, grads, inputs = official_case(f"rba_m2f/densehybrid_loss/{labels}")
    criterion = criterion_for(DENSE_HYBRID_LOSS=True)
    losses = run_terms(criterion, inputs)
    assert set(losses) == {"loss_dh_ce", "loss_dh_outlier", "loss_dh_density"}
    assert all(criterion.weight_dict[k] == 1.0 for k in losses)
    assert_matches_official(sum(losses.values()), grads, inputs, expected, grads)


def test_densehybrid_without_outliers_is_finite_where_the_official_code_gives_nan():
    expected, _, inputs = official_case("rba_m2f/densehybrid_loss/void_only")
    assert math.isnan(expected)
    for key in ("pred_logits", "pred_masks", "ood_pred"):
        inputs[key].requires_grad_(True)
    losses = run_terms(criterion_for(DENSE_HYBRID_LOSS=True), inputs)
    assert losses["loss_dh_density"].item() == 0.0
    # The other two parts are the official formula (Up_T, CE on inliers, head CE over every pixel).
    labels = inputs["sem_seg"]
    probs = inputs["pred_logits"].softmax(-1)[..., :-1]
    scores = torch.einsum("bqc,bqhw->bchw", probs, inputs["pred_masks"].sigmoid())
    up = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    head = F.interpolate(inputs["ood_pred"], size=labels.shape[-2:], mode="bilinear", align_corners=True)
    seg = F.cross_entropy(up, labels.masked_fill(labels >= 254, 255), ignore_index=255)
    th = F.cross_entropy(head, (labels == 254).long())
    assert losses["loss_dh_ce"].item() == pytest.approx(seg.item(), rel=1e-12)
    assert losses["loss_dh_outlier"].item() == pytest.approx(0.3 * th.item(), rel=1e-12)
    total = sum(losses.values())
    total.backward()
    assert all(torch.isfinite(inputs[k].grad).all() for k in ("pred_logits", "pred_masks", "ood_pred"))


def test_the_fixture_covers_every_mask2former_case():
    covered = {f"rba_m2f/outlier_loss/{v}/{c}" for v in OUTLIER_VARIANTS for c in LABEL_CASES}
    covered |= {f"rba_m2f/smoothness_loss/{s}/{c}" for s in ("energy", "nls") for c in LABEL_CASES}
    covered |= {f"rba_m2f/{t}/{c}" for t in ("sparsity_loss/energy", "gambler_loss", "densehybrid_loss")
                for c in LABEL_CASES}
    assert set(case_names("rba_m2f/")) == covered


# --- hand computations of the official formulas (spec examples) ---------------------------------


def one_query(mask_logits, labels, class_logits=None, num_classes=19):
    """One query with uniform class probabilities (no-object logit -1e9 unless given)."""
    if class_logits is None:
        class_logits = torch.cat([torch.zeros(num_classes), torch.tensor([-1e9])])
    pred_logits = class_logits.double().reshape(1, 1, -1).requires_grad_()
    pred_masks = torch.tensor(mask_logits, dtype=torch.float64).reshape(1, 1, *labels.shape[-2:]).requires_grad_()
    return {"pred_logits": pred_logits, "pred_masks": pred_masks, "sem_seg": labels}


def test_rba_hinge_by_hand():
    # m = [0, 2, -2, 0] on [inlier, inlier, outlier, void]: s = -19 tanh(sigmoid(m) / 19).
    labels = torch.tensor([[[3, 3, 254, 255]]])
    inputs = one_query([0.0, 2.0, -2.0, 0.0], labels)
    released = run_terms(criterion_for(**outlier_keys("squared_hinge_rba_released")), inputs)["loss_outlier"]
    s_out = -19 * math.tanh(1 / (1 + math.exp(2.0)) / 19)
    assert released.item() == pytest.approx(0.5 * (5 - s_out) ** 2, rel=1e-9)  # 13.103111
    assert released.item() == pytest.approx(13.103111, abs=1e-6)
    defaults = run_terms(criterion_for(**outlier_keys("squared_hinge_rba_defaults")), inputs)["loss_outlier"]
    assert defaults.item() == pytest.approx(0.066303, abs=1e-6)
    l1 = run_terms(criterion_for(**outlier_keys("l1_rba")), inputs)["loss_outlier"]
    assert l1.item() == pytest.approx(0.164588, abs=1e-6)
    bce = run_terms(criterion_for(**outlier_keys("bce_rba")), inputs)["loss_outlier"]
    assert bce.item() == pytest.approx(0.256211, abs=1e-6)  # void counted, unconditional 1/2
    kl = run_terms(criterion_for(**outlier_keys("kl")), inputs)["loss_outlier"]
    # Every sorted row is constant, so log_softmax = -log 19 everywhere; the soft peak t = softmax(e_1).
    t = torch.softmax(torch.eye(19, dtype=torch.float64)[0], 0)
    kl_in = ((t * t.log()).sum() + math.log(19)).item() / 19
    assert kl.item() == pytest.approx(0.5 * kl_in, rel=1e-9)  # 0.0011743; the labels play no role
    # Without an outlier pixel: the inlier part alone, no 1/2.
    no_out = one_query([0.0, 2.0, -2.0, 0.0], torch.tensor([[[3, 3, 3, 255]]]))
    only_in = run_terms(criterion_for(**outlier_keys("squared_hinge_rba_defaults")), no_out)["loss_outlier"]
    assert only_in.item() == pytest.approx(0.346761, abs=1e-6)


def test_rba_hinge_all_outlier_batch_is_half_the_outlier_part_not_nan():
    labels = torch.tensor([[[254, 254, 255, 255]]])
    inputs = one_query([0.0, 2.0, -2.0, 0.0], labels)
    loss = run_terms(criterion_for(**outlier_keys("squared_hinge_rba_released")), inputs)["loss_outlier"]
    s = [-19 * math.tanh(1 / (1 + math.exp(-m)) / 19) for m in (0.0, 2.0)]
    assert loss.item() == pytest.approx(0.5 * sum((5 - v) ** 2 for v in s) / 2, rel=1e-9)


def test_gambler_by_hand():
    # Class logits 0 for 19 classes and log 19 for no-object; mask logit 50 (sigmoid ~ 1).
    labels = torch.full((1, 4, 4), 2)
    labels[0, 0, :2] = 254
    labels[0, 3, :2] = 255
    class_logits = torch.cat([torch.zeros(19), torch.tensor([math.log(19)])])
    inputs = one_query([50.0] * 16, labels, class_logits)
    loss = run_terms(criterion_for(GAMBLER_LOSS=True), inputs)["loss_pal"]
    assert loss.item() == pytest.approx(3.144240, abs=1e-6)


def test_densehybrid_by_hand():
    # C = 2, labels [0, 1, 254, 255], L rows [.5, 0], [0, 0], [.25, .25], [0, .5], D = 0.
    from rba_plugin.modeling.ood.losses import densehybrid_loss

    scores = torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.25, 0.25], [0.0, 0.5]], dtype=torch.float64).T.reshape(1, 2, 1, 4)
    parts = densehybrid_loss(scores, torch.zeros(1, 2, 1, 4, dtype=torch.float64), torch.tensor([[[0, 1, 254, 255]]]),
                             beta1=0.3, beta2=0.03)
    assert sum(parts.values()).item() == pytest.approx(0.814226, abs=1e-6)
    paper = densehybrid_loss(scores, torch.zeros(1, 2, 1, 4, dtype=torch.float64), torch.tensor([[[0, 1, 254, 255]]]),
                             beta1=0.3, beta2=0.03, form="paper")
    # Paper: +sg[mean L] in the density term; the head's CE over non-void pixels (the same log 2 here).
    assert paper["loss_dh_density"].item() == pytest.approx(0.03 * ((0.25 + math.log(2)) + 1.5 / 8), rel=1e-9)
    assert paper["loss_dh_outlier"].item() == pytest.approx(0.3 * math.log(2), rel=1e-9)


def test_smoothness_and_sparsity_by_hand():
    from rba_plugin.modeling.ood.losses import energy_smoothness_loss, energy_sparsity_loss

    s = torch.tensor([[[1.0, 2.0], [4.0, 8.0]]])
    assert energy_smoothness_loss(s, norm="l2").item() == 31.0
    energy = torch.tensor([[[-3.0, 0.5], [7.0, -4.0]]])
    mask = torch.tensor([[[True, False], [False, True]]])
    assert energy_sparsity_loss(energy, mask, norm="l2").item() == 5.0


def test_pebal_paper_form_adds_the_appendix_hinge_and_official_form_does_not():
    official = criterion_for(GAMBLER_LOSS=True, **outlier_keys("squared_hinge_energy"))
    paper = criterion_for(GAMBLER_LOSS=True, PEBAL_FORM="paper")
    assert sorted(type(t).__name__ for t in official.terms) == ["MaskFormerPEBALAbstention", "SquaredHingeOutlierLoss"]
    assert sorted(type(t).__name__ for t in paper.terms) == ["MaskFormerPEBALAbstention", "MaskFormerPEBALEnergyHinge"]
    with pytest.raises(ValueError, match="MODEL.MASK_FORMER.PEBAL_FORM"):
        criterion_for(GAMBLER_LOSS=True, PEBAL_FORM="code")


def test_paper_forms_by_hand():
    labels = torch.tensor([[[3, 3, 254, 255]]])
    inputs = one_query([0.0, 2.0, -2.0, 0.0], labels)
    keys = dict(outlier_keys("squared_hinge_rba_released"), OUTLIER_LOSS_FORM="paper")
    loss = run_terms(criterion_for(**keys), inputs)["loss_outlier"]
    s_out = -19 * math.tanh(1 / (1 + math.exp(2.0)) / 19)
    assert loss.item() == pytest.approx((5 - s_out) ** 2, rel=1e-9)  # RbA Eq. 6: outliers only, no 1/2
    with pytest.raises(ValueError, match="MODEL.MASK_FORMER.OUTLIER_LOSS_FORM"):
        criterion_for(**dict(keys, OUTLIER_LOSS_FORM="papers"))
