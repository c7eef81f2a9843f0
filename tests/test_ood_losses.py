"""Outlier losses against hand computations on tiny tensors, empty outlier sets included."""
import math

import pytest
import torch

from rba_plugin.modeling.ood import (
    bce_outlier_loss,
    densehybrid_loss,
    energy_hinge_loss,
    energy_smoothness_loss,
    energy_sparsity_loss,
    inlier_energy,
    kl_outlier_loss,
    l1_outlier_loss,
    mse_outlier_loss,
    pal_loss,
    squared_hinge_outlier_loss,
)

LOSSES = {"squared_hinge": squared_hinge_outlier_loss, "mse": mse_outlier_loss, "l1": l1_outlier_loss,
          "binary_cross_entropy": bce_outlier_loss, "kl": kl_outlier_loss}


def outlier_score_loss(kind, *args, **kwargs):
    return LOSSES[kind](*args, **kwargs)

# N=1, C=2, H=1, W=3: pixel 0 inlier class 1, pixel 1 outlier, pixel 2 void.
SCORES = torch.tensor([[[[0.5, 1.0, 3.0]], [[2.0, 0.2, 3.0]]]], requires_grad=True)
LABELS = torch.tensor([[[1, 254, 255]]])
NO_OUTLIER = torch.tensor([[[1, 0, 255]]])


def rba(values):
    return -sum(math.tanh(v) for v in values)


def test_squared_hinge_by_hand():
    s_out = rba([1.0, 0.2])
    loss = outlier_score_loss("squared_hinge", SCORES, LABELS, alpha=5.0)
    assert loss.item() == pytest.approx(max(0.0, 5.0 - s_out) ** 2, rel=1e-6)
    loss.backward()
    assert SCORES.grad[0, :, 0, 1].abs().sum() > 0  # only the outlier pixel gets gradient
    assert SCORES.grad[0, :, 0, [0, 2]].abs().sum() == 0
    SCORES.grad = None


def test_squared_hinge_inlier_term():
    s_in, s_out = rba([0.5, 2.0]), rba([1.0, 0.2])
    loss = outlier_score_loss("squared_hinge", SCORES, LABELS, alpha=1.0, inlier_threshold=-2.0)
    expected = max(0, 1.0 - s_out) ** 2 + max(0, s_in + 2.0) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_alternative_losses_by_hand():
    s_in, s_out = rba([0.5, 2.0]), rba([1.0, 0.2])
    assert outlier_score_loss("mse", SCORES, LABELS, alpha=5.0).item() == pytest.approx((s_out - 5) ** 2, rel=1e-6)
    assert outlier_score_loss("l1", SCORES, LABELS, alpha=5.0).item() == pytest.approx(abs(s_out - 5), rel=1e-6)

    def bce(logit, y):
        p = 1 / (1 + math.exp(-logit))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected_bce = (bce(s_in, 0) + bce(s_out, 1)) / 2
    assert outlier_score_loss("binary_cross_entropy", SCORES, LABELS).item() == pytest.approx(expected_bce, rel=1e-6)

    def log_softmax(values):
        lse = math.log(sum(math.exp(v) for v in values))
        return [v - lse for v in values]

    kl_in = -log_softmax([0.5, 2.0])[1]
    kl_out = sum(0.5 * (math.log(0.5) - lp) for lp in log_softmax([1.0, 0.2]))
    assert outlier_score_loss("kl", SCORES, LABELS).item() == pytest.approx(0.5 * (kl_in + kl_out), rel=1e-6)


@pytest.mark.parametrize("kind", ["squared_hinge", "mse", "l1", "kl"])
def test_no_outlier_pixels_gives_zero_not_nan(kind):
    scores = SCORES.detach().clone().requires_grad_()
    loss = outlier_score_loss(kind, scores, torch.full_like(NO_OUTLIER, 255))
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()  # still part of the graph
    assert torch.isfinite(scores.grad).all()
    if kind != "kl":
        assert outlier_score_loss(kind, scores, NO_OUTLIER).item() == 0.0


def test_bad_labels():
    with pytest.raises(ValueError, match="class id 7"):
        outlier_score_loss("squared_hinge", SCORES, torch.tensor([[[7, 254, 255]]]))


def test_inlier_energy_and_hinge_by_hand():
    logits = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]], [[5.0, 5.0]]]])  # K=2 inlier + 1 extra
    energy = inlier_energy(logits, 2)
    e0 = -math.log(math.exp(1.0) + 1.0)
    e1 = -math.log(math.exp(-1.0) + math.exp(2.0))
    assert energy[0, 0].tolist() == pytest.approx([e0, e1])
    labels = torch.tensor([[[0, 254]]])
    loss = energy_hinge_loss(energy, labels, m_in=-12.0, m_out=-6.0)
    assert loss.item() == pytest.approx(max(0, e0 + 12) ** 2 + max(0, -6 - e1) ** 2, rel=1e-6)
    # No outlier pixel: only the inlier term, no NaN.
    only_in = energy_hinge_loss(energy, torch.tensor([[[0, 255]]]), m_in=-12.0, m_out=-6.0)
    assert only_in.item() == pytest.approx(max(0, e0 + 12) ** 2, rel=1e-6)


def test_pal_by_hand():
    probs = torch.tensor([[[[0.6, 0.1]], [[0.3, 0.2]], [[0.1, 0.7]]]])  # K=2 + abstention
    energy = torch.tensor([[[-2.0, -0.5]]])
    labels = torch.tensor([[[0, 254]]])
    a0, a1 = 4.0, 0.25
    loss_in = -math.log(0.6 + 0.1 / a0)
    all_out = [-math.log(p + 0.7 / a1) for p in (0.1, 0.2, 0.7)]
    got = pal_loss(probs, energy, labels, outlier_weight=0.1, outlier_classes="all")
    assert got.item() == pytest.approx(loss_in + 0.1 * sum(all_out) / 3, rel=1e-6)
    got_inlier = pal_loss(probs, energy, labels, outlier_weight=0.1, outlier_classes="inlier")
    assert got_inlier.item() == pytest.approx(loss_in + 0.1 * sum(all_out[:2]) / 2, rel=1e-6)
    no_out = pal_loss(probs, energy, torch.tensor([[[0, 255]]]))
    assert no_out.item() == pytest.approx(loss_in, rel=1e-6)


def test_smoothness_and_sparsity_by_hand():
    energy = torch.tensor([[[1.0, 3.0], [0.0, -2.0]]])
    # vertical diffs: -1, -5; horizontal: 2, -2
    assert energy_smoothness_loss(energy, norm="l1").item() == pytest.approx(1 + 5 + 2 + 2)
    assert energy_smoothness_loss(energy, norm="l2").item() == pytest.approx(0.5 * (1 + 25 + 4 + 4))
    assert energy_smoothness_loss(energy, norm="l1", reduction="mean").item() == pytest.approx(10 / 4)
    assert energy_sparsity_loss(energy, norm="l1").item() == pytest.approx(6.0)
    mask = torch.tensor([[[True, False], [False, True]]])
    assert energy_sparsity_loss(energy, mask, norm="l2").item() == pytest.approx(math.sqrt(5.0))
    assert energy_sparsity_loss(energy, torch.zeros_like(mask)).item() == 0.0


def test_densehybrid_by_hand():
    scores = torch.tensor([[[[2.0, 0.0]], [[1.0, 1.0]]]])
    outlier_logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    labels = torch.tensor([[[1, 254]]])
    terms = densehybrid_loss(scores, outlier_logits, labels, beta1=0.3, beta2=0.03)
    ce = -(1.0 - math.log(math.exp(2.0) + math.exp(1.0)))
    head = (-(1.0 - math.log(math.exp(1.0) + 1.0)) + -(2.0 - math.log(1.0 + math.exp(2.0)))) / 2
    density = math.log(1.0 + math.exp(1.0)) + 1.0  # + stop-gradient mean of the scores
    assert terms["loss_dh_ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["loss_dh_outlier"].item() == pytest.approx(0.3 * head, rel=1e-6)
    assert terms["loss_dh_density"].item() == pytest.approx(0.03 * density, rel=1e-6)
    empty = densehybrid_loss(scores, outlier_logits, torch.tensor([[[1, 0]]]))
    assert empty["loss_dh_density"].item() == 0.0


def test_low_resolution_scores_are_upsampled_to_the_labels():
    # 1x2 class scores against 2x4 labels: the score map is resized bilinearly first.
    scores = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]]]])
    labels = torch.tensor([[[0, 0, 254, 254], [1, 255, 254, 254]]])
    score = -torch.tanh(scores).sum(1, keepdim=True)
    upsampled = torch.nn.functional.interpolate(score, size=(2, 4), mode="bilinear", align_corners=False)[:, 0]
    expected = (torch.relu(5.0 - upsampled[labels == 254]) ** 2).mean()
    got = outlier_score_loss("squared_hinge", scores, labels, alpha=5.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # The outlier pixels lie on the right half, where the upsampled score interpolates towards
    # the second column's value; a plain nearest lookup would give another number.
    nearest = (torch.relu(5.0 - score[0, 0, 0, 1]) ** 2).item()
    assert got.item() != pytest.approx(nearest, rel=1e-3)
