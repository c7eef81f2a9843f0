"""The outlier losses' building blocks and their paper forms against hand computations on tiny
tensors (the official forms are checked against RbA's and PEBAL's code in test_loss_fidelity_*)."""
import math

import pytest
import torch

from rba_plugin.modeling.ood.losses import (
    bce_outlier_loss,
    energy_hinge_loss,
    energy_smoothness_loss,
    energy_sparsity_loss,
    gambler_loss,
    inlier_energy,
    kl_outlier_loss,
    l1_outlier_loss,
    masked_mean,
    mse_outlier_loss,
    official_energy_hinge_loss,
    official_outlier_loss,
    pal_loss,
    resize_to_labels,
    split_labels,
    squared_hinge_outlier_loss,
    sum_entropy,
)

# One image, 1 x 3 pixels: inlier (class 1), outlier, void.
LABELS = torch.tensor([[[1, 254, 255]]])
SCORE = torch.tensor([[[-0.5, -2.0, 7.0]]], dtype=torch.float64, requires_grad=True)


def sets(labels=LABELS, num_classes=2):
    return split_labels(labels, num_classes)


def test_split_labels_and_bad_class_ids():
    inlier, outlier = sets()
    assert inlier.tolist() == [[[True, False, False]]] and outlier.tolist() == [[[False, True, False]]]
    with pytest.raises(ValueError, match="class id 7, but there are 2 classes"):
        split_labels(torch.tensor([[[7, 254, 255]]]), 2)


def test_masked_mean_of_an_empty_set_is_a_graph_connected_zero():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    zero = masked_mean(x, torch.zeros(2, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad


def test_paper_outlier_losses_by_hand():
    _, outlier = sets()
    assert squared_hinge_outlier_loss(SCORE, outlier, alpha=5.0).item() == pytest.approx(49.0)  # (5 + 2)^2
    assert mse_outlier_loss(SCORE, outlier, alpha=5.0).item() == pytest.approx(49.0)
    assert l1_outlier_loss(SCORE, outlier, alpha=5.0).item() == pytest.approx(7.0)
    inlier, outlier = sets()

    def bce(logit, y):
        p = 1 / (1 + math.exp(-logit))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    # Eq. 10 as the text reads it: non-void pixels only, no 1/2.
    assert bce_outlier_loss(SCORE, inlier, outlier).item() == pytest.approx((bce(-0.5, 0) + bce(-2.0, 1)) / 2)


def test_official_margin_losses_halve_only_with_outliers():
    inlier, outlier = sets()
    both = official_outlier_loss("squared_hinge", SCORE, inlier, outlier, gamma_in=-1.0, gamma_out=-0.1)
    assert both.item() == pytest.approx(0.5 * (0.5**2 + 1.9**2))
    no_out = torch.zeros_like(outlier)
    alone = official_outlier_loss("mse", SCORE, inlier, no_out, gamma_in=-1.0, gamma_out=-0.1)
    assert alone.item() == pytest.approx(0.5**2)  # the inlier part alone, not halved
    with pytest.raises(ValueError, match="kind must be squared_hinge, mse or l1"):
        official_outlier_loss("hinge", SCORE, inlier, outlier, gamma_in=0.0, gamma_out=5.0)


def test_paper_kl_by_hand():
    # Eq. 11 in its finite direction: CE to the true class on inliers, KL(U || softmax) on outliers.
    scores = torch.tensor([[[[0.5, 1.0, 3.0]], [[2.0, 0.2, 3.0]]]], dtype=torch.float64)
    inlier, outlier = sets()

    def log_softmax(values):
        lse = math.log(sum(math.exp(v) for v in values))
        return [v - lse for v in values]

    kl_in = -log_softmax([0.5, 2.0])[1]
    kl_out = sum(0.5 * (math.log(0.5) - lp) for lp in log_softmax([1.0, 0.2]))
    assert kl_outlier_loss(scores, LABELS, inlier, outlier).item() == pytest.approx(0.5 * (kl_in + kl_out))


def test_sum_entropy_by_hand():
    scores = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    p = [0.25, 0.75]
    assert sum_entropy(scores).item() == pytest.approx(-sum(q * math.log(q) for q in p))


def test_energy_and_hinges_by_hand():
    logits = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]], [[5.0, 5.0]]]])  # K=2 inlier + 1 extra
    energy = inlier_energy(logits, 2)
    e0, e1 = -math.log(math.exp(1.0) + 1.0), -math.log(math.exp(-1.0) + math.exp(2.0))
    assert energy[0, 0].tolist() == pytest.approx([e0, e1])
    inlier, outlier = split_labels(torch.tensor([[[0, 254]]]), 2)
    paper = energy_hinge_loss(energy, inlier, outlier, m_in=-12.0, m_out=-6.0)
    assert paper.item() == pytest.approx(max(0, e0 + 12) ** 2 + max(0, -6 - e1) ** 2, rel=1e-6)
    official = official_energy_hinge_loss(energy, inlier, outlier, m_in=-12.0, m_out=-6.0)
    assert official.item() == pytest.approx(0.5 * paper.item(), rel=1e-6)


def test_gambler_and_pal_by_hand():
    probs = torch.tensor([[[[0.6, 0.1]], [[0.3, 0.2]], [[0.1, 0.7]]]])  # K=2 + abstention
    labels = torch.tensor([[[0, 254]]])
    reward = torch.tensor([[[4.0, 0.25]]])
    # Official Gambler: outlier part over the K inlier classes, clamped at 1e-7, weight 0.1.
    official = gambler_loss(probs, reward, labels, with_outliers=True, outlier_weight=0.1)
    loss_in = -math.log(0.6 + 0.1 / 4.0)
    out = [-math.log(p + 0.7 / 0.25) for p in (0.1, 0.2)]
    assert official.item() == pytest.approx(loss_in + 0.1 * sum(out) / 2, rel=1e-6)
    clean = gambler_loss(probs, reward, torch.tensor([[[0, 1]]]), with_outliers=False)
    assert clean.item() == pytest.approx((loss_in - math.log(0.2 + 0.7 / 0.25)) / 2, rel=1e-6)
    # Paper: penalty E^2, outlier part over all K+1 labels.
    energy = torch.tensor([[[-2.0, -0.5]]])
    paper = pal_loss(probs, energy, labels, outlier_weight=1.0)
    all_out = [-math.log(p + 0.7 / 0.25) for p in (0.1, 0.2, 0.7)]
    assert paper.item() == pytest.approx(loss_in + sum(all_out) / 3, rel=1e-6)


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
    with pytest.raises(ValueError, match="norm must be 'l1' or 'l2'"):
        energy_smoothness_loss(energy, norm="l3")


def test_maps_are_upsampled_with_align_corners_true():
    # RbA's criterion (Up_T): target index i of 4 reads source i / 3 of 2.
    values = torch.tensor([[[0.0, 3.0]]])
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    assert resize_to_labels(values, labels)[0, 0].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0])
    half_pixel = resize_to_labels(values, labels, align_corners=False)[0, 0].tolist()
    assert half_pixel == pytest.approx([0.0, 0.75, 2.25, 3.0])
