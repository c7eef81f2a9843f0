"""Hard and soft query masking (RbA paper Sec. 3.2, Fig. 3; appendix C.1, Fig. 9): how well each
class's specialised query segments its class without the other queries.

The official RbA code has no masking tool, so this follows the paper's description: "to
evaluate the predictions of class k, we mask out all but its specialized query", either before
the transformer decoder (*hard*: the query runs through the decoder alone, so it interacts only
with the image features) or after it (*soft*: the full decoder runs, queries interact through
self-attention, and only the specialised query's class and mask outputs are used).

Per-class IoU with one query per class (our definition; the paper does not spell it out). With
q_k the specialised query of class k (:mod:`.specialization`), p_q = softmax(class logits_q) and
m_q = sigmoid(mask logits_q) at the output resolution, class k's score map keeps only q_k's term
of Mask2Former's L_k = sum_q p_q[k] m_q:

    S_k = p_{q_k}[k] * m_{q_k}      (soft: p, m from the full decoder run; hard: from the run
                                      with q_k alone, one run per distinct specialised query)

and S_k = -inf for a class without a specialised query (never predicted). The prediction is
argmax_k S_k, as the unmasked model's prediction is argmax_k L_k, so the C single-query score
maps compete per pixel exactly as the C class scores do. Per-class IoU = TP / (TP + FP + FN)
from the confusion matrix pooled over the dataset (void pixels excluded), and mIoU as
Detectron2's ``SemSegEvaluator`` (the mean over classes present in the ground truth or the
prediction): the unmasked row is the model's own evaluated mIoU, and the hard-masking mIoU is the
paper's "HM mIoU" (appendix B, Fig. 7b).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.sem_seg_metrics import confusion_matrix, mean_iou, per_class_iou
from ..modeling.meta_arch.mask_former import MaskFormer
from ..utils.tables import markdown_table
from .data import labels_of
from .query_outputs import QueryPrediction, QueryRunner, class_scores, mask_probabilities

__all__ = ["MASKING_VARIANTS", "specialized_class_scores", "masked_predictions", "MaskingResult", "run_query_masking"]

# "unmasked": the model as it is; "soft": masked after the decoder; "hard": before it.
MASKING_VARIANTS = ("unmasked", "soft", "hard")


def specialized_class_scores(
    class_logits: torch.Tensor, mask_probs: torch.Tensor, row_of_class: Sequence[Optional[int]]
) -> torch.Tensor:
    """S_k = softmax(class_logits[r_k])[k] * mask_probs[r_k] for every class k, -inf where r_k is None.

    Args:
        class_logits: R x (C+1) class logits of the kept queries.
        mask_probs: R x H x W sigmoid(mask) of the same rows.
        row_of_class: C row indices r_k into the two (None: class k has no query).

    Returns:
        C x H x W.
    """
    probs = F.softmax(class_logits, dim=-1)[:, :-1]
    if len(row_of_class) != probs.shape[1]:
        raise ValueError(f"row_of_class has {len(row_of_class)} entries for {probs.shape[1]} classes")
    scores = mask_probs.new_full((len(row_of_class), *mask_probs.shape[-2:]), -math.inf)
    for k, row in enumerate(row_of_class):
        if row is not None:
            scores[k] = probs[row, k] * mask_probs[row]
    return scores


def _single_query_scores(
    model: MaskFormer, prediction: QueryPrediction, specialized: Sequence[Optional[int]]
) -> torch.Tensor:
    """S (C x H x W) from a prediction whose rows include every specialised query."""
    row_of_query = {int(q): r for r, q in enumerate(prediction.queries.tolist())}
    rows = sorted({row_of_query[q] for q in specialized if q is not None})
    position = {row: i for i, row in enumerate(rows)}
    row_of_class = [None if q is None else position[row_of_query[q]] for q in specialized]
    probs = mask_probabilities(model, prediction, rows)
    return specialized_class_scores(prediction.class_logits[rows], probs, row_of_class)


@torch.no_grad()
def masked_predictions(runner: QueryRunner, specialized: Sequence[Optional[int]]) -> Dict[str, torch.Tensor]:
    """{"unmasked": L, "soft": S_soft, "hard": S_hard}, each C x height x width, for one image.

    Args:
        runner: the image's :class:`QueryRunner`.
        specialized: the specialised query of each class (None: none).
    """
    model = runner.model
    full = runner.predict()
    distinct = sorted({int(q) for q in specialized if q is not None})
    # Hard: each distinct specialised query through the decoder alone (one run each), the
    # predictions stacked as if from one run.
    alone = [runner.predict([q]) for q in distinct]
    hard = QueryPrediction(
        torch.tensor(distinct, dtype=torch.int64),
        torch.cat([p.class_logits for p in alone]),
        torch.cat([p.low_res_mask_logits for p in alone]),
        full.padded_size, full.image_size, full.output_size,
    )
    return {
        "unmasked": class_scores(model, full),
        "soft": _single_query_scores(model, full, specialized),
        "hard": _single_query_scores(model, hard, specialized),
    }


@dataclass
class MaskingResult:
    """Confusion matrices (rows = ground truth, columns = prediction) of each variant.

    Attributes:
        confusion: {variant: C x C int64} for :data:`MASKING_VARIANTS`.
        specialized: the specialised query of each class (None: none).
        class_names: C names.
        dataset: the evaluated dataset.
        num_images: images evaluated.
        specialization_source: where ``specialized`` came from (datasets or a file), for the report.
    """

    confusion: Dict[str, np.ndarray]
    specialized: List[Optional[int]]
    class_names: List[str]
    dataset: str
    num_images: int
    specialization_source: str = ""
    iou: Dict[str, np.ndarray] = field(init=False)

    def __post_init__(self):
        self.iou = {variant: per_class_iou(matrix) * 100 for variant, matrix in self.confusion.items()}

    def miou(self, variant: str) -> float:
        return mean_iou(self.confusion[variant])

    def to_json(self) -> Dict:
        def nan_to_none(values):
            return [None if math.isnan(v) else float(v) for v in values]

        return {
            "dataset": self.dataset,
            "num_images": self.num_images,
            "specialization_source": self.specialization_source,
            "class_names": list(self.class_names),
            "specialized_query": {n: q for n, q in zip(self.class_names, self.specialized)},
            "per_class_iou": {v: dict(zip(self.class_names, nan_to_none(self.iou[v]))) for v in MASKING_VARIANTS},
            "mIoU": {v: None if math.isnan(self.miou(v)) else self.miou(v) for v in MASKING_VARIANTS},
            "confusion": {v: self.confusion[v].tolist() for v in MASKING_VARIANTS},
            "iou_definition": "argmax_k S_k with S_k = softmax(class_{q_k})[k] * sigmoid(mask_{q_k}); "
                              "IoU = TP / (TP + FP + FN) pooled over the dataset, percent",
        }

    def to_markdown(self) -> str:
        header = ["class", "query", *MASKING_VARIANTS]
        rows = [[name, "none" if q is None else q, *(self.iou[v][k] for v in MASKING_VARIANTS)]
                for k, (name, q) in enumerate(zip(self.class_names, self.specialized))]
        rows.append(["**mIoU**", "", *(self.miou(v) for v in MASKING_VARIANTS)])
        return (f"Per-class IoU (%) on {self.dataset} ({self.num_images} images) with only each class's specialised "
                f"query ({self.specialization_source}); n/a = class neither in the labels nor predicted\n\n"
                + markdown_table(header, rows))


@torch.no_grad()
def run_query_masking(
    model: MaskFormer,
    batches: Iterable[List[Dict]],
    specialized: Sequence[Optional[int]],
    class_names: Sequence[str],
    ignore_label: int = 255,
    dataset: str = "",
    specialization_source: str = "",
) -> MaskingResult:
    """Per-class IoU of the unmasked model, soft and hard masking over a semantic-segmentation dataset.

    Raises:
        ValueError: no class has a specialised query; a query index outside the model's; an input
            without a semantic label (``sem_seg_file_name``); no image.
    """
    num_classes = len(class_names)
    specialized = [None if q is None else int(q) for q in specialized]
    if len(specialized) != num_classes:
        raise ValueError(f"{len(specialized)} specialised queries given for {num_classes} classes")
    if all(q is None for q in specialized):
        raise ValueError(
            "no class has a specialised query (no query reached the confidence threshold): nothing to mask; "
            "lower the specialisation threshold (--threshold) or use a longer-trained model"
        )
    num_queries = int(model.sem_seg_head.predictor.num_queries)
    outside = [q for q in specialized if q is not None and not 0 <= q < num_queries]
    if outside:
        raise ValueError(f"specialised queries {outside} are outside the model's {num_queries} queries")
    confusion = {v: np.zeros((num_classes, num_classes), np.int64) for v in MASKING_VARIANTS}
    num_images = 0
    for batch in batches:
        for batched_input in batch:
            _, label = labels_of(batched_input)
            if label is None:
                raise ValueError(
                    f"{batched_input.get('file_name')} of dataset '{dataset}' has no semantic label "
                    "(sem_seg_file_name): query masking needs a semantic-segmentation dataset"
                )
            for variant, scores in masked_predictions(QueryRunner(model, batched_input), specialized).items():
                confusion[variant] += confusion_matrix(scores.argmax(0).cpu(), label, num_classes, ignore_label)
            num_images += 1
    if num_images == 0:
        raise ValueError(f"no image in dataset '{dataset}'")
    return MaskingResult(confusion, specialized, list(class_names), dataset, num_images, specialization_source)
