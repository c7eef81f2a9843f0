"""The closed-set DeepLabV3+ model (the base every method starts from) scored post hoc."""
from __future__ import annotations

from typing import Dict, Tuple

from detectron2.config import configurable
from detectron2.structures import ImageList
from torch import Tensor, nn

from ..ood.scores import get_score_function
from .deeplab_parts import decoder_input, head_logits, upsample_to_input
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod
from .scoring import score_map

__all__ = ["ClosedSet"]


@PIXEL_OOD_METHOD_REGISTRY.register()
class ClosedSet(PixelOODMethod):
    """Trains the whole network with the head's own loss; pasted outliers are ignored.

    Its anomaly score is a post-hoc function of the logits (``MODEL.PIXEL_OOD.SCORE``).
    """

    @configurable
    def __init__(self, *, score_name: str, ood_label: int, ignore_value: int, smooth_kernel: int = 0, smooth_sigma: float = 1.0):
        super().__init__()
        self.score_name = score_name
        self.ood_label = ood_label
        self.ignore_value = ignore_value
        self.smooth_kernel = smooth_kernel
        self.smooth_sigma = smooth_sigma

    @classmethod
    def from_config(cls, cfg, sem_seg_head):
        try:  # checked when the model is built, not at the first evaluated image
            get_score_function(cfg.MODEL.PIXEL_OOD.SCORE)
        except ValueError as error:
            raise ValueError(f"MODEL.PIXEL_OOD.SCORE: {error}") from None
        return {
            "score_name": cfg.MODEL.PIXEL_OOD.SCORE,
            "ood_label": cfg.INPUT.OOD_LABEL,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "smooth_kernel": cfg.MODEL.PIXEL_OOD.SMOOTH_KERNEL,
            "smooth_sigma": cfg.MODEL.PIXEL_OOD.SMOOTH_SIGMA,
        }

    def losses(self, head, features, images, targets, batched_inputs, segmentor) -> Dict[str, Tensor]:
        targets = targets.masked_fill(targets == self.ood_label, self.ignore_value)
        logits = head_logits(head, decoder_input(head, features))
        return head.losses(logits, targets)

    def inference(self, head: nn.Module, features: Dict[str, Tensor], images: ImageList) -> Tuple[Tensor, Tensor, Dict]:
        logits = upsample_to_input(head_logits(head, decoder_input(head, features)), head)
        return logits, score_map(self.score_name, logits, self.smooth_kernel, self.smooth_sigma), {}
