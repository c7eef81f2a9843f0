"""The VCA open-set prototype baseline (Siam et al.) on DeepLabV3+ decoder features.

Each pixel embedding f is compared with a learnable mean mu_k and scale sigma_k per known class:
logit_k = -d(f, mu_k) / (2 sigma_k^2) with d the Euclidean distance (squared optionally); the
unknown class has one learnable constant logit gamma; softmax over C+1. Trained with
cross-entropy where pasted outliers (``INPUT.OOD_LABEL``) are class C. sigma is parametrised
by its log (the official head learns sigma directly, initialised near 0.01, which can cross 0).
Optional auxiliary SupCon on a projection of sampled pixel embeddings (the official loss was
never released; reconstructed from the paper's description).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from .contrastive import supcon_loss
from .deeplab_parts import decoder_features, decoder_input, upsample_to_input
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod
from .rpl_losses import sample_pixel_embeddings

__all__ = ["PrototypeClassifier", "VCA"]


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
    ``MODEL.VCA.TRAIN_BACKBONE``). Outputs ``sem_seg`` = the C known logits, ``ood_score`` =
    softmax probability of the unknown class, ``unknown_mask`` = argmax is the unknown class."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        embed_dim: int,
        num_classes: int,
        ood_label: int,
        ignore_value: int,
        squared_distance: bool = False,
        train_backbone: bool = False,
        supcon_weight: float = 0.0,
        supcon_tau: float = 0.07,
        supcon_max_views: int = 512,
        supcon_proj_dim: int = 128,
    ):
        super().__init__()
        self.embed = Conv2d(in_channels, embed_dim, kernel_size=1)
        self.classifier = PrototypeClassifier(embed_dim, num_classes, squared_distance)
        self.num_classes = num_classes
        self.ood_label = ood_label
        self.ignore_value = ignore_value
        self.train_backbone = train_backbone
        self.supcon_weight = supcon_weight
        self.supcon_tau = supcon_tau
        self.supcon_max_views = supcon_max_views
        self.projector = Conv2d(embed_dim, supcon_proj_dim, kernel_size=1) if supcon_weight > 0 else None

    @classmethod
    def from_config(cls, cfg, sem_seg_head):
        v = cfg.MODEL.VCA
        return {
            "in_channels": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "embed_dim": v.EMBED_DIM,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ood_label": cfg.INPUT.OOD_LABEL,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "squared_distance": v.SQUARED_DISTANCE,
            "train_backbone": v.TRAIN_BACKBONE,
            "supcon_weight": v.SUPCON_WEIGHT,
            "supcon_tau": v.SUPCON_TAU,
            "supcon_max_views": v.SUPCON_MAX_VIEWS,
            "supcon_proj_dim": v.SUPCON_PROJ_DIM,
        }

    def trainable_prefixes(self, head_prefix: str = "sem_seg_head") -> List[str]:
        prefixes = [f"{head_prefix}.decoder", "ood_method"]
        if self.train_backbone:
            prefixes.append("backbone")
        return prefixes

    def _embeddings(self, head: nn.Module, features: Dict[str, Tensor]) -> Tensor:
        return self.embed(decoder_features(head, decoder_input(head, features)))

    def losses(self, head, features, images, targets, batched_inputs, segmentor) -> Dict[str, Tensor]:
        emb = self._embeddings(head, features)
        logits = upsample_to_input(self.classifier(emb), head)
        labels = targets.masked_fill(targets == self.ood_label, self.num_classes)
        losses = {"loss_vca_ce": F.cross_entropy(logits, labels, ignore_index=self.ignore_value)}
        if self.supcon_weight > 0:
            small = F.interpolate(labels[:, None].float(), size=emb.shape[-2:], mode="nearest")[:, 0].long()
            z = F.normalize(self.projector(emb), dim=1)
            samples, sample_labels = [], []
            for k in range(self.num_classes + 1):
                picked = sample_pixel_embeddings(z, small == k, self.supcon_max_views)
                samples.append(picked)
                sample_labels.append(torch.full((picked.shape[0],), k, dtype=torch.long, device=z.device))
            losses["loss_vca_supcon"] = self.supcon_weight * supcon_loss(
                torch.cat(samples), torch.cat(sample_labels), self.supcon_tau
            ) + z.sum() * 0.0
        return losses

    def inference(self, head: nn.Module, features: Dict[str, Tensor], images: ImageList) -> Tuple[Tensor, Tensor, Dict]:
        logits = upsample_to_input(self.classifier(self._embeddings(head, features)), head)
        probs = logits.softmax(dim=1)
        unknown = logits.argmax(dim=1) == self.num_classes
        return logits[:, : self.num_classes], probs[:, self.num_classes], {"unknown_mask": unknown}
