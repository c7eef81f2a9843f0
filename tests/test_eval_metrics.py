"""AnomalyMetrics (exact protocol) against scikit-learn, hand-built component cases and a brute-force sIoU."""
import os

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from rba_plugin.evaluation import AnomalyMetrics
from rba_plugin.evaluation.components import frame_component_scores


def random_frames(seed, n=4, shape=(60, 80)):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        label = (rng.random(shape) < 0.15).astype(np.uint8)
        label[rng.random(shape) < 0.1] = 255
        # Scores overlap between classes, with negative values and many exact ties.
        score = rng.normal(size=shape) * 2 + 1.5 * (label == 1)
        score[rng.random(shape) < 0.2] = 0.5
        frames.append((score.astype(np.float32), label))
    return frames


def sklearn_metrics(frames):
    scores = np.concatenate([s.astype(np.float64)[l != 255] for s, l in frames])
    labels = np.concatenate([l[l != 255] for _, l in frames])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "AP": average_precision_score(labels, scores),
        "AUROC": roc_auc_score(labels, scores),
        "FPR95": fpr[np.argmax(tpr >= 0.95)],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_equal_sklearn(seed):
    frames = random_frames(seed)
    metrics = AnomalyMetrics(with_components=False)
    for score, label in frames:
        metrics.update(score, label)
    ours = metrics.compute()
    ref = sklearn_metrics(frames)
    for key in ("AP", "AUROC", "FPR95"):
        assert abs(ours[key] - ref[key]) < 1e-9, (key, ours[key], ref[key])


def test_fpr95_counts_tie_block_whole():
    # 20 anomaly pixels: 18 at 0.9, 2 tied at 0.1 with 50 of the 100 inliers. TPR reaches 0.95
    # only when the 0.1 block enters, so FPR95 = (50 + inliers above 0.1) / 100.
    score = np.concatenate([np.full(18, 0.9), np.full(2, 0.1), np.full(50, 0.1), np.full(10, 0.5), np.zeros(40)])
    label = np.concatenate([np.ones(20), np.zeros(100)]).astype(np.uint8)
    metrics = AnomalyMetrics(with_components=False)
    metrics.update(score.reshape(1, -1), label.reshape(1, -1))
    assert metrics.compute()["FPR95"] == pytest.approx(0.6, abs=1e-12)


def test_merge_equals_single_accumulator():
    frames = random_frames(5, n=6)
    whole = AnomalyMetrics(min_pred_size=5, min_gt_size=3)
    part_a = AnomalyMetrics(min_pred_size=5, min_gt_size=3)
    part_b = AnomalyMetrics(min_pred_size=5, min_gt_size=3)
    for i, (score, label) in enumerate(frames):
        whole.update(score, label)
        (part_a if i % 2 else part_b).update(score, label)
    part_a.merge(part_b)
    a, b = whole.compute(), part_a.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True, rel=1e-12), key  # frame order differs
    assert np.array_equal(whole.pixels.coarse, part_a.pixels.coarse)


def test_no_anomaly_pixels_gives_nan_with_warning():
    metrics = AnomalyMetrics(min_pred_size=1, min_gt_size=1)
    metrics.update(np.random.default_rng(0).random((10, 10)), np.zeros((10, 10), np.uint8))
    with pytest.warns(RuntimeWarning, match="no anomaly pixels"):
        results = metrics.compute()
    for key in ("AP", "AUROC", "FPR95", "sIoU", "mean_F1"):
        assert np.isnan(results[key]), key


def test_bad_label_values_rejected():
    metrics = AnomalyMetrics()
    with pytest.raises(ValueError, match="0, 1 or 255"):
        metrics.update(np.zeros((4, 4)), np.full((4, 4), 2, np.uint8))


# ----------------------------------------------------------------------------- components


def test_one_object_split_in_two_predictions():
    label = np.zeros((40, 40), np.uint8)
    label[10:30, 10:30] = 1  # 400 px
    pred = np.zeros_like(label, bool)
    pred[10:30, 10:19] = True  # 180 px
    pred[10:30, 21:30] = True  # 180 px, two-column gap
    siou, ppv = frame_component_scores(pred, label, 1, 1)
    assert siou.tolist() == pytest.approx([360 / 400])
    assert sorted(ppv.tolist()) == [1.0, 1.0]


def test_two_objects_merged_by_one_prediction():
    label = np.zeros((30, 40), np.uint8)
    label[10:20, 0:10] = 1
    label[10:20, 20:30] = 1
    pred = np.zeros_like(label, bool)
    pred[10:20, 0:30] = True  # 300 px over both objects and the 100 px between them
    siou, ppv = frame_component_scores(pred, label, 1, 1)
    # I = 100, |P| = 300, |k| = 100, A = 100 (the other object) -> 100 / (300 + 100 - 100 - 100).
    assert siou.tolist() == pytest.approx([0.5, 0.5])
    assert ppv.tolist() == pytest.approx([200 / 300])
    metrics = AnomalyMetrics(component_threshold=0.5, min_pred_size=1, min_gt_size=1)
    metrics.update(pred.astype(np.float32), label)
    results = metrics.compute()
    # tau <= 0.5: 2 TP, 0 FN, 0 FP -> F1 1; 0.5 < tau < 2/3: 0 TP, 2 FN, 0 FP -> 0; tau >= 0.7: FP 1 -> 0.
    assert results["mean_F1"] == pytest.approx(6 / 11)
    assert results["F1_50"] == 1.0 and results["FP_75"] == 1 and results["FN_75"] == 2
    assert results["sIoU"] == pytest.approx(0.5) and results["PPV"] == pytest.approx(2 / 3)


def test_predictions_on_void_are_ignored_and_void_splits_blobs():
    label = np.zeros((30, 60), np.uint8)
    label[:, 40:] = 255
    label[5:15, 5:15] = 1
    pred = np.zeros_like(label, bool)
    pred[0:20, 45:55] = True  # wholly on void: not a prediction at all
    pred[20:30, 0:30] = True  # false positive on inliers...
    label[20:30, 14:16] = 255  # ...split by a void column into two components
    siou, ppv = frame_component_scores(pred, label, 1, 1)
    assert siou.tolist() == [0.0]  # the object is missed
    assert ppv.tolist() == [0.0, 0.0]  # two false positives, none from the void prediction


def test_tiny_components_are_filtered():
    label = np.zeros((30, 30), np.uint8)
    label[2:4, 2:4] = 1  # 4 px ground truth: becomes void with min_gt_size 5
    label[10:20, 10:20] = 1
    pred = np.zeros_like(label, bool)
    pred[2:4, 2:4] = True  # prediction on the voided tiny object: no valid pixels left
    pred[25:27, 25:27] = True  # 4 px prediction: dropped with min_pred_size 5
    pred[10:20, 10:20] = True
    siou, ppv = frame_component_scores(pred, label, 5, 5)
    assert siou.tolist() == [1.0]
    assert ppv.tolist() == [1.0]
    siou, ppv = frame_component_scores(pred, label, 1, 1)
    assert sorted(siou.tolist()) == [1.0, 1.0] and sorted(ppv.tolist()) == [0.0, 1.0, 1.0]


def brute_force_siou_ppv(pred, label, min_pred, min_gt):
    """The SMIYC definitions written with sets of pixels, one component at a time."""
    eight = np.ones((3, 3), bool)
    void = label == 255
    pred_cc, n_pred = ndimage.label(pred & ~void, structure=eight)
    for i in range(1, n_pred + 1):
        if (pred_cc == i).sum() < min_pred:
            pred_cc[pred_cc == i] = 0
    gt_cc, n_gt = ndimage.label(label == 1, structure=eight)
    for i in range(1, n_gt + 1):
        if (gt_cc == i).sum() < min_gt:
            void |= gt_cc == i
            gt_cc[gt_cc == i] = 0
    roi = ~void
    gt_ids = [i for i in np.unique(gt_cc[roi]) if i]
    pred_ids = [i for i in np.unique(pred_cc[roi]) if i]
    siou = []
    for k in gt_ids:
        gt_k = (gt_cc == k) & roi
        hit = [p for p in pred_ids if ((pred_cc == p) & gt_k).any()]
        pred_union = np.isin(pred_cc, hit) & roi if hit else np.zeros_like(roi)
        others = (gt_cc > 0) & (gt_cc != k) & roi
        inter = (gt_k & pred_union).sum()
        union = ((gt_k | pred_union) & ~(pred_union & others)).sum()
        siou.append(inter / union if hit else 0.0)
    ppv = [((pred_cc == p) & roi & (gt_cc > 0)).sum() / ((pred_cc == p) & roi).sum() for p in pred_ids]
    return sorted(siou), sorted(ppv)


@pytest.mark.parametrize("seed", range(4))
def test_component_scores_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (64, 64)
    label = (ndimage.gaussian_filter(rng.random(shape), 2) > 0.55).astype(np.uint8)
    label[ndimage.gaussian_filter(rng.random(shape), 3) > 0.56] = 255
    pred = ndimage.gaussian_filter(rng.random(shape), 2) > 0.54
    siou, ppv = frame_component_scores(pred, label, 6, 4)
    ref_siou, ref_ppv = brute_force_siou_ppv(pred, label, 6, 4)
    assert len(siou) > 2 and len(ppv) > 2
    assert sorted(siou.tolist()) == pytest.approx(ref_siou, abs=1e-12)
    assert sorted(ppv.tolist()) == pytest.approx(ref_ppv, abs=1e-12)


def test_best_f1_threshold_and_spill_to_disk(tmp_path):
    frames = random_frames(3, n=3)
    in_memory = AnomalyMetrics(min_pred_size=3, min_gt_size=2)
    on_disk = AnomalyMetrics(min_pred_size=3, min_gt_size=2, cache_memory_bytes=0, tmp_root=str(tmp_path))
    for score, label in frames:
        in_memory.update(score, label)
        on_disk.update(score, label)
    assert on_disk.cache.spilled_frames == 3 and len(os.listdir(tmp_path)) == 1
    a, b = in_memory.compute(), on_disk.compute()
    assert a == pytest.approx(b, nan_ok=True)
    # The component threshold maximises pixel F1 of score >= t over all valid pixels (brute force).
    scores = np.concatenate([s[l != 255] for s, l in frames])
    labels = np.concatenate([l[l != 255] for _, l in frames])
    best = max(np.unique(scores), key=lambda t: 2 * ((scores >= t) & (labels == 1)).sum()
               / ((scores >= t).sum() + (labels == 1).sum()))
    assert a["component_threshold"] == float(best)
    on_disk.close()
    assert os.listdir(tmp_path) == []


def test_float16_quantisation_matches_numpy_and_nan_is_rejected():
    import torch

    from rba_plugin.evaluation.anomaly_metrics import to_float16

    x = np.random.default_rng(0).normal(size=100000).astype(np.float32) * np.float32(3e4)
    x[:8] = [np.inf, -np.inf, 7e4, 65520, 65519, -0.0, 1e-8, 3e-8]  # overflow, ties, subnormals
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
        assert np.array_equal(to_float16(x).view(np.uint16), expected)
        assert np.array_equal(to_float16(torch.from_numpy(x)).view(np.uint16), expected)
    metrics = AnomalyMetrics(with_components=False)
    score = np.zeros((3, 3), np.float32)
    score[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.update(score, np.zeros((3, 3), np.uint8))
    score[1, 1] = np.nan
    label = np.full((3, 3), 255, np.uint8)  # NaN on void pixels is ignored like any void score
    metrics.update(score, label)
