"""Protocol "smiyc": the official Segment-Me-If-You-Can arithmetic, checked against hand
computations of its algorithm (per-frame percentile bins, aggregation, delta from the binned curve,
strict float16 threshold, size filters) on small frames."""
import warnings

import numpy as np
import pytest

from rba_plugin.evaluation import AnomalyMetrics
from rba_plugin.evaluation.smiyc_protocol import smiyc_frame_bins, smiyc_pixel_result, smiyc_prediction

from .test_eval_metrics import brute_force_siou_ppv


def smiyc(frames, **kwargs):
    metrics = AnomalyMetrics(protocol="smiyc", **kwargs)
    for name, score, label in frames:
        metrics.update(score, label, frame=name)
    results = metrics.compute()
    metrics.close()
    return results


def row(scores, labels):
    return np.array([scores], np.float32), np.array([labels], np.uint8)


# One frame: anomaly scores 0.5, 0.75; in-distribution 0, 0.25, 0.25, 0.5; a void pixel at 10.
FRAME_A = row([0.5, 0.75, 0.0, 0.25, 0.25, 0.5, 10.0], [1, 1, 0, 0, 0, 0, 255])


def test_frame_bins_by_hand():
    score, label = FRAME_A
    valid = label != 255
    bins = smiyc_frame_bins(score[valid].astype(np.float16), label[valid] == 1, "a")
    # vmin 0, vmax 0.75 (the void 10 is not seen), eps = max(0.0075, 0.01) = 0.01; quantiles of
    # the anomaly scores at levels 0, 1 -> 0.5, 0.75; of the others at 0, 1/3, 2/3, 1 -> 0, 0.25,
    # 0.25, 0.5; edges -0.01, 0, 0.25, 0.5, 0.75, 0.76; counts per [lower, upper) bin.
    assert bins.thresholds.tolist() == [-0.01, 0.0, 0.25, 0.5, 0.75]
    assert bins.tp.tolist() == [0, 0, 0, 1, 1]
    assert bins.fp.tolist() == [0, 1, 2, 1, 0]
    assert (bins.num_pos, bins.num_neg) == (2, 4)


def test_frame_bins_follow_numpy_quantile_and_histogram():
    rng = np.random.default_rng(0)
    score = (rng.random(3000) ** 3).astype(np.float16)  # > 384 values per class: interpolated edges
    anomaly = rng.random(3000) < 0.3
    bins = smiyc_frame_bins(score, anomaly)
    lo = float(score.min()) - max(float(score.max() - score.min()) * 0.01, 0.01)
    hi = float(score.max()) + max(float(score.max() - score.min()) * 0.01, 0.01)
    edges = np.unique(np.concatenate([[lo, hi], np.quantile(score[anomaly], np.linspace(0, 1, 384)),
                                      np.quantile(score[~anomaly], np.linspace(0, 1, 384))]))
    assert len(edges) > 600 and np.array_equal(bins.thresholds, edges[:-1])
    assert np.array_equal(bins.tp, np.histogram(score[anomaly], edges)[0])
    assert np.array_equal(bins.fp, np.histogram(score[~anomaly], edges)[0])


def test_one_frame_curve_by_hand():
    score, label = FRAME_A
    results = smiyc([("a", score, label)], min_pred_size=1, min_gt_size=1)
    # Descending bins (threshold: TP, FP) 0.75: 1,0 | 0.5: 1,1 | 0.25: 0,2 | 0: 0,1 | -0.01: 0,0;
    # point 0 is kept twice, (0, 0) is put in front. Points (TP, FP): (0,0) (1,0) (1,0) (2,1) (2,3)
    # (2,4) (2,4) with P = 2, N = 4.
    assert results["AP"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert results["AUROC"] == pytest.approx(0.25 * 0.75 + 0.5 + 0.25)
    assert results["FPR95"] == 0.25
    assert results["pixel_F1"] == pytest.approx(0.8)  # 2*2 / (2*2 + 1 + 0) at threshold 0.5
    assert results["component_threshold"] == 0.5
    # score > 0.5: only the 0.75 pixel is predicted (1 px component on the 2 px object).
    assert results["sIoU"] == pytest.approx(0.5) and results["PPV"] == 1.0


# Two frames whose highest bins share threshold 1.0 (saturated scores).
FRAMES_B = [("f0", *row([1.0, 1.0, 0.0, 1.0], [1, 1, 0, 0])), ("f1", *row([1.0, 1.0, 1.0, 0.5], [1, 0, 0, 0]))]


def test_shared_top_threshold_by_hand():
    with pytest.warns(RuntimeWarning, match=r"2 frames share the highest SMIYC threshold 1.0.*\[0.444444, 0.611111\]"):
        results = smiyc(FRAMES_B, min_pred_size=1, min_gt_size=1)
    # f0 bins (threshold: TP, FP): 1: 2,1 | 0: 0,1 | -0.01: 0,0; f1: 1: 1,2 | 0.5: 0,1 | 0.49: 0,0.
    # Stable descending order puts f1's 1.0 entry first: points (0,0) (1,2) (3,3) (3,4) (3,4) (3,5)
    # (3,5), P = 3, N = 5. (f0's entry first would give AP 2/3 * 2/3 + 1/3 * 1/2 = 11/18.)
    assert results["AP"] == pytest.approx(1 / 3 * 1 / 3 + 2 / 3 * 1 / 2)
    assert results["AUROC"] == pytest.approx(0.4 * (1 / 3) / 2 + 0.2 * (1 / 3 + 1) / 2 + 0.2 + 0.2)
    assert results["FPR95"] == pytest.approx(0.6)
    assert results["pixel_F1"] == pytest.approx(2 / 3) and results["component_threshold"] == 1.0
    # score > 1.0 predicts nothing on saturated maps: every object missed, no predicted component.
    assert results["sIoU"] == 0.0 and np.isnan(results["PPV"]) and results["mean_F1"] == 0.0
    # The exact protocol: the three anomaly pixels tie with three others at 1.0 -> AP 1/2.
    exact = AnomalyMetrics(min_pred_size=1, min_gt_size=1)
    for name, score, label in FRAMES_B:
        exact.update(score, label, frame=name)
    results = exact.compute()
    assert results["AP"] == pytest.approx(0.5) and results["component_threshold"] == 1.0
    # score >= 1.0 predicts: components {0, 1} (PPV 1), {3} (0) in f0 and {0, 1, 2} (1/3) in f1.
    assert results["PPV"] == pytest.approx((1 + 0 + 1 / 3) / 3)


def test_frames_are_ordered_by_name():
    reordered = [FRAMES_B[1], FRAMES_B[0]]  # arrival order must not matter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert smiyc(reordered, with_components=False) == smiyc(FRAMES_B, with_components=False)


def component_frame():
    """8 x 10: two diagonally touching objects (one 8-connected component of 13 px), a 1 px
    object (voided by min_gt_size 2), a void column, predictions on void and on the tiny object,
    a 1 px prediction (dropped by min_pred_size 2) and pixels exactly on the float16 delta."""
    label = np.zeros((8, 10), np.uint8)
    label[1:4, 1:4] = 1  # 9 px
    label[4:6, 4:6] = 1  # 4 px, touches (3, 3) diagonally
    label[6, 8] = 1  # tiny object
    label[:, 9] = 255
    score = np.full((8, 10), 0.1, np.float32)
    score[1:4, 1:5] = 0.9  # 12 px prediction over the first 9 px and 3 background pixels
    score[4:6, 4:6] = np.float16(0.6002)  # 0.60009765625: exactly the float16 delta, not > it
    score[7, 1] = 0.9  # 1 px prediction
    score[:, 9] = 0.9  # on void
    score[6:8, 8] = 0.9  # on the tiny object and below it: a 2 px component, 1 px valid
    return score, label


def test_components_by_hand():
    score, label = component_frame()
    results = smiyc([("c", score, label)], component_threshold=0.6002, min_pred_size=2, min_gt_size=2)
    # Object (13 px) vs the 12 px prediction: I = 9, sIoU = 9 / (12 + 13 - 9) = 9/16; PPV 9/12 and
    # 0/1 for the prediction whose only valid pixel is below the voided tiny object.
    assert results["component_threshold"] == 0.6002
    assert results["sIoU"] == pytest.approx(9 / 16) and results["PPV"] == pytest.approx((0.75 + 0) / 2)
    # tau <= 0.55: TP 1, FN 0, FP 1 -> F1 2/3 (7 taus); tau >= 0.6: TP 0, FN 1, FP 1 -> 0.
    assert results["mean_F1"] == pytest.approx(7 * (2 / 3) / 11)
    assert (results["F1_50"], results["F1_75"], results["FN_75"], results["FP_75"]) == pytest.approx((2 / 3, 0, 1, 1))
    # The official algorithm written with sets of pixels, one component at a time.
    prediction = score.astype(np.float16) > np.float16(0.6002)
    siou, ppv = brute_force_siou_ppv(prediction, label, 2, 2)
    assert siou == pytest.approx([9 / 16]) and ppv == pytest.approx([0.0, 0.75])
    # The exact protocol at delta = 0.60009765625 (>=) predicts the 4 px object too, joined to
    # the 12 px prediction: I = 13, sIoU = 13 / 16.
    exact = AnomalyMetrics(component_threshold=float(np.float16(0.6002)), min_pred_size=2, min_gt_size=2)
    exact.update(score, label)
    assert exact.compute()["sIoU"] == pytest.approx(13 / 16)


@pytest.mark.parametrize("seed", range(3))
def test_components_at_binned_delta_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(3):
        label = np.zeros((40, 48), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, 34, 2)
            label[y: y + rng.integers(1, 7), x: x + rng.integers(1, 7)] = 1
        label[rng.random((40, 48)) < 0.05] = 255
        score = np.clip(rng.normal(0.3, 0.2, (40, 48)) + 0.5 * (label == 1), 0, 1).astype(np.float32)
        score[rng.random((40, 48)) < 0.1] = 1.0  # saturated pixels
        frames.append((f"f{i}", score, label))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        results = smiyc(frames, min_pred_size=3, min_gt_size=4)
    delta = results["component_threshold"]
    siou, ppv = [], []
    for _, score, label in frames:
        s, p = brute_force_siou_ppv(score.astype(np.float16) > np.float16(delta), label, 3, 4)
        siou += s
        ppv += p
    assert results["sIoU"] == pytest.approx(np.mean(siou), abs=1e-12)
    assert results["PPV"] == pytest.approx(np.mean(ppv), abs=1e-12)
    taus = np.linspace(0.25, 0.75, 11)
    f1 = [2 * np.sum(np.array(siou) >= t) / (len(siou) + np.sum(np.array(siou) >= t) + np.sum(np.array(ppv) < t))
          for t in taus]
    assert results["mean_F1"] == pytest.approx(np.mean(f1), abs=1e-12)


def test_background_smaller_than_the_size_filter_is_voided():
    # 3 x 4 frame, 11 anomaly pixels and 1 in-distribution pixel, all predicted: the official
    # filter loop also voids the 1 px background (< min_gt_size 2), so the prediction's valid
    # pixels are the object's.
    label = np.ones((3, 4), np.uint8)
    label[0, 0] = 0
    score = np.full((3, 4), 0.9, np.float32)
    official = smiyc([("t", score, label)], component_threshold=0.5, min_pred_size=1, min_gt_size=2)
    assert official["sIoU"] == 1.0 and official["PPV"] == 1.0
    exact = AnomalyMetrics(component_threshold=0.5, min_pred_size=1, min_gt_size=2)
    exact.update(score, label)
    results = exact.compute()
    assert results["sIoU"] == pytest.approx(11 / 12) and results["PPV"] == pytest.approx(11 / 12)


def test_prediction_compares_like_numpy_1():
    score = np.array([0.60009765625, 64992.0, 65024.0], np.float16)
    # -65000 < delta < 65000: compared in float16, delta rounded to nearest first.
    assert smiyc_prediction(score, 0.6000976).tolist() == [False, True, True]  # float64 would say True
    assert smiyc_prediction(score, 64999.9).tolist() == [False, False, True]  # delta -> 64992
    # |delta| >= 65000: compared in float32.
    assert smiyc_prediction(score, 65000.0).tolist() == [False, False, True]


def test_merge_and_no_pixels():
    score, label = FRAME_A
    a, b = AnomalyMetrics(protocol="smiyc"), AnomalyMetrics(protocol="smiyc")
    a.update(score, label, frame="a")
    b.update(score * 0.5, label, frame="b")
    a.merge(b)
    c = AnomalyMetrics(protocol="smiyc")
    c.update(score * 0.5, label, frame="b")
    c.update(score, label, frame="a")
    assert a.pixel_result().metrics == c.pixel_result().metrics
    empty = np.full((2, 2), 255, np.uint8)
    d = AnomalyMetrics(protocol="smiyc", with_components=False)
    d.update(np.zeros((2, 2), np.float32), empty)  # no valid pixel: skipped (the official code raises)
    with pytest.warns(RuntimeWarning, match="no anomaly pixels"):
        assert np.isnan(d.compute()["AP"])
    assert smiyc_pixel_result([]).best_f1_threshold is None
