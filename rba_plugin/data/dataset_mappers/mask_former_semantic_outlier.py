"""The semantic mapper with outlier pasting (RbA's "COCO mix"), for outlier fine-tuning."""
from __future__ import annotations

from detectron2.config import configurable

from ..outlier_paste import OutlierPaster
from .mask_former_semantic import MaskFormerSemanticDatasetMapper
from .registry import register_train_mapper

__all__ = ["MaskFormerSemanticOutlierDatasetMapper"]


@register_train_mapper("mask_former_semantic_coco_mix")
class MaskFormerSemanticOutlierDatasetMapper(MaskFormerSemanticDatasetMapper):
    """:class:`MaskFormerSemanticDatasetMapper` that pastes an outlier object with probability
    ``INPUT.OOD_PROB`` from ``INPUT.OUTLIER_POOL``'s seeded proxy subset of
    ``INPUT.COCO_PROXY_SIZE`` objects, at ``INPUT.OOD_PASTE_STAGE`` (default: RbA's, on the
    full-resolution image before every augmentation, at the object's native scale; see
    :class:`~rba_plugin.data.OutlierPaster` for the other keys). Pasted pixels are labelled
    ``INPUT.OOD_LABEL`` in "sem_seg" and belong to no class mask. The name is RbA's, whatever
    the pool."""

    @configurable
    def __init__(self, is_train: bool = True, **kwargs):
        if kwargs.get("outlier_paster") is None:
            raise ValueError("MaskFormerSemanticOutlierDatasetMapper needs an outlier_paster")
        super().__init__(is_train, **kwargs)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        args = MaskFormerSemanticDatasetMapper.from_config(cfg, is_train)
        args["outlier_paster"] = OutlierPaster(cfg)
        args["paste_stage"] = cfg.INPUT.OOD_PASTE_STAGE
        return args
