"""Anomaly scores against hand computations (math module, per pixel) and scipy."""
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from rba_plugin.modeling.ood import available_scores, compute_ood_score, densehybrid_score, gaussian_smooth, get_score

# One pixel, three classes: L = (0.2, 1.5, 0.0); another pixel with no class claiming it.
L = torch.tensor([[[0.2, 0.0]], [[1.5, 0.0]], [[0.0, 0.0]]])  # 3 x 1 x 2


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_registered_names():
    assert available_scores() == ["densehybrid", "densehybrid_official", "energy", "entropy", "maxlogit", "msp",
                                  "neg_logit_sum", "neg_sigmoid_sum", "raml", "rba", "unknown_probability"]
    assert [n for n in available_scores() if get_score(n).inputs == ("class_scores",)] == [
        "energy", "entropy", "maxlogit", "msp", "neg_logit_sum", "neg_sigmoid_sum", "rba"]


def test_rba_by_hand():
    score = compute_ood_score("rba", L)
    assert score.shape == (1, 2)
    assert score[0, 0].item() == pytest.approx(-(math.tanh(0.2) + math.tanh(1.5) + 0.0))
    assert score[0, 1].item() == 0.0  # rejected by all: the maximum possible score
    assert score[0, 1] > score[0, 0]


def test_maxlogit_msp_entropy_energy_neg_sum_by_hand():
    values = [0.2, 1.5, 0.0]
    p = softmax(values)
    expected = {
        "maxlogit": -1.5,
        "msp": -max(p),
        "entropy": -sum(q * math.log(q) for q in p),
        "energy": -math.log(sum(math.exp(v) for v in values)),
        "neg_logit_sum": -1.7,
        "neg_sigmoid_sum": -sum(1 / (1 + math.exp(-v)) for v in values),
    }
    for name, value in expected.items():
        assert compute_ood_score(name, L)[0, 0].item() == pytest.approx(value, abs=1e-6), name


@pytest.mark.parametrize("name", ["rba", "maxlogit", "msp", "entropy", "energy", "neg_logit_sum", "neg_sigmoid_sum"])
def test_higher_means_more_anomalous(name):
    # A confident inlier pixel (one large class score) must score lower than a flat one.
    confident = torch.tensor([5.0, 0.0, 0.0]).view(3, 1, 1)
    flat = torch.tensor([0.1, 0.1, 0.1]).view(3, 1, 1)
    assert compute_ood_score(name, confident).item() < compute_ood_score(name, flat).item()


def test_batched_equals_per_image():
    torch.manual_seed(0)
    inputs = {"class_scores": torch.rand(2, 4, 5, 6) * 3, "outlier_logits": torch.randn(2, 2, 5, 6),
              "open_set_logits": torch.randn(2, 5, 5, 6), "region_similarity": torch.rand(2, 1, 5, 6)}
    for name in available_scores():
        spec = get_score(name)
        together = spec(inputs)
        assert together.shape == (2, 5, 6), name
        for i in range(2):
            assert torch.allclose(together[i], spec({k: v[i] for k, v in inputs.items()})), name


def test_open_set_and_raml_scores_by_hand():
    logits = torch.tensor([1.0, 0.0, 2.0]).view(3, 1, 1)  # two known classes + unknown
    p_unknown = math.exp(2.0) / (math.exp(1.0) + 1.0 + math.exp(2.0))
    assert get_score("unknown_probability")({"open_set_logits": logits}).item() == pytest.approx(p_unknown)
    raml = get_score("raml")({"class_scores": L, "region_similarity": torch.tensor([[[0.5, 1.0]]])})
    assert raml[0].tolist() == pytest.approx([-1.5 * 0.5, -0.0])


def test_unknown_score_lists_known_names():
    with pytest.raises(ValueError, match="unknown anomaly score 'rbaa'.*energy.*rba"):
        compute_ood_score("rbaa", L)


def test_bad_rank():
    with pytest.raises(ValueError, match="C x H x W"):
        compute_ood_score("rba", torch.zeros(4, 4))


def test_gaussian_smoothing_matches_scipy():
    rng = np.random.default_rng(0)
    score = rng.normal(size=(2, 12, 17))
    ours = gaussian_smooth(torch.from_numpy(score), kernel_size=7, sigma=1.0).numpy()
    # torchvision pads by reflection without repeating the edge: scipy's 'mirror'; radius 3.
    for i in range(2):
        expected = scipy.ndimage.gaussian_filter(score[i], sigma=1.0, mode="mirror", truncate=3.0)
        assert np.abs(ours[i] - expected).max() < 1e-6
    smoothed = compute_ood_score("rba", torch.rand(3, 9, 9), smoothing=True)
    assert smoothed.shape == (9, 9)


def test_densehybrid_score_by_hand():
    scores = torch.tensor([1.0, 2.0]).view(2, 1, 1)
    outlier_logits = torch.tensor([0.5, -0.5]).view(2, 1, 1)
    p_out = math.exp(-0.5) / (math.exp(0.5) + math.exp(-0.5))
    expected = math.log(p_out) - math.log(math.exp(1.0) + math.exp(2.0))
    assert densehybrid_score(scores, outlier_logits).item() == pytest.approx(expected, abs=1e-6)
