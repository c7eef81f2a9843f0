"""Protocol "exact": float32 pixel metrics equal scikit-learn for any score range, with keys spilled
to disk, split into ranges, merged and gathered across (simulated) processes."""
import threading
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from rba_plugin.evaluation import AnomalyMetrics, ExactPixelAccumulator
from rba_plugin.evaluation.anomaly_metrics import float32_at_least
from rba_plugin.evaluation.pixel_exact import float32_sort_key, key_to_float32

# Order-preserving transforms that float16 (the previous implementation) collapsed; applied in
# float64 to k / 64 they give float32 values exactly.
TRANSFORMS = {
    "x": lambda x: x,
    "x*1e5": lambda x: x * 1e5,
    "x+1e5": lambda x: x + 1e5,
    "x+2000": lambda x: x + 2000,
    "[1000,1001]": lambda x: 1000 + x,
    "[1-2^-10,1]": lambda x: 1 - (1 - x) / 1024,
    "[-1e5,0]": lambda x: (x - 1) * 1e5,
}


def reference(frames):
    """scikit-learn on every valid pixel, and the best-F1 threshold by brute force."""
    scores = np.concatenate([s.astype(np.float64)[l != 255] for s, l in frames])
    labels = np.concatenate([l[l != 255] for _, l in frames])
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    distinct = np.unique(scores)
    tp = np.array([((scores >= t) & (labels == 1)).sum() for t in distinct])
    fp = np.array([((scores >= t) & (labels == 0)).sum() for t in distinct])
    f1 = 2 * tp / (tp + fp + labels.sum())
    best = np.flatnonzero(f1 == f1.max())[-1]  # highest threshold among equal F1
    return {"AP": average_precision_score(labels, scores), "AUROC": roc_auc_score(labels, scores),
            "FPR95": fpr[np.argmax(tpr >= 0.95)], "pixel_F1": f1.max(), "threshold": distinct[best]}


def frames_of(transform, seed, n=3, shape=(40, 50), overlap=True):
    """Scores k / 64 (positives higher), many ties, void pixels, transformed and cast to float32."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        label = (rng.random(shape) < 0.2).astype(np.uint8)
        label[rng.random(shape) < 0.1] = 255
        if overlap:
            k = np.clip(rng.normal(30 + 10 * (label == 1), 8), 0, 63).round()
        else:
            k = np.where(label == 1, rng.integers(32, 64, shape), rng.integers(0, 32, shape))
        score = transform(k / 64.0)
        assert np.array_equal(score.astype(np.float32).astype(np.float64), score)  # exact in float32
        frames.append((score.astype(np.float32), label))
    return frames


def evaluate(frames, **kwargs):
    metrics = AnomalyMetrics(with_components=False, **kwargs)
    for i, (score, label) in enumerate(frames):
        metrics.update(score, label, frame=f"f{i}")
    pixel = metrics.pixel_result()
    metrics.close()
    return pixel


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_separating_score_is_perfect_under_every_transform(name):
    frames = frames_of(TRANSFORMS[name], seed=0, overlap=False)
    pixel = evaluate(frames)
    assert pixel.metrics == {"AP": 1.0, "AUROC": 1.0, "FPR95": 0.0, "pixel_F1": 1.0}
    assert pixel.best_f1_threshold == TRANSFORMS[name](32 / 64)  # the lowest anomaly score


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("layout", ["ram", "spilled"])
def test_equals_scikit_learn_under_every_transform(name, layout):
    frames = frames_of(TRANSFORMS[name], seed=1)
    # "spilled": every frame a run on disk and ranges of at most 40 pixels (many ranges, and bins
    # above the limit resolved through the dense sub-histogram).
    kwargs = {"key_buffer_bytes": 0} if layout == "spilled" else {}
    metrics = AnomalyMetrics(with_components=False, **kwargs)
    if layout == "spilled":
        metrics.pixels.range_pixels = 40
    for score, label in frames:
        metrics.update(score, label)
    pixel = metrics.pixel_result()
    if layout == "spilled":
        assert metrics.pixels.store.disk_bytes > 0 and metrics.pixels.store.memory_bytes == 0
    metrics.close()
    ref = reference(frames)
    for key in ("AP", "AUROC", "FPR95", "pixel_F1"):
        assert pixel.metrics[key] == pytest.approx(ref[key], abs=1e-12), key
    assert pixel.best_f1_threshold == ref["threshold"]


def test_float32_values_and_specials_keep_their_order():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.normal(size=2000).astype(np.float32) * np.float32(10.0) ** rng.integers(-40, 38, 2000),
        np.array([0.0, -0.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38, np.inf, -np.inf, 1.0, 1.0], np.float32),
    ]).astype(np.float32)
    keys = float32_sort_key(x)
    order = np.argsort(keys, kind="stable")
    assert np.all(np.diff(x[order].astype(np.float64)) >= 0)  # key order is float order
    same_key = keys[:, None] == keys[None, :]
    assert np.array_equal(same_key, x[:, None] == x[None, :])  # equal keys iff equal floats (-0 == +0)
    back = key_to_float32(keys)
    assert np.array_equal(back, x)  # -0.0 comes back as +0.0, which compares equal


def test_float64_scores_warn_when_rounding_merges_values():
    label = np.zeros((1, 4), np.uint8)
    label[0, 0] = 1
    exact64 = np.array([[0.5, 0.25, 1e5, -3.0]])  # every value a float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate([(exact64, label)])
    merged = np.array([[0.5, 0.5 + 1e-12, 0.5 + 2e-12, 0.1]])  # three values, one float32
    with pytest.warns(RuntimeWarning, match=r"frame 'f0'.*merged 2 distinct values"):
        metrics = AnomalyMetrics(with_components=False)
        metrics.update(merged, label, frame="f0")
    with pytest.warns(RuntimeWarning, match="2 distinct score values in 1 frames"):
        result = metrics.pixel_result()
    # Exact for the rounded scores: the anomaly pixel ties with two in-distribution pixels.
    assert result.metrics["AP"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("protocol", ["exact", "smiyc"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_on_valid_pixels_name_the_frame(protocol, bad):
    score = np.zeros((3, 3), np.float32)
    score[1, 1] = bad
    metrics = AnomalyMetrics(with_components=False, protocol=protocol)
    with pytest.raises(ValueError, match=r"frame 'city/frame_7.png'.*(NaN|infinite)"):
        metrics.update(score, np.zeros((3, 3), np.uint8), frame="city/frame_7.png")
    label = np.zeros((3, 3), np.uint8)
    label[1, 1] = 255  # on void the score is ignored
    metrics.update(score, label, frame="f")
    assert metrics.num_frames == 1


def test_smiyc_rejects_scores_beyond_float16_and_exact_takes_them():
    score = np.array([[7e4, 0.0]], np.float32)
    label = np.array([[1, 0]], np.uint8)
    with pytest.raises(ValueError, match="frame #0.*float16"):
        AnomalyMetrics(with_components=False, protocol="smiyc").update(score, label)
    assert evaluate([(score, label)]).metrics["AP"] == 1.0


def test_merge_into_itself_and_across_protocols_is_refused():
    metrics = AnomalyMetrics()
    with pytest.raises(ValueError, match="into itself"):
        metrics.merge(metrics)
    with pytest.raises(ValueError, match="different settings"):
        metrics.merge(AnomalyMetrics(protocol="smiyc"))
    with pytest.raises(ValueError, match="protocol must be one of"):
        AnomalyMetrics(protocol="official")


def test_merged_spilled_accumulators_equal_one(tmp_path):
    frames = frames_of(TRANSFORMS["[-1e5,0]"], seed=2, n=6)
    parts = [AnomalyMetrics(min_pred_size=3, min_gt_size=2, key_buffer_bytes=4 * 2500, tmp_root=str(tmp_path))
             for _ in range(2)]
    for i, (score, label) in enumerate(frames):
        parts[i % 2].update(score, label)
    assert parts[0].pixels.store.disk_bytes > 0  # some keys went to the file, some stay in RAM
    parts[0].merge(parts[1])
    ref = reference(frames)
    merged = parts[0].compute()
    for key in ("AP", "AUROC", "FPR95", "pixel_F1"):
        assert merged[key] == pytest.approx(ref[key], abs=1e-12), key
    whole = AnomalyMetrics(min_pred_size=3, min_gt_size=2)
    for score, label in frames[0::2] + frames[1::2]:  # the merged accumulator's frame order
        whole.update(score, label)
    assert whole.compute() == pytest.approx(merged, nan_ok=True, rel=1e-12)
    for metrics in parts + [whole]:
        metrics.close()
    assert list(tmp_path.iterdir()) == []  # temporary files removed


def thread_gathers(world: int):
    """all_gather functions for ``world`` threads standing in for processes."""
    slots = [None] * world
    barrier = threading.Barrier(world)

    def make(rank):
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()  # all have read before the next call overwrites
            return out
        return gather
    return [make(rank) for rank in range(world)]


def run_ranks(accumulators, method: str):
    gathers = thread_gathers(len(accumulators))
    results = [None] * len(accumulators)
    errors = []

    def work(rank):
        try:
            results[rank] = getattr(accumulators[rank], method)(gathers[rank])
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(accumulators))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("protocol", ["exact", "smiyc"])
def test_gathered_processes_equal_one_process(protocol):
    frames = frames_of(TRANSFORMS["x+2000"], seed=3, n=5)
    ranks = [AnomalyMetrics(with_components=False, protocol=protocol) for _ in range(3)]  # rank 2 sees nothing
    whole = AnomalyMetrics(with_components=False, protocol=protocol)
    for i, (score, label) in enumerate(frames):
        ranks[i % 2].update(score, label, frame=f"f{i}")
        whole.update(score, label, frame=f"f{i}")
    if protocol == "exact":
        for metrics in ranks + [whole]:
            metrics.pixels.range_pixels = 30  # many ranges and dense bins, as on big data
    results = run_ranks(ranks, "pixel_result")
    single = whole.pixel_result()
    for result in results:
        assert result.metrics == pytest.approx(single.metrics, rel=1e-12)
        assert result.best_f1_threshold == single.best_f1_threshold


def test_fixed_component_threshold_is_used_as_given():
    # 0.6002 is neither a float16 (0.60009765625 nearest) nor a float32 value.
    t = 0.6002
    t32 = float32_at_least(t)
    assert float(t32) >= t and float(np.nextafter(t32, np.float32(0))) < t
    score = np.full((20, 40), 0.1, np.float32)
    label = np.zeros((20, 40), np.uint8)
    label[:, :10] = 1
    score[:, :10] = np.float32(0.60009765625)  # the old float16 delta: below t, not predicted
    score[:, 10:20] = t32  # the smallest float32 >= t: predicted
    score[:, 20:30] = np.nextafter(t32, np.float32(0))  # just below t: not predicted
    metrics = AnomalyMetrics(component_threshold=t, min_pred_size=1, min_gt_size=1)
    metrics.update(score, label)
    results = metrics.compute()
    assert results["component_threshold"] == t
    # One predicted component (columns 10-19) beside the object (columns 0-9), not on it: the
    # object is missed (sIoU 0) and the prediction is a false positive (PPV 0).
    assert results["sIoU"] == 0.0 and results["PPV"] == 0.0 and results["FP_50"] == 1


def test_exact_best_threshold_drives_components():
    # Anomaly scores 0.7000001 (a float32 just above 0.7) and in-distribution 0.7: float16 could
    # not separate them; exactly, delta is the anomaly score and the object is found whole.
    score = np.full((30, 30), np.float32(0.7), np.float32)
    label = np.zeros((30, 30), np.uint8)
    label[10:20, 10:20] = 1
    score[label == 1] = np.nextafter(np.float32(0.7), np.float32(1))
    metrics = AnomalyMetrics(min_pred_size=5, min_gt_size=5)
    metrics.update(score, label)
    results = metrics.compute()
    assert results["AP"] == 1.0
    assert results["component_threshold"] == float(np.nextafter(np.float32(0.7), np.float32(1)))
    assert results["sIoU"] == 1.0 and results["PPV"] == 1.0 and results["mean_F1"] == 1.0
