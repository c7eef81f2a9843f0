"""rba_plugin.analysis and tools/analyze_queries.py: query specialisation, hard / soft query
masking, k-means modes of the class scores and per-query votes, on hand-built outputs and on a
randomly initialised tiny Mask2Former (the synthetic benchmark's R18 config)."""
import copy
import json
import math
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from sklearn.metrics import adjusted_rand_score

from rba_plugin.analysis import (
    MODE_NAMES,
    QueryRunner,
    SpecializationResult,
    class_boundary,
    class_scores,
    confident_class_counts,
    fit_vote_modes,
    mask_probabilities,
    masked_predictions,
    pixel_categories,
    sorted_votes,
    specialized_queries,
)
from rba_plugin.analysis.modes import ANOMALY, BOUNDARY, INLIER, VOID, ModeStatistics
from rba_plugin.config import get_cfg
from rba_plugin.data.anomaly_datasets import load_anomaly_label

from .conftest import REPO_ROOT
from .pixel_e2e_utils import load_tool, random_checkpoint, register_tiny_synthcity

CONFIG = str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl.yaml")
PIXEL_CONFIG = str(REPO_ROOT / "configs/synthcity/pixel/closed_set.yaml")
TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0"]



@pytest.fixture(scope="module")
def model():
    """A randomly initialised R18 Mask2Former (20 queries, one decoder layer), eval mode."""
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def image_input():
    """A test input resized to 64 x 96 whose outputs are asked at 80 x 120 (so they are resized)."""
    rng = np.random.default_rng(3)
    return {"image": torch.as_tensor(rng.integers(0, 256, (3, 64, 96), dtype=np.uint8)), "height": 80, "width": 120}


# ----------------------------------------------------------------------------- specialisation


def _logits(prob_of: dict, num_images=3, num_queries=4, num_classes=3) -> torch.Tensor:
    """N x Q x (C+1) logits: query q of image i puts probability p on column k for {(i, q): (k, p)};
    every other query predicts "no object" (column C) with probability ~1."""
    logits = torch.full((num_images, num_queries, num_classes + 1), -20.0)
    logits[:, :, num_classes] = 20.0
    for (i, q), (k, p) in prob_of.items():
        logits[i, q] = -20.0
        # p on column k, the rest on "no object": logit difference log(p / (1 - p)).
        logits[i, q, k] = math.log(p / (1 - p)) if p < 1 else 20.0
        logits[i, q, num_classes] = 0.0 if p < 1 else -20.0
    return logits


def test_specialisation_counts_equal_the_known_pattern():
    logits = _logits({
        (0, 0): (1, 1.0), (0, 1): (0, 1.0), (0, 3): (2, 0.9),  # 0.9 is below the threshold
        (1, 0): (1, 1.0), (1, 1): (0, 1.0), (1, 2): (2, 1.0),
        (2, 0): (1, 1.0), (2, 1): (1, 0.99), (2, 2): (2, 1.0), (2, 3): (2, 0.985),
    })
    counts = confident_class_counts(logits, 0.98)
    np.testing.assert_array_equal(counts, [[0, 3, 0], [2, 1, 0], [0, 0, 2], [0, 0, 1]])
    assert specialized_queries(counts) == [1, 0, 2]
    # Image by image gives the same sums; a lower threshold also counts the 0.9 prediction.
    assert np.array_equal(sum(confident_class_counts(logits[i], 0.98) for i in range(3)), counts)
    assert confident_class_counts(logits, 0.85)[3, 2] == 2
    # A class no query reaches has no specialised query; ties go to the lowest query.
    assert specialized_queries(np.array([[0, 2], [0, 2]])) == [None, 0]


def test_specialisation_result_round_trips_through_json():
    result = SpecializationResult(np.array([[0, 3], [2, 0]]), 0.98, 3, ["a", "b"], ["d"])
    data = json.loads(json.dumps(result.to_json()))
    assert data["specialized_query"] == {"a": 1, "b": 0} and data["specialized_share"] == {"a": 2 / 3, "b": 1.0}
    back = SpecializationResult.from_json(data)
    assert np.array_equal(back.counts, result.counts) and back.specialized == [1, 0] and back.threshold == 0.98


@pytest.mark.parametrize("threshold", [0, -0.5, 1.01, float("nan"), "high"])
def test_threshold_outside_0_1_is_refused_naming_it(threshold):
    with pytest.raises(ValueError, match=r"threshold must be .*\(0, 1\], got " + repr(threshold).replace("(", r"\(")):
        confident_class_counts(torch.zeros(2, 3), threshold)


def test_threshold_one_counts_probabilities_that_round_to_one():
    logits = torch.tensor([[200.0, -200.0, -200.0], [1.0, 0.0, 0.0]])  # query 0: softmax exactly 1 in float32
    np.testing.assert_array_equal(confident_class_counts(logits, 1.0), [[1, 0], [0, 0]])


# ----------------------------------------------------------------------------- the decoder hook


def _decoder_inputs(model, image_input):
    runner = QueryRunner(model, image_input)
    return runner.multi_scale_features, runner.mask_features


def test_keep_queries_none_and_all_queries_are_bit_identical(model, image_input):
    decoder = model.sem_seg_head.predictor
    features, mask_features = _decoder_inputs(model, image_input)
    with torch.no_grad():
        default = decoder(features, mask_features)
        explicit_none = decoder(features, mask_features, keep_queries=None)
        every = decoder(features, mask_features, keep_queries=torch.arange(decoder.num_queries))
    for other in (explicit_none, every):
        for key in ("pred_logits", "pred_masks"):
            assert torch.equal(default[key], other[key])
        for a, b in zip(default["aux_outputs"], other["aux_outputs"]):
            assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_masks"], b["pred_masks"])


def test_keep_queries_selects_in_order_and_refuses_bad_indices(model, image_input):
    decoder = model.sem_seg_head.predictor
    features, mask_features = _decoder_inputs(model, image_input)
    with torch.no_grad():
        two = decoder(features, mask_features, keep_queries=[5, 2])
        swapped = decoder(features, mask_features, keep_queries=[2, 5])
    assert two["pred_logits"].shape[1] == 2 and two["pred_masks"].shape[1] == 2
    # Self-attention is permutation-equivariant: the same two queries in the other order.
    torch.testing.assert_close(two["pred_logits"].flip(1), swapped["pred_logits"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"query indices \[20, -1\] are outside \[0, 20\)"):
        decoder(features, mask_features, keep_queries=[3, 20, -1])
    with pytest.raises(ValueError, match="non-empty"):
        decoder(features, mask_features, keep_queries=[])
    with pytest.raises(ValueError, match="integer query indices, got dtype torch.bool"):
        decoder(features, mask_features, keep_queries=torch.ones(20, dtype=torch.bool))


def test_all_queries_kept_reproduce_the_models_prediction_exactly(model, image_input):
    with torch.no_grad():  # as every evaluation runs it (inference overwrites a view in place)
        expected = model([image_input])[0]["sem_seg"]
    runner = QueryRunner(model, image_input)
    assert expected.shape == (19, 80, 120)
    assert torch.equal(class_scores(model, runner.predict()), expected)
    assert torch.equal(class_scores(model, runner.predict(list(range(20)))), expected)


@pytest.mark.parametrize("postprocess_before", [True, False])
def test_per_query_votes_sum_to_the_class_scores(model, image_input, postprocess_before):
    model = copy.copy(model)  # a shallow copy: the flag is a plain attribute
    model.sem_seg_postprocess_before_inference = postprocess_before
    prediction = QueryRunner(model, image_input).predict()
    votes = torch.einsum("qc,qhw->chw", F.softmax(prediction.class_logits, -1)[:, :-1],
                         mask_probabilities(model, prediction))
    torch.testing.assert_close(votes, class_scores(model, prediction), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- hard / soft masking

SPECIALIZED = [3, 7, None, 3] + [11] * 15  # 19 classes; query 0 is never kept


def _expected_single_query(model, prediction, row, k):
    return F.softmax(prediction.class_logits[row], -1)[k] * mask_probabilities(model, prediction, [row])[0]


def test_masked_scores_keep_only_each_class_query(model, image_input):
    runner = QueryRunner(model, image_input)
    scores = masked_predictions(runner, SPECIALIZED)
    full = runner.predict()
    assert torch.equal(scores["unmasked"], class_scores(model, full))
    for k, q in enumerate(SPECIALIZED[:4]):
        if q is None:
            assert torch.isneginf(scores["soft"][k]).all() and torch.isneginf(scores["hard"][k]).all()
            continue
        torch.testing.assert_close(scores["soft"][k], _expected_single_query(model, full, q, k), atol=1e-6, rtol=0)
        alone = runner.predict([q])
        torch.testing.assert_close(scores["hard"][k], _expected_single_query(model, alone, 0, k), atol=1e-6, rtol=0)


def test_soft_masking_keeps_query_interactions_hard_masking_does_not(model, image_input):
    before = masked_predictions(QueryRunner(model, image_input), SPECIALIZED)
    changed = copy.deepcopy(model)
    with torch.no_grad():  # query 0 is no class's specialised query
        changed.sem_seg_head.predictor.query_feat.weight[0] += 3.0
        changed.sem_seg_head.predictor.query_embed.weight[0] -= 3.0
    after = masked_predictions(QueryRunner(changed, image_input), SPECIALIZED)
    assert torch.equal(before["hard"], after["hard"])  # the kept queries never see query 0
    finite = torch.isfinite(before["soft"])
    assert (before["soft"][finite] - after["soft"][finite]).abs().max() > 1e-3  # they do through self-attention
    assert not torch.equal(before["unmasked"], after["unmasked"])


# ----------------------------------------------------------------------------- logit modes


def _vote_groups(per_group=150, num_classes=19, seed=0):
    """Unsorted L vectors of the four modes, each pixel's classes in random order, and the truth."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for group in range(4):
        for _ in range(per_group):
            votes = rng.uniform(0.0, 0.03, num_classes)
            if group == 1:
                votes[0] = rng.uniform(0.9, 1.0)
            elif group == 2:
                votes[:2] = rng.uniform(0.42, 0.55, 2)
            elif group == 3:
                votes[: rng.integers(4, 7)] = rng.uniform(0.15, 0.28)
            rows.append(votes[rng.permutation(num_classes)])
            truth.append(group)
    return np.array(rows, np.float32), np.array(truth)


def _brute_force_groups(sorted_rows: np.ndarray) -> np.ndarray:
    """The four modes by rule: how many classes get a vote above 0.1."""
    voted = (sorted_rows > 0.1).sum(1)
    return np.select([voted == 0, voted == 1, voted == 2], [0, 1, 2], default=3)


def test_kmeans_on_sorted_votes_recovers_the_four_modes():
    unsorted, truth = _vote_groups()
    # sorted_votes reads C x H x W maps: the pixels as one row.
    votes = sorted_votes(torch.as_tensor(unsorted.T[:, None, :]))
    assert votes.shape == unsorted.shape and (np.diff(votes, axis=1) <= 0).all()
    modes = fit_vote_modes(votes, n_clusters=4, seed=0)
    clusters = modes.predict(votes)
    brute = _brute_force_groups(votes)
    assert adjusted_rand_score(truth, brute) == 1.0
    assert adjusted_rand_score(brute, clusters) == 1.0
    # Each group's cluster carries its mode's name (MODE_NAMES is in group order).
    assert [modes.names[clusters[truth == g][0]] for g in range(4)] == list(MODE_NAMES)
    # Clusters are numbered by their centre's largest vote: no votes, weak, moderate, strong.
    assert [modes.names[c] for c in range(4)] == [
        "no votes", "several weak votes", "two moderate votes", "one strong vote"]
    # Unsorted, k-means groups by class instead (why the vectors are sorted).
    unsorted_clusters = fit_vote_modes(unsorted, n_clusters=4, seed=0).predict(unsorted)
    assert adjusted_rand_score(truth, unsorted_clusters) < 0.5


def test_kmeans_refuses_too_few_pixels_and_bad_cluster_counts():
    with pytest.raises(ValueError, match="needs at least 4 sampled pixels, got 3"):
        fit_vote_modes(np.zeros((3, 5)), n_clusters=4)
    with pytest.raises(ValueError, match=r"number of clusters must be in \[1, 20\], got 0"):
        fit_vote_modes(np.zeros((3, 5)), n_clusters=0)


def test_class_boundary_matches_a_brute_force_window_search():
    rng = np.random.default_rng(5)
    label = rng.choice([0, 1, 2, 255], size=(12, 15), p=[0.5, 0.25, 0.15, 0.1]).astype(np.uint8)
    label[:, -3:] = 255  # a void band beside one class only: void must not make a boundary
    label[:, -5:-3] = 1
    for width in (0, 1, 2):
        expected = np.zeros(label.shape, bool)
        for y in range(12):
            for x in range(15):
                window = label[max(0, y - width): y + width + 1, max(0, x - width): x + width + 1]
                others = set(window[window != 255].tolist()) - {int(label[y, x])}
                expected[y, x] = label[y, x] != 255 and bool(others)
        np.testing.assert_array_equal(class_boundary(label, width), expected, err_msg=f"width {width}")


def test_pixel_categories_follow_the_anomaly_and_semantic_labels():
    semantic = np.array([[0, 0, 0, 1, 1, 1]] * 3, np.uint8)
    semantic[:, 5] = 255
    anomaly = np.zeros((3, 6), np.uint8)
    anomaly[0, 0], anomaly[2, 5], anomaly[1, 3] = 1, 255, 1
    categories = pixel_categories(anomaly, semantic, boundary_width=1)
    expected = np.array([
        [ANOMALY, INLIER, BOUNDARY, BOUNDARY, INLIER, INLIER],
        [INLIER, INLIER, BOUNDARY, ANOMALY, INLIER, INLIER],
        [INLIER, INLIER, BOUNDARY, BOUNDARY, INLIER, VOID],
    ])
    np.testing.assert_array_equal(categories, expected)
    # Without an anomaly label the semantic void is void and there are no anomalies.
    without = pixel_categories(None, semantic, boundary_width=1)
    assert (without[:, 5] == VOID).all() and not (without == ANOMALY).any()


def test_mode_statistics_pool_counts_and_score_means():
    stats = ModeStatistics.empty(2, ["s"])
    clusters = np.array([0, 0, 1, 1, 1])
    categories = np.array([INLIER, ANOMALY, ANOMALY, VOID, BOUNDARY], np.int8)
    stats.update(clusters, categories, {"s": np.array([1.0, 3.0, 5.0, 100.0, 7.0])})
    np.testing.assert_array_equal(stats.counts, [[1, 1, 0, 0], [0, 1, 1, 0]])
    np.testing.assert_allclose(stats.mean_scores()["s"], [2.0, 6.0])  # the void pixel is left out
    np.testing.assert_allclose(stats.mean_scores(axis_cluster=False)["s"][:3], [1.0, 4.0, 7.0])


# ----------------------------------------------------------------------------- the tool, end to end


@pytest.fixture(scope="module")
def synthcity(tmp_path_factory):
    return register_tiny_synthcity(tmp_path_factory.mktemp("synthcity"), f"analysis_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("model"), CONFIG)


def _run(analysis, *args, weights):
    return load_tool("analyze_queries").main([analysis, "--config-file", CONFIG, *args, "MODEL.WEIGHTS", weights, *TEST_SIZE])


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_tool_writes_every_analysis(synthcity, weights, tmp_path):
    out = str(tmp_path)
    # A random model is not confident: a threshold of 0.06 (1 / 20 queries ~ 0.05) finds queries.
    spec = _run("specialization", "--dataset", f"{synthcity}_val", f"{synthcity}_anomaly", "--output", out,
                "--threshold", "0.06", weights=weights)
    data = _read(spec["json"])
    assert data["num_images"] == 5 and np.array(data["counts"]).shape == (20, 19)
    assert data["datasets"] == [f"{synthcity}_val", f"{synthcity}_anomaly"]

    masking = _run("masking", "--dataset", f"{synthcity}_val", "--specialization", spec["json"], "--output", out,
                   weights=weights)
    data = _read(masking["json"])
    assert set(data["per_class_iou"]) == {"unmasked", "soft", "hard"} and len(data["per_class_iou"]["hard"]) == 19
    confusion = np.array(data["confusion"]["unmasked"])
    assert confusion.sum() == np.array(data["confusion"]["hard"]).sum() > 0  # same labelled pixels
    assert "| **mIoU** |" in open(masking["markdown"]).read()

    modes = _run("modes", "--dataset", f"{synthcity}_anomaly", "--output", out, "--samples-per-image", "300",
                 "--max-images", "2", "--map-images", "1", "--scores", "rba", "msp", "maxlogit", "energy",
                 weights=weights)
    data = _read(modes["json"])
    assert len(data["clusters"]) == 4 and data["num_samples"] == 600 and data["num_images"] == 2
    assert set(data["categories"]) == {"inlier", "anomaly", "boundary"}
    # Every non-void pixel of every frame is in exactly one cluster.
    labels = [load_anomaly_label(r) for r in DatasetCatalog.get(f"{synthcity}_anomaly")[:2]]
    assert sum(c["pixels"] for c in data["clusters"]) == sum(int((lab != 255).sum()) for lab in labels)
    assert data["categories"]["anomaly"]["pixels"] == sum(int((lab == 1).sum()) for lab in labels)
    assert set(data["clusters"][0]["mean_scores"]) == {"rba", "msp", "maxlogit", "energy"}
    assert [k for k in modes if k.startswith("map_")] == ["map_0"]

    votes = _run("votes", "--dataset", f"{synthcity}_anomaly", "--output", out, "--image", "1",
                 "--pixels", "0,0", "127,255", "64,100", weights=weights)
    data = _read(votes["json"])
    assert [(p["y"], p["x"]) for p in data["pixels"]] == [(0, 0), (127, 255), (64, 100)]
    for pixel in data["pixels"]:
        summed = np.array(pixel["votes"]).sum(0)
        np.testing.assert_allclose(summed, list(pixel["class_scores"].values()), atol=1e-5)

    for paths in (spec, masking, modes, votes):
        for path in paths.values():
            assert (tmp_path / path.split("/")[-1]).stat().st_size > 0
            if path.endswith(".png"):
                assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_tool_refuses_bad_inputs_naming_them(synthcity, weights, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"unknown dataset 'synthcity_nope'"):
        _run("specialization", "--dataset", "synthcity_nope", "--output", out, weights=weights)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got '1.5'"):
        _run("specialization", "--dataset", f"{synthcity}_val", "--output", out, "--threshold", "1.5", weights=weights)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got '0'"):
        _run("masking", "--dataset", f"{synthcity}_val", "--output", out, "--threshold", "0", weights=weights)
    outside = r"pixel \(y=128, x=3\) is outside .*synth_anomaly_00000.png \(128 rows x 256 columns"
    with pytest.raises(ValueError, match=outside):
        _run("votes", "--dataset", f"{synthcity}_anomaly", "--output", out, "--image", "0", "--pixels", "5,5", "128,3",
             weights=weights)
    with pytest.raises(ValueError, match=r"pixel '5;5': expected 'y,x'"):
        _run("votes", "--dataset", f"{synthcity}_anomaly", "--output", out, "--image", "0", "--pixels", "5;5",
             weights=weights)
    with pytest.raises(ValueError, match=r"--max-images does not apply to votes"):
        _run("votes", "--dataset", f"{synthcity}_anomaly", "--output", out, "--image", "1", "--pixels", "1,1",
             "--max-images", "1", weights=weights)
    with pytest.raises(ValueError, match=r"image index 7 is outside the dataset's 3 images"):
        _run("votes", "--dataset", f"{synthcity}_anomaly", "--output", out, "--image", "7", "--pixels", "1,1",
             weights=weights)
    with pytest.raises(ValueError, match=r"--max-images does not apply to votes"):
        _run("votes", "--dataset", f"{synthcity}_anomaly", "--output", out, "--image", "1", "--pixels", "1,1",
             "--max-images", "1", weights=weights)
    with pytest.raises(ValueError, match=r"number of clusters must be in \[1, 20\], got 0"):
        _run("modes", "--dataset", f"{synthcity}_anomaly", "--output", out, "--clusters", "0", weights=weights)
    with pytest.raises(ValueError, match=r"MODEL.META_ARCHITECTURE 'PixelOODSegmentor': .* has no object queries"):
        load_tool("analyze_queries").main(["specialization", "--config-file", PIXEL_CONFIG, "--dataset", f"{synthcity}_val",
                      "--output", out, "MODEL.WEIGHTS", weights])
    assert not (tmp_path / "out").exists()  # every refusal came before anything was written
