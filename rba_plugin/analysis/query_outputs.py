"""Per-query outputs of a Mask2Former on one image: what every query analysis reads.

Mask2Former's class scores are L_k = sum_q softmax(class_q)[k] * sigmoid(mask_q) (k over the C
known classes, "no object" dropped; :func:`rba_plugin.modeling.meta_arch.semantic_scores`). The
analyses need the terms of that sum, and the sum over chosen queries only, so
:class:`QueryRunner` runs the backbone and the pixel decoder once per image and the transformer
decoder for any set of queries through its ``keep_queries`` argument (the queries left out are
removed before the first decoder layer). The mask logits are brought to the output size exactly as
``MaskFormer`` does at inference, so that with every query kept :func:`class_scores` equals the
model's ``"sem_seg"`` output bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess

from ..modeling.meta_arch.mask_former import MaskFormer

__all__ = ["QueryPrediction", "QueryRunner", "class_scores", "mask_probabilities"]


@dataclass
class QueryPrediction:
    """The transformer decoder's last prediction for one image and a set of queries.

    Attributes:
        queries: Q' int64, the query index of each row below.
        class_logits: Q' x (C+1) class logits (last = "no object").
        low_res_mask_logits: Q' x H_pad/4 x W_pad/4 mask logits as the decoder predicts them.
        padded_size: (H_pad, W_pad) of the padded input.
        image_size: (h, w) of the input before padding.
        output_size: (height, width) of the model's outputs (the image as read, before the test-time resize).
    """

    queries: torch.Tensor
    class_logits: torch.Tensor
    low_res_mask_logits: torch.Tensor
    padded_size: Tuple[int, int]
    image_size: Tuple[int, int]
    output_size: Tuple[int, int]

    def mask_logits(self, rows: Optional[Sequence[int]] = None) -> torch.Tensor:
        """R x H_pad x W_pad mask logits of ``rows`` (default all), bilinearly upsampled to the
        padded input as ``MaskFormer`` does before ``inference_single`` (computed on demand:
        counting class predictions needs no mask)."""
        logits = self.low_res_mask_logits if rows is None else self.low_res_mask_logits[list(rows)]
        return F.interpolate(logits[None], size=self.padded_size, mode="bilinear", align_corners=False)[0]


class QueryRunner:
    """Backbone and pixel decoder of ``model`` on one test input, then its transformer decoder for
    any subset of queries (:meth:`predict`).

    Args:
        model: a ``MaskFormer`` in eval mode.
        batched_input: one input dict of the test loader ("image": 3 x h x w, "height", "width").
    """

    @torch.no_grad()
    def __init__(self, model: MaskFormer, batched_input: Dict):
        self.model = model
        images = model.preprocess_images([batched_input])
        self.padded_size = tuple(images.tensor.shape[-2:])
        self.image_size = tuple(images.image_sizes[0])
        self.output_size = (int(batched_input.get("height", self.image_size[0])),
                            int(batched_input.get("width", self.image_size[1])))
        features = model.backbone(images.tensor)
        # MaskFormerHead.layers, split so that the decoder can run many times on one encoding.
        self.mask_features, _, self.multi_scale_features = model.sem_seg_head.pixel_decoder.forward_features(features)

    @property
    def num_queries(self) -> int:
        return int(self.model.sem_seg_head.predictor.num_queries)

    @torch.no_grad()
    def predict(self, keep_queries: Optional[Union[Sequence[int], torch.Tensor]] = None) -> QueryPrediction:
        """The decoder run with only ``keep_queries`` (None = all, the model's own computation).

        Raises:
            ValueError: from the decoder, naming indices outside [0, num_queries).
        """
        outputs = self.model.sem_seg_head.predictor(
            self.multi_scale_features, self.mask_features, keep_queries=keep_queries
        )
        queries = (torch.arange(self.num_queries) if keep_queries is None
                   else torch.as_tensor(keep_queries, dtype=torch.int64).reshape(-1).cpu())
        return QueryPrediction(queries, outputs["pred_logits"][0], outputs["pred_masks"][0], self.padded_size,
                               self.image_size, self.output_size)


def class_scores(model: MaskFormer, prediction: QueryPrediction) -> torch.Tensor:
    """L = sum over the prediction's queries of softmax(class)[:C] * sigmoid(mask), C x height x
    width, computed by the model's own ``inference_single`` (with every query kept: the model's
    ``"sem_seg"`` output exactly)."""
    height, width = prediction.output_size
    # mask_logits() is a fresh tensor, which inference_single may overwrite with its sigmoid.
    result = model.inference_single(prediction.class_logits, prediction.mask_logits(),
                                    {"height": height, "width": width}, prediction.image_size)
    return result["sem_seg"]


def mask_probabilities(
    model: MaskFormer, prediction: QueryPrediction, rows: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """sigmoid(mask) of the prediction's rows ``rows`` (default all) at the output size, R x
    height x width in [0, 1], in the model's order of operations: resized then sigmoid when
    ``MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE``, else sigmoid then resized
    (the model resizes L itself there, and a bilinear resize commutes with the weighted sum), so
    sum_q softmax(class_q)[k] * result_q equals :func:`class_scores` to float rounding."""
    logits = prediction.mask_logits(rows)
    height, width = prediction.output_size
    if model.sem_seg_postprocess_before_inference:
        return sem_seg_postprocess(logits, prediction.image_size, height, width).sigmoid()
    return sem_seg_postprocess(logits.sigmoid(), prediction.image_size, height, width)
