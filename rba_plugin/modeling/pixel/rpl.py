"""RPL (Residual Pattern Learning) with CoroCL, on Detectron2's DeepLabV3+.

Architecture (paper Eq. 3 and the official code): a residual block (an ASPP on the backbone's
coarsest feature, reduced to 256 channels, upsampled to the decoder's finest stride, 1x1
expanded to the last ``fuse_conv``'s input width) is added to that input; the frozen
``fuse_conv`` + predictor then give the RPL logits. The whole segmentation network is frozen,
so the closed-set prediction (the frozen path without the residual) is the base model's.
A 1x1 projector on the upsampled 256-channel map gives CoroCL's pixel embeddings.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ASPP, Conv2d
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from .deeplab_parts import (
    aspp_feature_name,
    decoder_input,
    decoder_input_channels,
    finest_feature_name,
    head_logits,
    upsample_to_input,
)
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod, split_targets
from .rpl_losses import corocl_loss, positive_energy_loss, rpl_inlier_losses, sample_pixel_embeddings
from .scoring import score_map

__all__ = ["ResidualPatternBlock", "RPL"]


class ResidualPatternBlock(nn.Module):
    """ASPP (in -> ``aspp_channels``) -> upsample -> 1x1 expand to ``out_channels``; plus projector."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        aspp_channels: int = 256,
        aspp_dilations=(6, 12, 18),
        norm: str = "BN",
        pool_kernel_size=None,
        proj_dim: int = 0,
    ):
        super().__init__()
        self.aspp = ASPP(
            in_channels, aspp_channels, list(aspp_dilations), norm=norm, activation=F.relu,
            pool_kernel_size=pool_kernel_size, dropout=0.0,
        )
        self.expand = Conv2d(aspp_channels, out_channels, kernel_size=1, bias=False)
        # Kaiming (as the official code), so the residual is non-zero at step 0.
        nn.init.kaiming_normal_(self.expand.weight)
        self.projector: Optional[nn.Module] = None
        if proj_dim > 0:
            self.projector = Conv2d(aspp_channels, proj_dim, kernel_size=1, bias=True)
            nn.init.kaiming_normal_(self.projector.weight)
            nn.init.zeros_(self.projector.bias)

    def forward(self, x: Tensor, size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """x: N x C_in x h x w -> (residual N x out x H x W, hidden N x aspp_channels x H x W)."""
        hidden = F.interpolate(self.aspp(x), size=size, mode="bilinear", align_corners=False)
        return self.expand(hidden), hidden

    def embed(self, hidden: Tensor) -> Tensor:
        """L2-normalised projector output, N x proj_dim x H x W."""
        return F.normalize(self.projector(hidden), dim=1)


@PIXEL_OOD_METHOD_REGISTRY.register()
class RPL(PixelOODMethod):
    """RPL + CoroCL. Trains only ``ood_method.residual``; everything else is frozen (eval mode).

    Extra inputs (optional, for CoroCL's contrastive set): ``batched_inputs[i]["outlier_image"]``
    (3 x H' x W' uint8, a raw outlier-pool image) and ``["outlier_sem_seg"]`` (H' x W' long,
    ``INPUT.OOD_LABEL`` on the object). Without them the contrastive set is the anchor set.
    With a fixed ASPP pooling window (``INPUT.CROP.ENABLED``) the raw image must have the crop's
    size (the official code centre-crops / pads it to the city crop), or a multiple of it.
    """

    @configurable
    def __init__(
        self,
        *,
        residual: ResidualPatternBlock,
        aspp_feature: str,
        ood_label: int,
        ignore_value: int,
        energy_weight: float = 0.05,
        entropy_t: float = 1.0,
        inlier_target: str = "pseudo",
        init_from_head_aspp: bool = True,
        corocl_weight: float = 1.0,
        corocl_tau: float = 0.1,
        corocl_max_views: int = 512,
        outlier_bg_as_inlier: bool = True,
        smooth_kernel: int = 7,
        smooth_sigma: float = 1.0,
    ):
        super().__init__()
        if inlier_target not in ("pseudo", "gt"):
            raise ValueError(f"MODEL.RPL.INLIER_TARGET must be 'pseudo' or 'gt', got {inlier_target!r}")
        if corocl_weight > 0 and residual.projector is None:
            raise ValueError("MODEL.RPL.COROCL_WEIGHT > 0 needs MODEL.RPL.PROJ_DIM > 0")
        self.residual = residual
        self.aspp_feature = aspp_feature
        self.ood_label = ood_label
        self.ignore_value = ignore_value
        self.energy_weight = energy_weight
        self.entropy_t = entropy_t
        self.inlier_target = inlier_target
        self.init_from_head_aspp = init_from_head_aspp
        self.corocl_weight = corocl_weight
        self.corocl_tau = corocl_tau
        self.corocl_max_views = corocl_max_views
        self.outlier_bg_as_inlier = outlier_bg_as_inlier
        self.smooth_kernel = smooth_kernel
        self.smooth_sigma = smooth_sigma

    @classmethod
    def from_config(cls, cfg, sem_seg_head):
        aspp_name = aspp_feature_name(sem_seg_head)
        head_aspp = sem_seg_head.decoder[aspp_name]["project_conv"]
        rpl = cfg.MODEL.RPL
        residual = ResidualPatternBlock(
            head_aspp.convs[0].in_channels,
            decoder_input_channels(sem_seg_head),
            aspp_channels=cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS,
            aspp_dilations=cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS,
            norm=cfg.MODEL.SEM_SEG_HEAD.NORM,
            pool_kernel_size=head_aspp.pool_kernel_size,
            proj_dim=rpl.PROJ_DIM if rpl.COROCL_WEIGHT > 0 else 0,
        )
        return {
            "residual": residual,
            "aspp_feature": aspp_name,
            "ood_label": cfg.INPUT.OOD_LABEL,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "energy_weight": rpl.ENERGY_WEIGHT,
            "entropy_t": rpl.ENTROPY_T,
            "inlier_target": rpl.INLIER_TARGET,
            "init_from_head_aspp": rpl.INIT_FROM_HEAD_ASPP,
            "corocl_weight": rpl.COROCL_WEIGHT,
            "corocl_tau": rpl.COROCL_TAU,
            "corocl_max_views": rpl.COROCL_MAX_VIEWS,
            "outlier_bg_as_inlier": rpl.COROCL_OUTLIER_BG_AS_INLIER,
            "smooth_kernel": cfg.MODEL.PIXEL_OOD.SMOOTH_KERNEL,
            "smooth_sigma": cfg.MODEL.PIXEL_OOD.SMOOTH_SIGMA,
        }

    def trainable_prefixes(self, head_prefix: str = "sem_seg_head") -> List[str]:
        return ["ood_method.residual"]

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> None:
        # A closed-set checkpoint has no residual ASPP: start it as a copy of the trained ASPP
        # (official code). Checkpoints of a trained RPL carry their own and are left alone.
        if not self.init_from_head_aspp:
            return
        src = f"{head_prefix}decoder.{self.aspp_feature}.project_conv."
        dst = f"{prefix}residual.aspp."
        if any(k.startswith(dst) for k in state_dict):
            return
        for key in [k for k in state_dict if k.startswith(src)]:
            state_dict[dst + key[len(src):]] = state_dict[key].clone()

    def _forward_paths(self, head: nn.Module, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """(base logits, RPL logits, hidden), logits at the decoder's stride."""
        dec_in = decoder_input(head, features)
        residual, hidden = self.residual(features[self.aspp_feature], dec_in.shape[-2:])
        with torch.no_grad():
            base = head_logits(head, dec_in)
        return base, head_logits(head, dec_in + residual), hidden

    def inference(self, head: nn.Module, features: Dict[str, Tensor], images: ImageList):
        base, rpl_logits, _ = self._forward_paths(head, features)
        base = upsample_to_input(base, head)
        rpl_logits = upsample_to_input(rpl_logits, head)
        score = score_map("energy", rpl_logits, self.smooth_kernel, self.smooth_sigma)
        return base, score, {}

    def losses(self, head, features, images, targets, batched_inputs, segmentor) -> Dict[str, Tensor]:
        base, rpl_logits, hidden = self._forward_paths(head, features)
        base_up = upsample_to_input(base, head)
        rpl_up = upsample_to_input(rpl_logits, head)
        inlier, outlier = split_targets(targets, self.ood_label, self.ignore_value)
        gt = targets if self.inlier_target == "gt" else None
        ce, dis = rpl_inlier_losses(rpl_up, base_up, inlier, entropy_t=self.entropy_t, targets=gt)
        losses = {
            "loss_rpl_inlier_ce": ce,
            "loss_rpl_entropy_dis": dis,
            "loss_rpl_positive_energy": self.energy_weight * positive_energy_loss(rpl_up, outlier),
        }
        if self.corocl_weight > 0:
            losses["loss_corocl"] = self.corocl_weight * self._corocl(hidden, targets, batched_inputs, segmentor)
        return losses

    def _downsample_labels(self, labels: Tensor, size) -> Tensor:
        return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()

    def _corocl(self, hidden: Tensor, targets: Tensor, batched_inputs: List[dict], segmentor) -> Tensor:
        emb = self.residual.embed(hidden)
        labels = self._downsample_labels(targets, emb.shape[-2:])
        city_in, city_out = split_targets(labels, self.ood_label, self.ignore_value)
        n = self.corocl_max_views
        anchors_out = sample_pixel_embeddings(emb, city_out, n)
        anchors_in = sample_pixel_embeddings(emb, city_in, n)
        if anchors_out.shape[0] == 0 or anchors_in.shape[0] == 0:
            # Both classes are needed for a contrast; keep the graph uniform across steps.
            return emb.sum() * 0.0
        anchors = torch.cat([anchors_out, anchors_in])
        anchor_labels = torch.cat([anchors.new_ones(anchors_out.shape[0]), anchors.new_zeros(anchors_in.shape[0])]).long()
        contrast, contrast_labels = [anchors], [anchor_labels]
        if "outlier_image" in batched_inputs[0]:
            raw_emb, raw_labels = self._embed_outlier_images(batched_inputs, segmentor)
            raw_out = raw_labels == self.ood_label
            raw_in = (raw_labels != self.ood_label) & (raw_labels != self.ignore_value)
            for mask, value in ((raw_out, 1), (raw_in if self.outlier_bg_as_inlier else None, 0)):
                if mask is None:
                    continue
                sampled = sample_pixel_embeddings(raw_emb, mask, n)
                contrast.append(sampled)
                contrast_labels.append(torch.full((sampled.shape[0],), value, dtype=torch.long, device=sampled.device))
        positions = torch.arange(anchors.shape[0], device=anchors.device)
        return corocl_loss(
            anchors, anchor_labels, torch.cat(contrast), torch.cat(contrast_labels),
            tau=self.corocl_tau, anchor_positions=positions,
        )

    def _embed_outlier_images(self, batched_inputs: List[dict], segmentor) -> Tuple[Tensor, Tensor]:
        raw = [{"image": x["outlier_image"]} for x in batched_inputs]
        images = segmentor.preprocess_image(raw)
        feats = segmentor.backbone(images.tensor)
        size = feats[finest_feature_name(segmentor.sem_seg_head)].shape[-2:]
        _, hidden = self.residual(feats[self.aspp_feature], size)
        emb = self.residual.embed(hidden)
        labels = ImageList.from_tensors(
            [x["outlier_sem_seg"].to(emb.device) for x in batched_inputs],
            segmentor.size_divisibility, pad_value=self.ignore_value,
        ).tensor
        return emb, self._downsample_labels(labels, emb.shape[-2:])
