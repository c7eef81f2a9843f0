"""Mask2Former's masked-attention transformer decoder, with RbA's configurable level count."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn

from ..position_encoding import PositionEmbeddingSine
from .outlier_head import DenseHybridOutlierHead
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from .registry import TRANSFORMER_DECODER_REGISTRY

__all__ = ["MultiScaleMaskedTransformerDecoder"]


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Learnable queries refined by ``dec_layers`` layers of (masked cross-attention to one
    feature level, self-attention, FFN); the levels are visited round-robin, coarse to fine.

    A class head (Linear to C + 1, the last being "no object") and a mask head (3-layer MLP whose
    output is dotted with the per-pixel mask features) predict after the query initialisation
    and after every layer; all but the last prediction are returned as ``aux_outputs`` for deep
    supervision. The cross-attention of a layer only sees the pixels where the previous
    prediction's mask is >= 0.5 (a query whose mask is empty everywhere sees all pixels).
    ``fused_attention`` selects the attention kernels (see :mod:`.layers`).
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        num_feature_levels: int = 3,
        ood_pred: Optional[nn.Module] = None,
        fused_attention: bool = True,
    ):
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask classification")
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, 0.0, pre_norm, fused_attention) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, 0.0, pre_norm, fused_attention) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # initial query content
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # query position embedding
        self.num_feature_levels = num_feature_levels
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        # DenseHybrid's outlier head on the mask features; RbA's code keeps it here, so its
        # checkpoint keys are sem_seg_head.predictor.ood_pred.*.
        self.ood_pred = ood_pred

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool = True):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1 (got {mf.DEC_LAYERS})")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # DEC_LAYERS counts predictions: the query-only one plus one per decoder layer.
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            # RbA: as many levels as the deformable encoder has (stock Mask2Former: always 3).
            "num_feature_levels": len(cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            # RbA's DENSE_HYBRID_LOSS adds DenseHybrid's head whenever its training is configured,
            # so evaluating such a model with the same config finds it.
            "ood_pred": (DenseHybridOutlierHead(cfg.MODEL.SEM_SEG_HEAD.MASK_DIM, kernel_size=mf.DENSE_HYBRID_HEAD_KERNEL)
                         if mf.DENSE_HYBRID_LOSS else None),
            "fused_attention": cfg.MODEL.FUSED_ATTENTION,
        }

    def forward(
        self,
        x: Sequence[torch.Tensor],
        mask_features: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        keep_queries: Optional[Union[Sequence[int], torch.Tensor]] = None,
    ) -> Dict[str, object]:
        """
        Args:
            x: ``num_feature_levels`` maps B x C x H_l x W_l, coarse to fine.
            mask_features: B x mask_dim x H/4 x W/4.
            mask: unused (kept for Mask2Former's signature).
            keep_queries: indices of the queries to run (Q' of them, in this order), None = all.
                The others are removed before the first layer, so the kept ones attend to the
                image features and to each other only ("hard masking" of the RbA paper, Sec. 3.2;
                :mod:`rba_plugin.analysis`). None runs exactly the unmodified computation.

        Returns:
            {"pred_logits": B x Q' x (C+1), "pred_masks": B x Q' x H/4 x W/4,
             "aux_outputs": [{"pred_logits", "pred_masks"}] * dec_layers (earlier predictions)},
            with DenseHybrid's head also "pred_outlier": B x 2 x H/4 x W/4 (channel 1 = outlier).

        Raises:
            ValueError: a wrong number of feature levels; ``keep_queries`` empty, not 1-D, or
                holding an index outside [0, num_queries) (named).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(
                f"MultiScaleMaskedTransformerDecoder expects {self.num_feature_levels} feature levels, got {len(x)}"
            )
        src, pos, size_list = [], [], []
        for i in range(self.num_feature_levels):
            size_list.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i], None).flatten(2).permute(2, 0, 1))  # HW x B x C
            level = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))
        batch = src[0].shape[1]
        query_embed, query_feat = self.query_embed.weight, self.query_feat.weight
        if keep_queries is not None:
            index = self._query_index(keep_queries, query_feat.device)
            query_embed, query_feat = query_embed[index], query_feat[index]
        query_embed = query_embed.unsqueeze(1).repeat(1, batch, 1)  # Q x B x C
        output = query_feat.unsqueeze(1).repeat(1, batch, 1)

        predictions_class, predictions_mask = [], []
        outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(output, mask_features, size_list[0])
        predictions_class.append(outputs_class)
        predictions_mask.append(outputs_mask)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            # A query whose mask is empty at this level would attend to nothing: let it see all.
            # (Mask2Former's in-place index assignment, written without data-dependent indices.)
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[i](output)
            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
                output, mask_features, size_list[(i + 1) % self.num_feature_levels]
            )
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)
        out = {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": [
                {"pred_logits": c, "pred_masks": m} for c, m in zip(predictions_class[:-1], predictions_mask[:-1])
            ],
        }
        if self.ood_pred is not None:
            out["pred_outlier"] = self.ood_pred(mask_features)
        return out

    def _query_index(self, keep_queries: Union[Sequence[int], torch.Tensor], device: torch.device) -> torch.Tensor:
        """``keep_queries`` as a 1-D int64 index tensor on ``device``, checked against num_queries."""
        index = torch.as_tensor(keep_queries, device=device)
        if index.dim() != 1 or index.numel() == 0:
            raise ValueError(
                f"keep_queries must be a non-empty 1-D list of query indices, got shape {tuple(index.shape)}"
            )
        # A bool mask or floats would be cast to indices silently (True -> query 1).
        if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
            raise ValueError(f"keep_queries must hold integer query indices, got dtype {index.dtype}")
        index = index.to(torch.int64)
        bad = index[(index < 0) | (index >= self.num_queries)]
        if bad.numel():
            raise ValueError(
                f"keep_queries: query indices {bad.tolist()[:10]} are outside [0, {self.num_queries}) "
                f"(the decoder has {self.num_queries} queries)"
            )
        return index

    def forward_prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_target_size: Tuple[int, int]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            output: Q x B x C query features.
            mask_features: B x mask_dim x H x W.
            attn_mask_target_size: (h, w) of the level the next layer attends to.

        Returns:
            class logits B x Q x (C+1), mask logits B x Q x H x W and the next layer's attention
            mask (B * heads) x Q x (h * w) bool (True = may not attend).
        """
        decoded = self.decoder_norm(output).transpose(0, 1)  # B x Q x C
        outputs_class = self.class_embed(decoded)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        attn_mask = F.interpolate(outputs_mask, size=attn_mask_target_size, mode="bilinear", align_corners=False)
        attn_mask = attn_mask.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1) < 0.5
        return outputs_class, outputs_mask, attn_mask.detach()
