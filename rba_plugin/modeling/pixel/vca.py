"""The VCA open-set prototype baseline (Siam et al.) on a per-pixel head's decoder features.

Each pixel embedding f is compared with a learnable mean mu_k and scale sigma_k per known class:
logit_k = -d(f, mu_k) / (2 sigma_k^2) with d the Euclidean distance (squared optionally); the
unknown class has one learnable constant logit gamma; softmax over C+1. Trained with
cross-entropy where pasted outliers (``INPUT.OOD_LABEL``) are class C (term ``VCACrossEntropy``).
sigma is parametrised by its log (the official head learns sigma directly, initialised near
0.01, which can cross 0). Optional auxiliary SupCon on a projection of sampled pixel embeddings
(term ``VCASupCon``; the official loss was never released; reconstructed from the paper's
description). Config group ``MODEL.VCA``.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import register_config_group
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

__all__ = ["PrototypeClassifier", "VCA", "add_vca_config"]


@register_config_group
def add_vca_config(cfg: CfgNode) -> None:
    """The VCA open-set prototype baseline (Siam et al.)."""
    cfg.MODEL.VCA = CfgNode()
    cfg.MODEL.VCA.EMBED_DIM = 256
    cfg.MODEL.VCA.SQUARED_DISTANCE = False  # official head: Euclidean, not squared
    cfg.MODEL.VCA.SUPCON_WEIGHT = 0.0  # auxiliary supervised contrastive loss (0 = off)
    cfg.MODEL.VCA.SUPCON_TAU = 0.07
    cfg.MODEL.VCA.SUPCON_MAX_VIEWS = 512
    cfg.MODEL.VCA.SUPCON_PROJ_DIM = 128
    # Parts trained with the head (official motion configs freeze backbone and neck).
    cfg.MODEL.VCA.TRAIN_BACKBONE = False


class PrototypeClassifier(nn.Module):
    """Per-class mean and log-scale, one unknown constant: N x D x H x W -> N x (C+1) x H x W logits."""

    def __init__(self, embed_dim: int, num_classes: int, squared_distance: bool = False):
        super().__init__()
        self.means = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.01)
        self.log_sigmas = nn.Parameter(torch.zeros(num_classes))
        self.unknown_logit = nn.Parameter(torch.zeros(()))
        self.squared_distance = squared_distance

    def forward(self, embeddings: Tensor) -> Tensor:
        n, d, h, w = embeddings.shape
        flat = embeddings.permute(0, 2, 3, 1).reshape(-1, d)
        sq = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.means.t() + self.means.pow(2).sum(1)[None]).clamp(min=0)
        dist = sq if self.squared_distance else (sq + 1e-12).sqrt()
        known = -dist / (2 * torch.exp(2 * self.log_sigmas))[None]
        logits = torch.cat([known, self.unknown_logit.expand(known.shape[0], 1)], dim=1)
        return logits.reshape(n, h, w, -1).permute(0, 3, 1, 2)


@PIXEL_OOD_METHOD_REGISTRY.register()
class VCA(PixelOODMethod):
    """Prototype head on the decoder. Trains the decoder and the head (and the backbone if
    ``MODEL.VCA.TRAIN_BACKBONE``).

    Outputs: training ``open_set_logits`` (N x (C+1) x H x W), ``embeddings`` (N x D x h x w)
    and, with SupCon, ``supcon_embeddings``; inference ``sem_seg`` = ``class_scores`` = the C
    known logits, ``open_set_logits``, and ``unknown_mask`` (argmax is the unknown class).
    Default score: the unknown class's softmax probability.
    """

    score_inputs = ("class_scores", "open_set_logits")
    default_scores = ("unknown_probability",)
    training_outputs = ("open_set_logits", "embeddings", "supcon_embeddings")

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        embed_dim: int,
        num_classes: int,
        squared_distance: bool = False,
        train_backbone: bool = False,
        supcon_proj_dim: int = 0,
    ):
        super().__init__()
        self.embed = Conv2d(in_channels, embed_dim, kernel_size=1)
        self.classifier = PrototypeClassifier(embed_dim, num_classes, squared_distance)
        self.num_classes = num_classes
        self.train_backbone = train_backbone
        self.projector = Conv2d(embed_dim, supcon_proj_dim, kernel_size=1) if supcon_proj_dim > 0 else None

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        v = cfg.MODEL.VCA
        return {
            "in_channels": sem_seg_head.feature_channels,
            "embed_dim": v.EMBED_DIM,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "squared_distance": v.SQUARED_DISTANCE,
            "train_backbone": v.TRAIN_BACKBONE,
            "supcon_proj_dim": v.SUPCON_PROJ_DIM if v.SUPCON_WEIGHT > 0 else 0,
        }

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        return ["VCACrossEntropy"] + (["VCASupCon"] if cfg.MODEL.VCA.SUPCON_WEIGHT > 0 else [])

    def trainable_prefixes(self) -> List[str]:
        prefixes = ["sem_seg_head.decoder", "ood_method"]
        if self.train_backbone:
            prefixes.append("backbone")
        return prefixes

    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        emb = self.embed(head.decoder_features(dec_in))
        logits = head.upsample(self.classifier(emb))
        if self.training:
            outputs = {"open_set_logits": logits, "embeddings": emb}
            if self.projector is not None:
                outputs["supcon_embeddings"] = F.normalize(self.projector(emb), dim=1)
            return outputs
        known = logits[:, : self.num_classes]
        return {"sem_seg": known, "class_scores": known, "open_set_logits": logits,
                "unknown_mask": logits.argmax(dim=1) == self.num_classes}
