"""Query specialisation (RbA paper Sec. 3.2, appendix C.1, Fig. 8): which class each object
query predicts with high confidence.

For every image and every query q the decoder's last class prediction p_q = softmax(class
logits_q) is read; count[q, k] is the number of images in which p_q[k] >= threshold (k over the
C known classes, "no object" excluded). The paper counts "how many times [a query] predicts a
certain class with high confidence, e.g. greater than 98%"; the official code ships no such
tool, so this follows the text: a query counts whatever its mask covers (an empty mask included),
and ``>=`` lets a threshold of 1 mean "rounds to 1 in float32". With a threshold above 0.5 a query
counts for at most one class per image. The specialised query of class k is argmax_q count[q, k]
(the lowest index on ties), none when no query ever reaches the threshold for k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.meta_arch.mask_former import MaskFormer
from ..utils.tables import markdown_table
from .query_outputs import QueryRunner

__all__ = [
    "check_threshold",
    "confident_class_counts",
    "specialized_queries",
    "SpecializationResult",
    "run_specialization",
]


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in (0, 1].

    Raises:
        ValueError: naming the value, when it is not a number in (0, 1].
    """
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"confidence threshold must be a number in (0, 1], got {threshold!r}") from None
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"confidence threshold must be in (0, 1], got {threshold!r}")
    return value


def confident_class_counts(class_logits: torch.Tensor, threshold: float) -> np.ndarray:
    """Q x C int64: for each query and known class, in how many of the predictions
    softmax(class_logits)[k] >= ``threshold``.

    Args:
        class_logits: (... x) Q x (C+1) class logits, the last being "no object"; leading
            dimensions (images) are summed over.
        threshold: in (0, 1].
    """
    threshold = check_threshold(threshold)
    probs = F.softmax(class_logits.detach().float(), dim=-1)[..., :-1]
    hits = (probs >= threshold).reshape(-1, *probs.shape[-2:])
    return hits.sum(0).cpu().numpy().astype(np.int64)


def specialized_queries(counts: np.ndarray) -> List[Optional[int]]:
    """Per class k (columns of the Q x C ``counts``): argmax_q counts[q, k], the lowest query on
    ties, None when the column is all zero."""
    counts = np.asarray(counts)
    return [int(np.argmax(column)) if column.max() > 0 else None for column in counts.T]


@dataclass
class SpecializationResult:
    """Confident-prediction counts of a model over a dataset.

    Attributes:
        counts: Q x C int64 (see :func:`confident_class_counts`).
        threshold: the confidence threshold, in (0, 1].
        num_images: images counted.
        class_names: C names.
        datasets: the datasets the images came from.
    """

    counts: np.ndarray
    threshold: float
    num_images: int
    class_names: List[str]
    datasets: List[str]

    @property
    def specialized(self) -> List[Optional[int]]:
        return specialized_queries(self.counts)

    def to_json(self) -> Dict:
        specialized = self.specialized
        return {
            "datasets": list(self.datasets),
            "threshold": self.threshold,
            "num_images": self.num_images,
            "num_queries": int(self.counts.shape[0]),
            "class_names": list(self.class_names),
            "counts": self.counts.tolist(),
            "specialized_query": {name: q for name, q in zip(self.class_names, specialized)},
            "specialized_share": {
                name: (None if q is None else float(self.counts[q, k]) / max(self.num_images, 1))
                for k, (name, q) in enumerate(zip(self.class_names, specialized))
            },
        }

    @classmethod
    def from_json(cls, data: Dict) -> "SpecializationResult":
        """Reads :meth:`to_json`'s dict back (e.g. ``specialization.json`` of an earlier run)."""
        return cls(np.asarray(data["counts"], dtype=np.int64), float(data["threshold"]), int(data["num_images"]),
                   list(data["class_names"]), list(data.get("datasets", [])))

    def to_markdown(self) -> str:
        rows = []
        for k, (name, q) in enumerate(zip(self.class_names, self.specialized)):
            column = self.counts[:, k]
            others = int(np.sum(column > 0)) - (q is not None)
            rows.append([name, "none" if q is None else q, int(column[q]) if q is not None else 0,
                         int(column.sum()), others])
        header = ["class", "specialised query", "its count", "all counts", "other queries counted"]
        return (f"Confident predictions (softmax >= {self.threshold:g}) over {self.num_images} images of "
                f"{', '.join(self.datasets)}\n\n" + markdown_table(header, rows))


@torch.no_grad()
def run_specialization(
    model: MaskFormer,
    batches: Iterable[List[Dict]],
    threshold: float,
    class_names: Sequence[str],
    datasets: Sequence[str] = (),
) -> SpecializationResult:
    """Counts confident class predictions of every query over the test inputs ``batches``.

    Raises:
        ValueError: a threshold outside (0, 1]; no image.
    """
    threshold = check_threshold(threshold)
    counts = None
    num_images = 0
    for batch in batches:
        for batched_input in batch:
            prediction = QueryRunner(model, batched_input).predict()
            image_counts = confident_class_counts(prediction.class_logits, threshold)
            counts = image_counts if counts is None else counts + image_counts
            num_images += 1
    if counts is None:
        raise ValueError(f"no image in {', '.join(datasets) or 'the inputs'}: nothing to count")
    return SpecializationResult(counts, threshold, num_images, list(class_names), list(datasets))
