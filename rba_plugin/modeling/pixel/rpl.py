"""RPL (Residual Pattern Learning, Liu et al., ICCV 2023) with CoroCL, on a per-pixel head.

Architecture (paper Eq. 3 and the official code): a residual block (an ASPP on the backbone's
coarsest feature, reduced to 256 channels, upsampled to the decoder's finest stride, 1x1
expanded to the decoder input's width) is added to the decoder input; the frozen classification
block then gives the RPL logits. The whole segmentation network is frozen, so the closed-set
prediction (the frozen path without the residual) is the base model's. A 1x1 projector on the
upsampled 256-channel map gives CoroCL's pixel embeddings.

Config group ``MODEL.RPL``; loss terms ``RPLInlierLoss``, ``RPLPositiveEnergy`` and (with
COROCL_WEIGHT > 0) ``CoroCLLoss``, in :mod:`rba_plugin.modeling.loss_terms.rpl`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ASPP, Conv2d
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import declare_key, register_config_group
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

__all__ = ["ResidualPatternBlock", "RPL", "add_rpl_config", "downsample_labels"]


@register_config_group
def add_rpl_config(cfg: CfgNode) -> None:
    """RPL + CoroCL (Liu et al., ICCV 2023)."""
    cfg.MODEL.RPL = CfgNode()
    cfg.MODEL.RPL.ENERGY_WEIGHT = 0.05  # alpha of Eq. 4
    cfg.MODEL.RPL.ENTROPY_T = 1.0  # t of the dis-similarity term of Eq. 5
    # Inlier targets of Eq. 5: "pseudo" = argmax of the frozen model (paper and code), "gt".
    cfg.MODEL.RPL.INLIER_TARGET = "pseudo"
    declare_key("MODEL.RPL.INLIER_TARGET", choices=("pseudo", "gt"))
    # Initialise the residual ASPP from the head's trained ASPP when a checkpoint lacks it
    # (official code); False keeps the fresh initialisation.
    cfg.MODEL.RPL.INIT_FROM_HEAD_ASPP = True
    cfg.MODEL.RPL.COROCL_WEIGHT = 1.0  # 0 disables CoroCL (plain RPL)
    cfg.MODEL.RPL.COROCL_TAU = 0.1
    cfg.MODEL.RPL.COROCL_MAX_VIEWS = 512  # pixels sampled per set
    cfg.MODEL.RPL.EXPAND_LR_MULT = 10.0  # official code: 10x lr on the expand conv
    cfg.MODEL.RPL.PROJ_DIM = 304  # projector output width (official: the decoder input width)
    # CoroCL's contrastive set also uses raw outlier-pool images (training input "outlier_image",
    # labelled by "outlier_sem_seg": OOD_LABEL on the object); the official code also uses the
    # raw image's background as "inlier" context.
    cfg.MODEL.RPL.COROCL_OUTLIER_BG_AS_INLIER = True


def downsample_labels(labels: Tensor, size) -> Tensor:
    """N x H x W labels -> N x h x w by nearest-neighbour sampling."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


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

    Outputs: training ``closed_set_logits`` and ``rpl_logits`` (N x C x H x W) and, with CoroCL,
    ``corocl_embeddings`` / ``corocl_labels`` at the decoder's stride and, when the batch holds
    both inlier and outlier pixels there, ``corocl_outlier_embeddings`` / ``corocl_outlier_labels``
    of the raw outlier images (extra input ``outlier_image``, centre-cropped / padded to the city
    crop as the official code does).
    Inference: ``sem_seg`` = the closed-set logits, ``class_scores`` = the RPL logits (default
    score: their energy, smoothed 7x7, as the official test code).
    """

    default_scores = ("energy",)
    default_smoothing_kernel = 7
    training_outputs = ("closed_set_logits", "rpl_logits", "corocl_embeddings", "corocl_labels",
                        "corocl_outlier_embeddings", "corocl_outlier_labels")

    @configurable
    def __init__(
        self,
        *,
        residual: ResidualPatternBlock,
        aspp_feature: str,
        aspp_prefix: str,
        ood_label: int,
        ignore_label: int,
        corocl: bool = True,
        init_from_head_aspp: bool = True,
        expand_lr_factor: float = 10.0,
    ):
        super().__init__()
        if corocl and residual.projector is None:
            raise ValueError("MODEL.RPL.COROCL_WEIGHT > 0 needs MODEL.RPL.PROJ_DIM > 0")
        self.residual = residual
        self.aspp_feature = aspp_feature
        self.aspp_prefix = aspp_prefix
        self.ood_label = ood_label
        self.ignore_label = ignore_label
        self.corocl = corocl
        self.init_from_head_aspp = init_from_head_aspp
        self.expand_lr_factor = expand_lr_factor
        self.extra_inputs = ("outlier_image",) if corocl else ()

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        rpl = cfg.MODEL.RPL
        corocl = rpl.COROCL_WEIGHT > 0
        residual = ResidualPatternBlock(
            sem_seg_head.coarse_in_channels,
            sem_seg_head.decoder_in_channels,
            aspp_channels=cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS,
            aspp_dilations=cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS,
            norm=cfg.MODEL.SEM_SEG_HEAD.NORM,
            pool_kernel_size=sem_seg_head.aspp.pool_kernel_size,
            proj_dim=rpl.PROJ_DIM if corocl else 0,
        )
        return {
            "residual": residual,
            "aspp_feature": sem_seg_head.coarse_feature,
            "aspp_prefix": sem_seg_head.aspp_prefix,
            "ood_label": cfg.INPUT.OOD_LABEL,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "corocl": corocl,
            "init_from_head_aspp": rpl.INIT_FROM_HEAD_ASPP,
            "expand_lr_factor": rpl.EXPAND_LR_MULT,
        }

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        names = ["RPLInlierLoss", "RPLPositiveEnergy"]
        if cfg.MODEL.RPL.COROCL_WEIGHT > 0:
            names.append("CoroCLLoss")
        return names

    def trainable_prefixes(self) -> List[str]:
        return ["ood_method.residual"]

    def lr_factors(self) -> Dict[str, float]:
        return {"ood_method.residual.expand": self.expand_lr_factor}

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> None:
        # A closed-set checkpoint has no residual ASPP: start it as a copy of the trained ASPP
        # (official code). Checkpoints of a trained RPL carry their own and are left alone.
        if not self.init_from_head_aspp:
            return
        src = f"{head_prefix}{self.aspp_prefix}."
        dst = f"{prefix}residual.aspp."
        if any(k.startswith(dst) for k in state_dict):
            return
        for key in [k for k in state_dict if k.startswith(src)]:
            state_dict[dst + key[len(src):]] = state_dict[key].clone()

    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        residual, hidden = self.residual(features[self.aspp_feature], dec_in.shape[-2:])
        with torch.no_grad():
            base = head.classify(dec_in)
        rpl_logits = head.upsample(head.classify(dec_in + residual))
        if not self.training:
            return {"sem_seg": head.upsample(base), "class_scores": rpl_logits}
        outputs = {"closed_set_logits": head.upsample(base), "rpl_logits": rpl_logits}
        if self.corocl:
            outputs.update(self._corocl_outputs(head, hidden, targets, extras))
        return outputs

    def _corocl_outputs(self, head, hidden: Tensor, targets, extras) -> Dict[str, Tensor]:
        emb = self.residual.embed(hidden)
        labels = downsample_labels(targets.labels, emb.shape[-2:])
        outputs = {"corocl_embeddings": emb, "corocl_labels": labels}
        inlier = (labels != self.ood_label) & (labels != self.ignore_label)
        if "outlier_image" in extras and (labels == self.ood_label).any() and inlier.any():
            # The raw images enter the contrast only when there is one (the term's rule): their
            # pass updates the residual's BatchNorm statistics.
            raw = extras["outlier_image"]
            size = raw.features[head.finest_feature].shape[-2:]
            _, raw_hidden = self.residual(raw.features[self.aspp_feature], size)
            raw_emb = self.residual.embed(raw_hidden)
            outputs["corocl_outlier_embeddings"] = raw_emb
            outputs["corocl_outlier_labels"] = downsample_labels(targets.extra["outlier_sem_seg"], raw_emb.shape[-2:])
        return outputs
