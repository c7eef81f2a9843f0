"""The model the query analyses run on: a trained Mask2Former (``MaskFormer``), checked and loaded."""
from __future__ import annotations

import inspect
from typing import List, Optional, Sequence

from detectron2.modeling import META_ARCH_REGISTRY, build_model

from ..engine import SafeCheckpointer
from ..modeling.meta_arch.mask_former import MaskFormer
from ..modeling.ood import AnomalyScorer, scores_for_inputs

__all__ = ["check_query_architecture", "load_query_model", "set_model_scores"]


def check_query_architecture(cfg) -> None:
    """Refuses, before anything is built, a config whose meta-architecture has no object queries.

    Raises:
        ValueError: ``MODEL.META_ARCHITECTURE`` is not registered, or is not ``MaskFormer`` (or a
            subclass), e.g. the per-pixel branch's ``PixelOODSegmentor``; the message names it.
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCH_REGISTRY:
        raise ValueError(f"MODEL.META_ARCHITECTURE '{name}' is not a registered meta-architecture")
    arch = META_ARCH_REGISTRY.get(name)
    if not (isinstance(arch, type) and issubclass(arch, MaskFormer)):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE '{name}': the query analyses need a mask-classification model "
            "(Mask2Former, 'MaskFormer'); this one predicts per pixel and has no object queries"
        )


def load_query_model(cfg) -> MaskFormer:
    """The Mask2Former of ``cfg`` with ``MODEL.WEIGHTS`` loaded (every module must be in the
    checkpoint unless ``MODEL.ALLOW_PARTIAL_LOAD``), in eval mode, on ``MODEL.DEVICE``.

    Raises:
        ValueError: not a Mask2Former config (:func:`check_query_architecture`), empty
            ``MODEL.WEIGHTS`` (an untrained model has no specialised queries to analyse), or a
            transformer decoder without the ``keep_queries`` hook the masking needs.
    """
    check_query_architecture(cfg)
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: the query analyses need a trained model's checkpoint")
    model = build_model(cfg)
    SafeCheckpointer(cfg, model, allow_new_modules=False).load(cfg.MODEL.WEIGHTS)
    predictor = model.sem_seg_head.predictor
    if "keep_queries" not in inspect.signature(predictor.forward).parameters:
        raise ValueError(
            f"transformer decoder {type(predictor).__name__} (MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME) has no "
            "'keep_queries' argument; the query analyses need it (see MultiScaleMaskedTransformerDecoder.forward)"
        )
    return model.eval()


def set_model_scores(model: MaskFormer, names: Optional[Sequence[str]] = None) -> List[str]:
    """Makes ``model`` output the registered anomaly scores ``names`` (None: every registered
    score it can produce), through the score contract of :class:`rba_plugin.modeling.ood.AnomalyScorer`:
    the model's scorer is replaced by one over the same model outputs with the same smoothing.
    Returns the names.

    Raises:
        ValueError: an unknown score, or one that needs an output the model does not produce
            (naming it and the scores the model supports).
    """
    scorer = model.scorer
    names = list(names) if names else scores_for_inputs(scorer.available_inputs)
    model.scorer = AnomalyScorer(
        names=names, available_inputs=scorer.available_inputs, smoothing_kernel=scorer.smoothing_kernel,
        smoothing_sigma=scorer.smoothing_sigma, key="scores", model_name=type(model).__name__,
    )
    return names
