"""Mask2Former's pixel decoder: a deformable-attention encoder over the configured feature levels
and an FPN path down to stride ``COMMON_STRIDE`` (4).

As in RbA, the number of levels handed to the transformer decoder is the number of encoder
levels (``len(DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)``): 1 for RbA's released models
(res5 only), 3 for stock Mask2Former (res3-res5).

Level sizes are taken from the feature maps' shapes (never read back from a tensor), so a traced
pixel decoder computes them for the size it runs at.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm, shapes_to_tensor
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ...layers import MSDeformAttn
from ..position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttnPixelDecoder", "MSDeformAttnTransformerEncoderOnly"]


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """src, pos: B x S x C; reference_points: B x S x L x 2. Returns B x S x C."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


def encoder_reference_points(shapes: Sequence[Tuple[int, int]], device) -> torch.Tensor:
    """1 x S x L x 2: every token's pixel centre, normalised to [0, 1], repeated for all levels.

    Args:
        shapes: (H_l, W_l) of every level (ints, or traced sizes while tracing).

    (No padding masks are used, so every level's valid ratio is 1.)
    """
    points = []
    for h, w in shapes:
        # arange + 0.5 equals Deformable-DETR's linspace(0.5, h - 0.5, h) exactly (step 1) and
        # takes a traced size.
        ref_y, ref_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device) + 0.5,
            torch.arange(w, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )
        points.append(torch.stack((ref_x.reshape(-1) / w, ref_y.reshape(-1) / h), -1))
    reference = torch.cat(points, 0)[None]  # 1 x S x 2
    return reference[:, :, None].expand(-1, -1, len(shapes), -1)


def spatial_shapes_tensor(shapes: Sequence[Tuple[int, int]], device) -> torch.Tensor:
    """L x 2 int64 of the levels' (H_l, W_l); traced sizes stay traced (Detectron2's
    ``shapes_to_tensor``) rather than becoming constants of the export size."""
    return torch.stack([shapes_to_tensor(list(shape), device) for shape in shapes]).long()


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """A stack of deformable encoder layers over flattened multi-level features, with a learned
    embedding per level added to the position encoding."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
    ):
        super().__init__()
        self.encoder = nn.Module()  # keeps Mask2Former's key names: transformer.encoder.layers.N
        self.encoder.layers = nn.ModuleList(
            [
                MSDeformAttnTransformerEncoderLayer(
                    d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: Sequence[torch.Tensor], pos_embeds: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            srcs, pos_embeds: per level, B x C x H_l x W_l.

        Returns:
            memory (B x S x C), spatial_shapes (L x 2 int64), level_start_index (L int64).
        """
        src_flatten, pos_flatten, shapes = [], [], []
        for level, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            shapes.append(tuple(src.shape[-2:]))
            src_flatten.append(src.flatten(2).transpose(1, 2))
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)
        pos_flatten = torch.cat(pos_flatten, 1)
        spatial_shapes = spatial_shapes_tensor(shapes, src_flatten.device)
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        reference_points = encoder_reference_points(shapes, src_flatten.device)
        reference_points = reference_points.expand(src_flatten.shape[0], -1, -1, -1)
        output = src_flatten
        for layer in self.encoder.layers:
            output = layer(output, pos_flatten, reference_points, spatial_shapes, level_start_index)
        return output, spatial_shapes, level_start_index


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable encoder over ``transformer_in_features`` + FPN to ``common_stride``.

    ``forward_features`` returns (mask_features B x mask_dim x H/4 x W/4, the encoder's coarsest
    output B x C x H_L x W_L, the list of encoder outputs from coarse to fine that the
    transformer decoder reads: ``len(transformer_in_features)`` maps).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[str] = None,
        transformer_in_features: List[str],
        transformer_n_points: int = 4,
        common_stride: int,
    ):
        super().__init__()
        unknown = [f for f in transformer_in_features if f not in input_shape]
        if unknown:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES: {unknown} not among "
                f"the pixel decoder's inputs {sorted(input_shape)} (MODEL.SEM_SEG_HEAD.IN_FEATURES)"
            )
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)  # fine to coarse
        self.in_features = [k for k, _ in shapes]
        feature_channels = [v.channels for _, v in shapes]
        encoder_shapes = [(k, v) for k, v in shapes if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in encoder_shapes]  # fine to coarse
        encoder_strides = [v.stride for _, v in encoder_shapes]
        self.transformer_num_feature_levels = len(self.transformer_in_features)

        # One 1x1 conv + GroupNorm per encoder level, ordered coarse to fine.
        self.input_proj = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
                for _, v in encoder_shapes[::-1]
            ]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            dropout=transformer_dropout,
            nhead=transformer_nheads,
            dim_feedforward=transformer_dim_feedforward,
            num_encoder_layers=transformer_enc_layers,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        # RbA: the transformer decoder reads as many levels as the encoder has.
        self.maskformer_num_feature_levels = self.transformer_num_feature_levels
        self.common_stride = common_stride

        # FPN levels finer than the finest encoder level, down to common_stride.
        self.num_fpn_levels = int(np.log2(min(encoder_strides)) - np.log2(common_stride))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(feature_channels[: self.num_fpn_levels]):
            lateral = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Top-down order (coarse to fine) for the forward pass.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            # Mask2Former fixes the deformable encoder's FFN width at 1024.
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """features: {name: B x C_name x H_name x W_name}. See the class docstring for outputs."""
        device_type = next(iter(features.values())).device.type
        # Deformable attention runs in float32, also under mixed precision (as in Mask2Former).
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_features(features)

    def _forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        srcs, pos = [], []
        for idx, name in enumerate(self.transformer_in_features[::-1]):
            x = features[name].float()
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, _, _ = self.transformer(srcs, pos)
        batch = memory.shape[0]
        out, start = [], 0
        for h, w in (src.shape[-2:] for src in srcs):
            out.append(memory[:, start : start + h * w].transpose(1, 2).view(batch, -1, h, w))
            start = start + h * w
        for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            lateral = self.lateral_convs[idx](features[name].float())
            # Mask2Former upsamples bilinearly here (the comment there says nearest).
            merged = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](merged))
        multi_scale_features = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]), out[0], multi_scale_features
