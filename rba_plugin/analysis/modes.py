"""Modes of Mask2Former's class scores (RbA paper Sec. 3.5, Fig. 4): k-means over the per-pixel
vote vectors, and which pixels (anomaly, inlier, class boundary) and which anomaly scores each
mode holds.

The vector clustered at a pixel is L = (L_1, ..., L_C), L_k = sum_q softmax(class_q)[k] *
sigmoid(mask_q), **sorted in descending order**. The paper clusters "the logits over classes at
each pixel" and reads the clusters as vote patterns (no votes, one strong vote, two moderate
votes, several weak votes); sorting makes the clustering see exactly that: two road pixels and a
road and a car pixel with the same votes land in the same place, so with k = 4 the clusters
describe how many queries vote and how strongly, not which class wins (unsorted, k-means spends
its clusters on the frequent classes).

k-means is scikit-learn's ``KMeans`` (k-means++, ``n_init`` restarts, ``random_state`` = the
seed) fitted on a random sample of pixels (``samples_per_image`` per image, uniform over the
non-void pixels, NumPy's ``default_rng(seed)``), then applied to every pixel. Clusters are
renumbered by their centre's largest vote, ascending, and each gets the name of its nearest
idealised pattern (:func:`mode_patterns`; two clusters may share a name, and a pattern no cluster
is near is absent from the model): a reading aid, not a result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from sklearn.cluster import KMeans

from ..modeling.meta_arch.mask_former import MaskFormer
from ..modeling.ood import NAMED_SCORES, PRIMARY_SCORE
from ..utils.tables import markdown_table
from .data import labels_of

__all__ = [
    "MODE_NAMES",
    "CATEGORY_NAMES",
    "VOID",
    "mode_patterns",
    "sorted_votes",
    "VoteModes",
    "fit_vote_modes",
    "class_boundary",
    "pixel_categories",
    "check_mode_settings",
    "ModeStatistics",
    "LogitModesResult",
    "run_logit_modes",
]

MODE_NAMES = ("no votes", "one strong vote", "two moderate votes", "several weak votes")
# Pixel categories (disjoint): inlier away from class boundaries, anomaly, inlier within the
# boundary width of another ground-truth class, and pixels of a dataset without labels.
CATEGORY_NAMES = ("inlier", "anomaly", "boundary", "unlabelled")
INLIER, ANOMALY, BOUNDARY, UNLABELLED = range(4)
VOID = -1
MAX_CLUSTERS = 20


def mode_patterns(num_classes: int) -> np.ndarray:
    """4 x C idealised sorted vote vectors, rows in the order of :data:`MODE_NAMES` (a full vote =
    1: one query with sigmoid(mask) = softmax(class)[k] = 1): zeros; (1, 0, ...); (0.5, 0.5, 0, ...);
    (0.25, 0.25, 0.25, 0.25, 0, ...) (fewer entries when C < 4)."""
    patterns = np.zeros((len(MODE_NAMES), num_classes), np.float64)
    patterns[1, :1] = 1.0
    patterns[2, :2] = 0.5
    patterns[3, :4] = 0.25
    return patterns


def sorted_votes(class_scores) -> np.ndarray:
    """C x H x W class scores -> (H * W) x C float32, each pixel's scores in descending order
    (pixels in row-major order)."""
    scores = torch.as_tensor(class_scores).detach().float()
    if scores.dim() != 3:
        raise ValueError(f"sorted_votes: expected C x H x W class scores, got shape {tuple(scores.shape)}")
    ordered = torch.sort(scores, dim=0, descending=True).values
    return ordered.reshape(scores.shape[0], -1).T.contiguous().cpu().numpy()


@dataclass
class VoteModes:
    """A fitted k-means over sorted vote vectors, clusters renumbered (see the module docstring).

    Attributes:
        kmeans: the fitted ``sklearn.cluster.KMeans``.
        order: k, ``order[c]`` = the k-means label of cluster c.
        names: k nearest-pattern names.
    """

    kmeans: KMeans
    order: np.ndarray
    names: List[str]
    _rank: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self._rank = np.empty_like(self.order)
        self._rank[self.order] = np.arange(len(self.order))

    @property
    def centers(self) -> np.ndarray:
        """k x C cluster centres (sorted vote vectors), in cluster order."""
        return self.kmeans.cluster_centers_[self.order]

    @property
    def num_clusters(self) -> int:
        return len(self.order)

    def predict(self, votes: np.ndarray) -> np.ndarray:
        """N x C sorted votes -> N cluster indices (int64)."""
        return self._rank[self.kmeans.predict(np.asarray(votes, dtype=self.kmeans.cluster_centers_.dtype))]


def _nearest_pattern_names(centers: np.ndarray) -> List[str]:
    # Each cluster independently: forcing the four names onto four clusters labelled a cluster
    # "no votes" on a model where no such mode exists (every pixel got one vote near 1).
    patterns = mode_patterns(centers.shape[1])
    distance = np.linalg.norm(centers[:, None, :] - patterns[None, :, :], axis=-1)  # k x 4
    return [MODE_NAMES[i] for i in distance.argmin(1)]


def fit_vote_modes(votes: np.ndarray, n_clusters: int = 4, seed: int = 0, n_init: int = 10) -> VoteModes:
    """k-means with ``n_clusters`` clusters over N x C sorted votes (:func:`sorted_votes`).

    Raises:
        ValueError: ``n_clusters`` outside [1, 20] or above the number of distinct samples (named).
    """
    votes = np.asarray(votes, dtype=np.float32)
    if not 1 <= n_clusters <= MAX_CLUSTERS:
        raise ValueError(f"number of clusters must be in [1, {MAX_CLUSTERS}], got {n_clusters}")
    if votes.ndim != 2 or len(votes) < n_clusters:
        raise ValueError(
            f"k-means with {n_clusters} clusters needs at least {n_clusters} sampled pixels, got {len(votes)}"
        )
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(votes)
    order = np.lexsort((kmeans.cluster_centers_.sum(1), kmeans.cluster_centers_[:, 0]))
    return VoteModes(kmeans, order, _nearest_pattern_names(kmeans.cluster_centers_[order].astype(np.float64)))


def class_boundary(semantic: np.ndarray, width: int, ignore_label: int = 255) -> np.ndarray:
    """H x W bool: non-void pixels with a pixel of another non-void class within Chebyshev
    distance ``width`` (a (2 width + 1) square window); void pixels neither count nor are marked."""
    if width < 0:
        raise ValueError(f"boundary width must be >= 0 pixels, got {width}")
    labels = np.asarray(semantic).astype(np.int32)  # 8- or 16-bit train ids
    valid = labels != ignore_label
    if width == 0:
        return np.zeros(labels.shape, bool)
    size = 2 * width + 1
    # Void must win neither the maximum nor the minimum of a window: -1 and one above the largest
    # label (not the dtype's maximum, which scipy's minimum_filter turns into its minimum).
    high = ndimage.maximum_filter(np.where(valid, labels, -1), size=size, mode="nearest")
    low = ndimage.minimum_filter(np.where(valid, labels, int(labels.max(initial=0)) + 1), size=size, mode="nearest")
    return valid & (high != low)


def pixel_categories(
    anomaly: Optional[np.ndarray], semantic: Optional[np.ndarray], boundary_width: int, ignore_label: int = 255
) -> np.ndarray:
    """H x W int8 category of each pixel (:data:`CATEGORY_NAMES` index, :data:`VOID` = -1).

    With an anomaly label (0 inlier, 1 anomaly, 255 void): its void and anomaly pixels; its inlier
    pixels are "boundary" where :func:`class_boundary` of the semantic label marks them (when the
    record has one), else "inlier". Without an anomaly label: the semantic label's void pixels are
    void, the others inlier or boundary. Without either: every pixel "unlabelled".
    """
    if anomaly is None and semantic is None:
        raise ValueError("pixel_categories needs an anomaly or a semantic label")
    reference = anomaly if anomaly is not None else semantic
    categories = np.full(reference.shape, INLIER, np.int8)
    if anomaly is not None:
        categories[anomaly == 1] = ANOMALY
        categories[anomaly == 255] = VOID
        inlier = anomaly == 0
    else:
        inlier = semantic != ignore_label
        categories[~inlier] = VOID
    if semantic is not None:
        if semantic.shape != reference.shape:
            raise ValueError(f"semantic label {semantic.shape} and anomaly label {reference.shape} differ in size")
        categories[inlier & class_boundary(semantic, boundary_width, ignore_label)] = BOUNDARY
    return categories


@dataclass
class ModeStatistics:
    """Pixel counts and anomaly-score sums per (cluster, category), pooled over a dataset.

    Attributes:
        counts: k x 4 int64 (categories in :data:`CATEGORY_NAMES` order).
        score_sums: {score name: k x 4 float64 sums}.
    """

    counts: np.ndarray
    score_sums: Dict[str, np.ndarray]

    @classmethod
    def empty(cls, num_clusters: int, score_names: Sequence[str]) -> "ModeStatistics":
        shape = (num_clusters, len(CATEGORY_NAMES))
        return cls(np.zeros(shape, np.int64), {n: np.zeros(shape, np.float64) for n in score_names})

    def update(self, clusters: np.ndarray, categories: np.ndarray, scores: Dict[str, np.ndarray]) -> None:
        """Adds the pixels whose category is not void (flat arrays of one length)."""
        keep = categories >= 0
        index = clusters[keep].astype(np.int64) * len(CATEGORY_NAMES) + categories[keep]
        size = self.counts.size
        self.counts += np.bincount(index, minlength=size).reshape(self.counts.shape)
        for name, score in scores.items():
            weights = np.asarray(score, np.float64)[keep]
            self.score_sums[name] += np.bincount(index, weights=weights, minlength=size).reshape(self.counts.shape)

    def mean_scores(self, axis_cluster: bool = True) -> Dict[str, np.ndarray]:
        """{score: per-cluster (k) means over every category} or per-category (4) means."""
        axis = 1 if axis_cluster else 0
        pixels = self.counts.sum(axis).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {n: np.where(pixels > 0, s.sum(axis) / pixels, np.nan) for n, s in self.score_sums.items()}


def _shares(counts: np.ndarray, axis: int) -> np.ndarray:
    total = counts.sum(axis, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / total, np.nan)


@dataclass
class LogitModesResult:
    """Fitted modes, their statistics over a dataset and the histograms of the sampled pixels.

    Attributes:
        modes: the fitted :class:`VoteModes`.
        stats: :class:`ModeStatistics` over every non-void pixel of the dataset.
        bin_edges: B + 1 edges of the vote histograms.
        largest / second_largest: k x B counts of the sampled pixels' largest / second-largest vote.
        num_samples: sampled pixels k-means was fitted on.
        dataset, num_images, settings: what was analysed and how (for the report).
    """

    modes: VoteModes
    stats: ModeStatistics
    bin_edges: np.ndarray
    largest: np.ndarray
    second_largest: np.ndarray
    num_samples: int
    dataset: str
    num_images: int
    settings: Dict[str, object]

    @property
    def present_categories(self) -> List[int]:
        return [c for c in range(len(CATEGORY_NAMES)) if self.stats.counts[:, c].sum() > 0]

    def to_json(self) -> Dict:
        composition = _shares(self.stats.counts, axis=1)
        distribution = _shares(self.stats.counts, axis=0)
        per_cluster = self.stats.mean_scores(axis_cluster=True)
        per_category = self.stats.mean_scores(axis_cluster=False)
        present = self.present_categories

        def clean(value: float):
            return None if np.isnan(value) else float(value)

        clusters = []
        for c in range(self.modes.num_clusters):
            centre = self.modes.centers[c]
            clusters.append({
                "cluster": c,
                "nearest_pattern": self.modes.names[c],
                "center": [float(v) for v in centre],
                "center_sum": float(centre.sum()),
                "pixels": int(self.stats.counts[c].sum()),
                "composition": {CATEGORY_NAMES[k]: clean(composition[c, k]) for k in present},
                "mean_scores": {n: clean(m[c]) for n, m in per_cluster.items()},
            })
        categories = {
            CATEGORY_NAMES[k]: {
                "pixels": int(self.stats.counts[:, k].sum()),
                "share_per_cluster": [clean(v) for v in distribution[:, k]],
                "mean_scores": {n: clean(m[k]) for n, m in per_category.items()},
            }
            for k in present
        }
        return {
            "dataset": self.dataset,
            "num_images": self.num_images,
            "num_samples": self.num_samples,
            "settings": dict(self.settings),
            "vector": "per-pixel class scores L sorted in descending order",
            "clusters": clusters,
            "categories": categories,
            "histograms": {
                "bin_edges": self.bin_edges.tolist(),
                "largest": self.largest.tolist(),
                "second_largest": self.second_largest.tolist(),
            },
        }

    def to_markdown(self) -> str:
        composition = _shares(self.stats.counts, axis=1) * 100
        distribution = _shares(self.stats.counts, axis=0) * 100
        per_cluster = self.stats.mean_scores(axis_cluster=True)
        per_category = self.stats.mean_scores(axis_cluster=False)
        present = self.present_categories
        names = list(per_cluster)
        header = ["cluster", "nearest pattern", "top-3 centre votes", "pixels",
                  *(f"% {CATEGORY_NAMES[k]}" for k in present), *(f"mean {n}" for n in names)]
        rows = []
        for c in range(self.modes.num_clusters):
            top = ", ".join(f"{v:.2f}" for v in self.modes.centers[c][:3])
            rows.append([c, self.modes.names[c], top, int(self.stats.counts[c].sum()),
                         *(composition[c, k] for k in present), *(per_cluster[n][c] for n in names)])
        for k in present:
            rows.append([f"all {CATEGORY_NAMES[k]} pixels", "", "", int(self.stats.counts[:, k].sum()),
                         *("" for _ in present), *(per_category[n][k] for n in names)])
        split_header = ["category",
                        *(f"% in cluster {c} ({self.modes.names[c]})" for c in range(self.modes.num_clusters))]
        split_rows = [[CATEGORY_NAMES[k], *distribution[:, k]] for k in present]
        return (
            f"Modes of the sorted class scores on {self.dataset} ({self.num_images} images; k-means, k = "
            f"{self.settings['clusters']}, seed {self.settings['seed']}, on {self.num_samples} sampled pixels, "
            f"{self.settings['samples_per_image']} per image; boundary: within {self.settings['boundary_width']} px "
            "of another class)\n\n"
            "Each cluster: its pixels by category and the mean of each anomaly score (higher = more anomalous). "
            "A score confuses a mode with anomalies where the mode's mean comes close to the anomaly pixels' mean.\n\n"
            + markdown_table(header, rows, digits=3)
            + "\n\nWhere each category's pixels go:\n\n"
            + markdown_table(split_header, split_rows)
        )


def _output_scores(model: MaskFormer, output: Dict) -> Dict[str, torch.Tensor]:
    """{score name: H x W} of a model output: ``"ood_scores"`` with several configured scores,
    else the one ``"ood_score"`` under its name (:class:`rba_plugin.modeling.ood.AnomalyScorer`)."""
    if NAMED_SCORES in output:
        return dict(output[NAMED_SCORES])
    return {model.scorer.names[0]: output[PRIMARY_SCORE]}


def _vote_histograms(votes: np.ndarray, clusters: np.ndarray, num_clusters: int, bins: int = 40):
    top = float(votes[:, 0].max()) if len(votes) else 1.0
    edges = np.linspace(0.0, max(1.0, top), bins + 1)
    second = votes[:, 1] if votes.shape[1] > 1 else np.zeros(len(votes), votes.dtype)
    largest = np.stack([np.histogram(votes[clusters == c, 0], edges)[0] for c in range(num_clusters)])
    second_largest = np.stack([np.histogram(second[clusters == c], edges)[0] for c in range(num_clusters)])
    return edges, largest, second_largest


def check_mode_settings(n_clusters: int, samples_per_image: int, boundary_width: int) -> None:
    """Raises ValueError naming the value: clusters outside [1, 20], samples per image < 1,
    boundary width < 0."""
    if not 1 <= n_clusters <= MAX_CLUSTERS:
        raise ValueError(f"number of clusters must be in [1, {MAX_CLUSTERS}], got {n_clusters}")
    if samples_per_image < 1:
        raise ValueError(f"samples per image must be >= 1, got {samples_per_image}")
    if boundary_width < 0:
        raise ValueError(f"boundary width must be >= 0 pixels, got {boundary_width}")


@torch.no_grad()
def run_logit_modes(
    model: MaskFormer,
    make_batches: Callable[[], Iterable[List[Dict]]],
    *,
    n_clusters: int = 4,
    seed: int = 0,
    samples_per_image: int = 2000,
    boundary_width: int = 3,
    ignore_label: int = 255,
    map_images: int = 4,
    dataset: str = "",
) -> Tuple[LogitModesResult, List[Tuple[Dict, np.ndarray]]]:
    """Fits the modes on sampled pixels (first pass over ``make_batches()``), then assigns every
    pixel and accumulates the statistics and the mean of every score the model outputs (second
    pass; choose them with :func:`rba_plugin.analysis.model.set_model_scores`).

    Returns:
        (the result, [(input dict, H x W uint8 cluster map)] for the first ``map_images`` images).

    Raises:
        ValueError: settings out of range; too few sampled pixels; no image.
    """
    check_mode_settings(n_clusters, samples_per_image, boundary_width)
    rng = np.random.default_rng(seed)

    def categories_of(batched_input: Dict, shape: Tuple[int, int]) -> np.ndarray:
        anomaly, semantic = labels_of(batched_input)
        if anomaly is None and semantic is None:
            return np.full(shape, UNLABELLED, np.int8)
        return pixel_categories(anomaly, semantic, boundary_width, ignore_label)

    samples = []
    num_images = 0
    for batch in make_batches():
        for batched_input in batch:
            output = model([batched_input])[0]
            votes = sorted_votes(output["sem_seg"])
            valid = np.flatnonzero(categories_of(batched_input, output["sem_seg"].shape[-2:]).reshape(-1) >= 0)
            chosen = rng.choice(valid, size=min(samples_per_image, len(valid)), replace=False)
            samples.append(votes[np.sort(chosen)])
            num_images += 1
    if num_images == 0:
        raise ValueError(f"no image in dataset '{dataset}'")
    sample = np.concatenate(samples)
    modes = fit_vote_modes(sample, n_clusters, seed)
    edges, largest, second_largest = _vote_histograms(sample, modes.predict(sample), n_clusters)

    stats = None
    maps = []
    for batch in make_batches():
        for batched_input in batch:
            output = model([batched_input])[0]
            height, width = output["sem_seg"].shape[-2:]
            clusters = modes.predict(sorted_votes(output["sem_seg"]))
            scores = {n: s.detach().float().cpu().numpy().reshape(-1) for n, s in _output_scores(model, output).items()}
            if stats is None:
                stats = ModeStatistics.empty(n_clusters, list(scores))
            stats.update(clusters, categories_of(batched_input, (height, width)).reshape(-1), scores)
            if len(maps) < map_images:
                maps.append((batched_input, clusters.reshape(height, width).astype(np.uint8)))
    settings = {"clusters": n_clusters, "seed": seed, "samples_per_image": samples_per_image,
                "boundary_width": boundary_width}
    result = LogitModesResult(modes, stats, edges, largest, second_largest, len(sample), dataset, num_images, settings)
    return result, maps
