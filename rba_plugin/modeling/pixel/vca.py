"""The VCA open-set prototype baseline (Siam et al.) on a per-pixel head's decoder features.

Each pixel embedding e is compared with a learnable mean mu_k and scale sigma_k per known class,
as the official head does (MSiam/video_class_agnostic_segmentation, commit 59fd8448,
``mmdet/models/ca_heads/appearance_ca_mahalanobis.py:75-93``):

    l_k = -||e - mu_k||_2 / (2 sigma_k^2 + 1e-10)            (``USE_NORM`` False)
    l_k = -cos(e, mu_k) / (2 sigma_k^2 + 1e-10)              (``USE_NORM`` True)

and the unknown class has one learnable constant logit gamma; softmax over C+1. mu, sigma and
gamma start from N(0, 0.01) (lines 43-49). Trained with cross-entropy where pasted outliers
(``INPUT.OOD_LABEL``) are class C, after nearest upsampling of the logits to the label size
(term ``VCACrossEntropy``). Optional auxiliary SupCon on a projection of sampled pixel embeddings
(term ``VCASupCon``; the official loss was never released; reconstructed from the paper's
description). Config group ``MODEL.VCA``.

Options: ``SIGMA_PARAMETRIZATION "log"`` learns log sigma from sigma = 1 (the plugin's former
head): sigma then cannot reach 0, so the logits stay bounded by the distance over 2 sigma^2 and
the first steps are not dominated by a 1 / sigma^3 gradient, as they are with the official
sigma ~ N(0, 0.01) (2 sigma^2 ~ 2e-4); ``SIGMA_EPS``, ``SQUARED_DISTANCE`` and ``LOSS_UPSAMPLING``
give the former head's remaining choices (no 1e-10, bilinear upsampling).
"""
from __future__ import annotations

import logging
from typing import Dict, List

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import register_config_group
from ..loss_terms import check_choice
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

__all__ = ["PrototypeClassifier", "VCA", "add_vca_config"]

logger = logging.getLogger(__name__)


@register_config_group
def add_vca_config(cfg: CfgNode) -> None:
    """The VCA open-set prototype baseline (Siam et al.); defaults follow the official head."""
    cfg.MODEL.VCA = CfgNode()
    cfg.MODEL.VCA.EMBED_DIM = 256
    cfg.MODEL.VCA.SQUARED_DISTANCE = False  # official head: Euclidean, not squared
    # "direct": sigma learnt itself, init N(0, 0.01) (official); "log": log sigma, init sigma = 1.
    cfg.MODEL.VCA.SIGMA_PARAMETRIZATION = "direct"
    cfg.MODEL.VCA.SIGMA_EPS = 1e-10  # the official 2 sigma^2 + 1e-10 (0: none, the former head)
    # Cosine logits -cos(e, mu_k) / (2 sigma_k^2 + eps) on L2-normalised decoder features
    # (official use_norm; its config leaves it False).
    cfg.MODEL.VCA.USE_NORM = False
    # Logits -> label size before the cross-entropy: "nearest" (official) or "bilinear".
    cfg.MODEL.VCA.LOSS_UPSAMPLING = "nearest"
    cfg.MODEL.VCA.SUPCON_WEIGHT = 0.0  # auxiliary supervised contrastive loss (0 = off)
    cfg.MODEL.VCA.SUPCON_TAU = 0.07
    cfg.MODEL.VCA.SUPCON_MAX_VIEWS = 512
    cfg.MODEL.VCA.SUPCON_PROJ_DIM = 128
    # Parts trained with the head (official motion configs freeze backbone and neck).
    cfg.MODEL.VCA.TRAIN_BACKBONE = False


class PrototypeClassifier(nn.Module):
    """Per-class mean and scale, one unknown constant: N x D x h x w -> N x (C+1) x h x w logits.

    Parameters (state-dict names): ``means`` C x D, ``sigmas`` C (``sigma_param`` "direct") or
    ``log_sigmas`` C ("log"), ``unknown_logit`` scalar (the official ``global_unknown``).

    Args:
        squared_distance: ||e - mu||^2 instead of ||e - mu|| (not with ``use_norm``).
        sigma_param: "direct" (sigma ~ N(0, 0.01), official) or "log" (log sigma = 0).
        eps: added to 2 sigma^2 (official 1e-10).
        use_norm: cosine logits (official ``use_norm``).
    """

    def __init__(self, embed_dim: int, num_classes: int, squared_distance: bool = False, sigma_param: str = "direct",
                 eps: float = 1e-10, use_norm: bool = False):
        super().__init__()
        check_choice("MODEL.VCA.SIGMA_PARAMETRIZATION", sigma_param, ("direct", "log"))
        self.means = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.01)
        self.sigma_param = sigma_param
        if sigma_param == "direct":
            self.sigmas = nn.Parameter(torch.randn(num_classes) * 0.01)
        else:
            self.log_sigmas = nn.Parameter(torch.zeros(num_classes))
        self.unknown_logit = nn.Parameter(torch.randn(()) * 0.01)
        self.squared_distance = squared_distance
        self.eps = eps
        self.use_norm = use_norm

    def two_sigma_sq(self) -> Tensor:
        """2 sigma_k^2 + eps, C values (the logits' denominator)."""
        if self.sigma_param == "direct":
            return 2 * self.sigmas**2 + self.eps
        return 2 * torch.exp(2 * self.log_sigmas) + self.eps

    def forward(self, embeddings: Tensor) -> Tensor:
        n, d, h, w = embeddings.shape
        flat = embeddings.permute(0, 2, 3, 1).reshape(-1, d)
        if self.use_norm:
            score = F.normalize(flat, dim=1) @ F.normalize(self.means, dim=1).t()
        else:
            # The norm of the difference itself (as the official torch.norm), not the expansion
            # |e|^2 - 2 e.mu + |mu|^2, which cancels badly when e is near mu; cdist's direct mode
            # computes it without materialising the P x C x D differences.
            score = torch.cdist(flat, self.means, compute_mode="donot_use_mm_for_euclid_dist")
            if self.squared_distance:
                score = score.pow(2)
        known = -score / self.two_sigma_sq()[None]
        logits = torch.cat([known, self.unknown_logit.expand(known.shape[0], 1)], dim=1)
        return logits.reshape(n, h, w, -1).permute(0, 3, 1, 2)


@PIXEL_OOD_METHOD_REGISTRY.register()
class VCA(PixelOODMethod):
    """Prototype head on the decoder. Trains the decoder and the head (and the backbone if
    ``MODEL.VCA.TRAIN_BACKBONE``).

    Outputs: training ``open_set_logits`` (N x (C+1) x h x w at the decoder stride; the loss
    upsamples them to the labels), ``embeddings`` (N x D x h x w) and, with SupCon,
    ``supcon_embeddings``; inference ``sem_seg`` = ``class_scores`` = the C known logits,
    ``open_set_logits`` (both bilinearly upsampled to the input size, as every head's maps), and
    ``unknown_mask`` (argmax is the unknown class). Default score: the unknown class's softmax
    probability.
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
        sigma_param: str = "direct",
        sigma_eps: float = 1e-10,
        use_norm: bool = False,
        train_backbone: bool = False,
        supcon_proj_dim: int = 0,
    ):
        super().__init__()
        if use_norm and squared_distance:
            raise ValueError("MODEL.VCA.SQUARED_DISTANCE applies to the Euclidean logits; it cannot be combined "
                             "with MODEL.VCA.USE_NORM (cosine logits)")
        self.embed = Conv2d(in_channels, embed_dim, kernel_size=1)
        self.classifier = PrototypeClassifier(embed_dim, num_classes, squared_distance, sigma_param, sigma_eps,
                                              use_norm)
        self.num_classes = num_classes
        self.use_norm = use_norm
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
            "sigma_param": v.SIGMA_PARAMETRIZATION,
            "sigma_eps": v.SIGMA_EPS,
            "use_norm": v.USE_NORM,
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

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> None:
        # A checkpoint of the other sigma parametrisation converts exactly: only sigma^2 enters
        # the logits, and sigma^2 = exp(2 log sigma) = exp(2 log |sigma|).
        clf = prefix + "classifier."
        direct, log = clf + "sigmas", clf + "log_sigmas"
        if self.classifier.sigma_param == "direct" and direct not in state_dict and log in state_dict:
            state_dict[direct] = torch.exp(state_dict.pop(log))
            logger.info("VCA: converted %s (log sigma) to %s", log, direct)
        elif self.classifier.sigma_param == "log" and log not in state_dict and direct in state_dict:
            # sigma = 0 exactly (log 0 = -inf) is kept at the smallest positive float instead.
            sigma = state_dict.pop(direct).abs().clamp(min=torch.finfo(torch.float32).tiny)
            state_dict[log] = torch.log(sigma).reshape(-1)
            logger.info("VCA: converted %s to %s (log sigma)", direct, log)

    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        feats = head.decoder_features(dec_in)
        if self.use_norm:  # official forward: L2-normalised features enter the embedding convs
            feats = F.normalize(feats, dim=1)
        emb = self.embed(feats)
        logits = self.classifier(emb)
        if self.training:
            outputs = {"open_set_logits": logits, "embeddings": emb}
            if self.projector is not None:
                outputs["supcon_embeddings"] = F.normalize(self.projector(emb), dim=1)
            return outputs
        logits = head.upsample(logits, images.tensor.shape[-2:])
        known = logits[:, : self.num_classes]
        return {"sem_seg": known, "class_scores": known, "open_set_logits": logits,
                "unknown_mask": logits.argmax(dim=1) == self.num_classes}
