"""Which parameters outlier fine-tuning trains (RbA's MODEL.FREEZE_* keys), applied with
:func:`rba_plugin.modeling.freeze.freeze_except` so frozen modules also stay in eval mode."""
from __future__ import annotations

import logging
from typing import List, Optional

from torch import nn

from ..modeling.freeze import freeze_except, trainable_parameter_count

__all__ = ["finetune_trainable_prefixes", "apply_finetune_freezing"]

logger = logging.getLogger(__name__)

_PREDICTOR = "sem_seg_head.predictor"


def finetune_trainable_prefixes(cfg, model: nn.Module) -> Optional[List[str]]:
    """Parameter-name prefixes left trainable by the FREEZE_* keys; None when nothing is frozen.

    Inside the transformer decoder RbA's precedence holds: EXCEPT_OBJECT_QUERIES (query features
    and embeddings) > EXCEPT_MLP_AND_OOD_PRED (class head, mask MLP, DenseHybrid outlier head) >
    EXCEPT_MLP (class head and mask-embedding MLP: RbA's fine-tuning) > the whole decoder.
    """
    m = cfg.MODEL
    decoder_keys = (
        m.FREEZE_TRANSFORMER_DECODER,
        m.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP,
        m.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP_AND_OOD_PRED,
        m.FREEZE_TRANSFORMER_DECODER_EXCEPT_OBJECT_QUERIES,
    )
    if not (m.FREEZE_BACKBONE or m.FREEZE_PIXEL_DECODER or any(decoder_keys)):
        return None
    has_outlier_head = getattr(model.sem_seg_head, "outlier_head", None) is not None
    prefixes = []
    if not m.FREEZE_BACKBONE:
        prefixes.append("backbone")
    if not m.FREEZE_PIXEL_DECODER:
        prefixes.append("sem_seg_head.pixel_decoder")
    if m.FREEZE_TRANSFORMER_DECODER_EXCEPT_OBJECT_QUERIES:
        prefixes += [f"{_PREDICTOR}.query_feat", f"{_PREDICTOR}.query_embed"]
    elif m.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP_AND_OOD_PRED:
        prefixes += [f"{_PREDICTOR}.class_embed", f"{_PREDICTOR}.mask_embed"]
        if has_outlier_head:
            prefixes.append("sem_seg_head.outlier_head")
    elif m.FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP:
        prefixes += [f"{_PREDICTOR}.class_embed", f"{_PREDICTOR}.mask_embed"]
    elif not m.FREEZE_TRANSFORMER_DECODER:
        prefixes.append(_PREDICTOR)
        if has_outlier_head:
            prefixes.append("sem_seg_head.outlier_head")
    if not prefixes:
        raise ValueError("MODEL.FREEZE_*: every part of the model is frozen; nothing would train")
    return prefixes


def apply_finetune_freezing(cfg, model: nn.Module) -> nn.Module:
    """Freeze what the FREEZE_* keys say and log the trainable parameter count and ratio."""
    prefixes = finetune_trainable_prefixes(cfg, model)
    if prefixes is None:
        return model
    freeze_except(model, prefixes)
    trainable, total = trainable_parameter_count(model)
    logger.info(
        "Fine-tuning %d of %d parameters (%.4f %%): %s; every other module is frozen in eval mode.",
        trainable, total, 100.0 * trainable / max(total, 1), ", ".join(prefixes),
    )
    return model
