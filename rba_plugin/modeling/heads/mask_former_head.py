"""The Mask2Former head: pixel decoder followed by the transformer decoder (the "predictor")."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..pixel_decoder import build_pixel_decoder
from ..transformer_decoder import build_transformer_decoder

__all__ = ["MaskFormerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """``pixel_decoder`` turns backbone features into mask features and multi-scale maps;
    ``predictor`` turns them into per-query class logits and mask logits (and, with DenseHybrid's
    head ``predictor.ood_pred``, per-pixel outlier logits)."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_label: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        super().__init__()
        if transformer_in_feature != "multi_scale_pixel_decoder":
            raise ValueError(
                "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE: only 'multi_scale_pixel_decoder' (Mask2Former) "
                f"is implemented, got '{transformer_in_feature}'"
            )
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda kv: kv[1].stride)]
        self.ignore_label = ignore_label
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        # The predictor reads the pixel decoder's multi-scale maps, which have CONVS_DIM channels.
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_label": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_in_feature": cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
            "transformer_predictor": build_transformer_decoder(cfg, head.CONVS_DIM, mask_classification=True),
        }

    def forward(self, features: Dict[str, torch.Tensor], mask: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """features: backbone outputs. Returns the predictor's dict (pred_logits, pred_masks,
        aux_outputs and, with DenseHybrid's head, pred_outlier)."""
        return self.layers(features, mask)

    def layers(self, features: Dict[str, torch.Tensor], mask: Optional[torch.Tensor] = None) -> Dict[str, object]:
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        outputs = self.predictor(multi_scale_features, mask_features, mask)
        return outputs
