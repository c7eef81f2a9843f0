"""The closed-set model (the base every per-pixel method starts from), scored post hoc."""
from __future__ import annotations

from typing import Dict, List

from detectron2.config import configurable

from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

__all__ = ["ClosedSet"]


@PIXEL_OOD_METHOD_REGISTRY.register()
class ClosedSet(PixelOODMethod):
    """Trains the whole network with the head's cross-entropy (``SemSegLoss``); pasted outliers
    are void. Its anomaly score is a post-hoc function of the logits (default max-logit)."""

    training_outputs = ("logits",)
    official_key_prefix = ""  # no modules of its own: a network's official checkpoint loads as a whole

    @configurable
    def __init__(self):
        super().__init__()

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        return {}

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        return ["SemSegLoss"]

    def forward(self, head, features, dec_in, images, targets=None, extras=None):
        logits = head.upsample(head.classify(dec_in), images.tensor.shape[-2:])
        if self.training:
            return {"logits": logits}
        return {"sem_seg": logits, "class_scores": logits}
