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

``PROTOTYPE_INIT "class_means"`` (a departure for short fine-tuning budgets; the official head
starts from N(0, 0.01) and trains from scratch with the whole network for a full schedule):
before the first step the trainer shows the method ``PROTOTYPE_INIT_BATCHES`` training batches
(:meth:`VCA.initialize_from_data`); each mean mu_k starts at the class-k mean of the embeddings
the loss compares with it (:func:`class_embedding_sums`), and the scales and unknown logit at the
values that minimise the open-set loss with those means fixed (:func:`fit_open_set_scales`).
From the official start on a trained closed-set decoder, embeddings of norm ~3.6 meet means of
norm ~0.08: every prototype is about equally far from every pixel (1 % spread), sigma takes the
clipped gradient until 2 sigma^2 ~ 1-20, and the logits stay uniform for the whole 200-iteration
synthetic fine-tune (``docs/loss_fidelity.md``).
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d
from detectron2.utils import comm
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import declare_key, register_config_group
from ..loss_terms import PixelTargets, check_choice
from ..loss_terms.vca import open_set_labels
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

__all__ = ["PrototypeClassifier", "VCA", "add_vca_config", "class_embedding_sums", "loss_pixel_weights",
           "fit_open_set_scales"]

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
    # How the prototypes start: "random" (official: mu, sigma, unknown logit ~ N(0, 0.01), made for
    # training the head from scratch with the whole network over a full schedule) or
    # "class_means" (a departure for short fine-tunes, used by the synthetic config: before the
    # first step, mu_k = the mean embedding of class k over PROTOTYPE_INIT_BATCHES training
    # batches, void and pasted outlier pixels left out; sigma and the unknown logit = those that
    # minimise the open-set loss on those batches at these means). Prototypes loaded from a
    # checkpoint (e.g. when resuming) are kept.
    cfg.MODEL.VCA.PROTOTYPE_INIT = "random"
    cfg.MODEL.VCA.PROTOTYPE_INIT_BATCHES = 8
    declare_key("MODEL.VCA.PROTOTYPE_INIT", choices=("random", "class_means"))
    declare_key("MODEL.VCA.PROTOTYPE_INIT_BATCHES", check=lambda v, cfg: (
        None if isinstance(v, int) and v >= 1 else "must be a positive number of training batches"))


def loss_pixel_weights(labels: Tensor, size: Tuple[int, int], num_classes: int) -> Tensor:
    """How many label pixels of each class read each map pixel in the loss: (N h w) x C.

    The open-set cross-entropy (``VCACrossEntropy``, official ``appearance_ca_mahalanobis.py``
    line 106) nearest-upsamples the h x w logits to the label size, so each label pixel reads
    one map pixel; entry [(n h + i) w + j, k] counts the label pixels of class k of image n that
    read map pixel (i, j). The pixel each label pixel reads is found with ``F.interpolate``
    itself, so it is the loss's own. Labels outside [0, num_classes) count for nothing.

    Args:
        labels: N x H x W integer class ids.
        size: (h, w) of the map.
        num_classes: C.
    """
    n = labels.shape[0]
    (h, w), (big_h, big_w) = size, labels.shape[-2:]
    device = labels.device
    rows = F.interpolate(torch.arange(h, device=device, dtype=torch.float32).view(1, 1, h, 1), size=(big_h, 1),
                         mode="nearest").view(big_h).long()
    cols = F.interpolate(torch.arange(w, device=device, dtype=torch.float32).view(1, 1, 1, w), size=(1, big_w),
                         mode="nearest").view(big_w).long()
    source = (torch.arange(n, device=device)[:, None, None] * h + rows[None, :, None]) * w + cols[None, None, :]
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_classes)
    weights = torch.zeros(n * h * w, num_classes, dtype=torch.float64, device=device)
    weights.index_put_((source[valid], labels[valid]), torch.ones((), dtype=torch.float64, device=device),
                       accumulate=True)
    return weights


def class_embedding_sums(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Per-class sums and counts of the embeddings over the labelled pixels, as the loss sees them:
    each embedding counts once per label pixel of class k that reads it
    (:func:`loss_pixel_weights`). Labels outside [0, num_classes) (void, pasted outliers) count
    for nothing.

    Args:
        embeddings: N x D x h x w.
        labels: N x H x W integer class ids.
        num_classes: C.

    Returns:
        (sums C x D, counts C), float64; the class means are sums / counts where counts > 0.
    """
    weights = loss_pixel_weights(labels.to(embeddings.device), embeddings.shape[-2:], num_classes)
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1]).double()
    return weights.t() @ flat, weights.sum(dim=0)


def fit_open_set_scales(scores: Tensor, weights: Tensor, inverse_scales: Tensor, unknown_logit: float,
                        free: Optional[Tensor] = None, fit_unknown: Optional[bool] = None,
                        max_iter: int = 100) -> Tuple[Tensor, float]:
    """The inverse scales a_k > 0 and unknown logit gamma that minimise the open-set
    cross-entropy with the prototypes fixed:

        L(a, gamma) = sum_p sum_j w_pj (-log softmax([-a_1 s_p1, ..., -a_K s_pK, gamma])_j) / sum w

    (the VCA loss, ``VCACrossEntropy``, with a_k = 1 / (2 sigma_k^2 + eps)). The logits are
    linear in (a, gamma), so L is convex in them; L-BFGS over (log a, gamma) from the given
    values. Parameters not fitted keep their values and still take part in the softmax.

    Args:
        scores: P x K scores s_pk (distance, squared distance or cosine) to the K prototypes.
        weights: P x (K+1) label-pixel counts, the unknown class last.
        inverse_scales: K starting values of a; unknown_logit: the starting gamma.
        free: K bools, the a_k to fit (default all).
        fit_unknown: whether gamma is fitted; default: when some unknown pixel has a weight
            (without one, L falls as gamma -> -inf and has no minimum in gamma).

    Returns:
        (a, K values, float64; gamma).
    """
    scores = scores.double()
    weights = weights.double()
    free = torch.ones(scores.shape[1], dtype=torch.bool) if free is None else free.to(torch.bool).cpu()
    if fit_unknown is None:
        fit_unknown = bool(weights[:, -1].sum() > 0)
    log_a_all = inverse_scales.detach().double().log().cpu()
    log_a = log_a_all[free].clone().requires_grad_(True)
    gamma = torch.tensor(float(unknown_logit), dtype=torch.float64, requires_grad=fit_unknown)
    params = [log_a] + ([gamma] if fit_unknown else [])
    scores, weights = scores.cpu(), weights.cpu()
    total = weights.sum()

    def objective() -> Tensor:
        log_a_now = log_a_all.masked_scatter(free, log_a)
        logits = torch.cat([-scores * log_a_now.exp(), gamma.expand(len(scores), 1)], dim=1)
        return -(weights * logits.log_softmax(dim=1)).sum() / total

    optimizer = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return log_a_all.masked_scatter(free, log_a.detach()).exp().to(inverse_scales.device), float(gamma.detach())


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

    def set_two_sigma_sq(self, value: Tensor, where: Tensor) -> None:
        """Sets 2 sigma_k^2 + eps to ``value[k]`` (C values, each > eps) for the classes ``where``
        (C bools) is True, in the current parametrisation (sigma > 0)."""
        sigma = torch.sqrt((value - self.eps).clamp(min=0) / 2)
        with torch.no_grad():
            if self.sigma_param == "direct":
                self.sigmas[where] = sigma[where].to(self.sigmas.dtype)
            else:
                self.log_sigmas[where] = torch.log(sigma[where]).to(self.log_sigmas.dtype)

    def scores(self, flat: Tensor, means: Tensor) -> Tensor:
        """P x D embeddings, K x D means -> P x K scores s, the known logits being
        -s / (2 sigma^2 + eps): the Euclidean distance, squared with ``squared_distance``, or
        with ``use_norm`` the cosine."""
        if self.use_norm:
            return F.normalize(flat, dim=1) @ F.normalize(means, dim=1).t()
        # The norm of the difference itself (as the official torch.norm), not the expansion
        # |e|^2 - 2 e.mu + |mu|^2, which cancels badly when e is near mu; cdist's direct mode
        # computes it without materialising the P x C x D differences.
        score = torch.cdist(flat, means, compute_mode="donot_use_mm_for_euclid_dist")
        return score.pow(2) if self.squared_distance else score

    def forward(self, embeddings: Tensor) -> Tensor:
        n, d, h, w = embeddings.shape
        flat = embeddings.permute(0, 2, 3, 1).reshape(-1, d)
        known = -self.scores(flat, self.means) / self.two_sigma_sq()[None]
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
    # PROTOTYPE_INIT "class_means": map pixels per batch in the fit of the scales (a random sample).
    FIT_PIXELS_PER_BATCH = 65536

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
        prototype_init: str = "random",
        prototype_init_batches: int = 8,
    ):
        super().__init__()
        check_choice("MODEL.VCA.PROTOTYPE_INIT", prototype_init, ("random", "class_means"))
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
        self.prototype_init = prototype_init
        self.prototype_init_batches = prototype_init_batches
        # Set when a state dict with the prototypes is loaded: they are then kept as loaded.
        self.prototypes_loaded = False

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
            "prototype_init": v.PROTOTYPE_INIT,
            "prototype_init_batches": v.PROTOTYPE_INIT_BATCHES,
        }

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        return ["VCACrossEntropy"] + (["VCASupCon"] if cfg.MODEL.VCA.SUPCON_WEIGHT > 0 else [])

    def trainable_prefixes(self) -> List[str]:
        prefixes = ["sem_seg_head.decoder", "ood_method"]
        if self.train_backbone:
            prefixes.append("backbone")
        return prefixes

    def data_init_batches(self) -> int:
        """Training batches :meth:`initialize_from_data` needs before the first step: 0 unless
        ``prototype_init`` is "class_means" and no loaded state dict held the prototypes."""
        if self.prototype_init == "class_means" and not self.prototypes_loaded:
            return self.prototype_init_batches
        return 0

    @torch.no_grad()
    def initialize_from_data(self, head: nn.Module, batches: Iterable[Tuple[Tensor, PixelTargets]]) -> None:
        """``PROTOTYPE_INIT "class_means"``: the prototypes start where the data put them.

        1. mu_k = the mean embedding of class k (void and pasted outlier pixels left out);
        2. the scales 2 sigma_k^2 + eps and the unknown logit gamma: those that minimise the
           open-set loss itself on the same batches with these means fixed
           (:func:`fit_open_set_scales`, a convex problem), started from 2 sigma_k^2 = the
           class's typical score (its root-mean-square distance to mu_k, mean squared distance
           with ``squared_distance``, mean cosine with ``use_norm``). Without pasted outliers in
           the batches gamma keeps its initial value.

        Not in the official code (its head starts from N(0, 0.01) and learns with the whole
        network over a full schedule; in a short fine-tuning it stays at uniform logits).
        Pixels count as the loss sees them (:func:`loss_pixel_weights`). A class without pixels
        in the batches keeps its random prototype (its logits still enter the fit's softmax,
        unchanged). Class sums are
        added over the processes of a distributed run; the fit runs on each process's own
        batches and the first process's result is broadcast, so every process starts alike.

        Args:
            head: the segmentor's head.
            batches: (``dec_in`` = ``head.decode(features)``, the batch's PixelTargets) pairs;
                iterated twice.
        """
        clf = self.classifier
        c, d = clf.means.shape
        device = clf.means.device
        # Pass 1: the class means, and the typical score to them (from sums of e, |e|^2, e / |e|).
        sums = torch.zeros(c, 2 * d + 1, dtype=torch.float64, device=device)
        counts = torch.zeros(c, dtype=torch.float64, device=device)
        num_batches = 0
        for dec_in, targets in batches:
            emb = self._embed(head, dec_in).double()
            stats = torch.cat([emb, emb.pow(2).sum(dim=1, keepdim=True), F.normalize(emb, dim=1)], dim=1)
            batch_sums, batch_counts = class_embedding_sums(stats, targets.without_outliers(), c)
            sums += batch_sums
            counts += batch_counts
            num_batches += 1
        _all_reduce_sum(sums, counts)
        present = counts > 0
        if not present.any():
            logger.warning("VCA: no labelled pixel in %d training batches; the prototypes keep their random "
                           "initialisation", num_batches)
            return
        mean = sums[present] / counts[present, None]
        mu, mean_sq_norm, mean_unit = mean[:, :d], mean[:, d], mean[:, d + 1:]
        if clf.use_norm:
            typical = (mean_unit * F.normalize(mu, dim=1)).sum(dim=1)  # mean cos(e, mu_k)
        else:
            mean_sq_dist = (mean_sq_norm - mu.pow(2).sum(dim=1)).clamp(min=0)  # E|e - mu_k|^2
            typical = mean_sq_dist if clf.squared_distance else mean_sq_dist.sqrt()
        clf.means[present] = mu.to(clf.means.dtype)
        # Pass 2: the scores of (a sample of) the map pixels to the means, with the label pixels
        # of each known class and of the unknown class (pasted outliers) that read them.
        means = clf.means.detach().double()
        generator = torch.Generator().manual_seed(0)
        all_scores, all_weights = [], []
        for dec_in, targets in batches:
            emb = self._embed(head, dec_in)
            weights = loss_pixel_weights(open_set_labels(targets, c), emb.shape[-2:], c + 1)
            rows = (weights.sum(dim=1) > 0).nonzero()[:, 0]
            if len(rows) > self.FIT_PIXELS_PER_BATCH:
                rows = rows[torch.randperm(len(rows), generator=generator)[: self.FIT_PIXELS_PER_BATCH].to(device)]
            flat = emb.permute(0, 2, 3, 1).reshape(-1, d)[rows].double()
            all_scores.append(clf.scores(flat, means))
            all_weights.append(weights[rows])
        # Absent classes keep their scales (and take part in the softmax).
        inverse = 1.0 / clf.two_sigma_sq().detach().double().clamp(min=torch.finfo(torch.float64).tiny)
        inverse[present] = 1.0 / typical.clamp(min=1e-12)
        weights = torch.cat(all_weights)
        fitted_unknown = bool(weights[:, -1].sum() > 0)
        inverse, unknown = fit_open_set_scales(torch.cat(all_scores), weights, inverse, float(clf.unknown_logit),
                                               free=present, fit_unknown=fitted_unknown)
        unknown = torch.tensor(unknown, dtype=torch.float64, device=device)
        _broadcast_from_first(inverse, unknown)
        two_sigma_sq = 1.0 / inverse
        usable = present & (two_sigma_sq > clf.eps)
        clf.set_two_sigma_sq(two_sigma_sq, usable)
        clf.unknown_logit.fill_(float(unknown))
        logger.info("VCA: prototypes initialised from %d training batches: means of %d of %d classes (left random, "
                    "no pixels: %s); fitted 2 sigma^2 %.3g to %.3g (the classes' typical scores %.3g to %.3g), "
                    "unknown logit %s", num_batches, int(present.sum()), c,
                    [k for k in range(c) if not present[k]] or "none", float(two_sigma_sq[present].min()),
                    float(two_sigma_sq[present].max()), float(typical.min()), float(typical.max()),
                    f"{float(unknown):.3g}" if fitted_unknown else "kept (no pasted outlier in the batches)")

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> None:
        clf = prefix + "classifier."
        if clf + "means" in state_dict:
            self.prototypes_loaded = True
        # A checkpoint of the other sigma parametrisation converts exactly: only sigma^2 enters
        # the logits, and sigma^2 = exp(2 log sigma) = exp(2 log |sigma|).
        direct, log = clf + "sigmas", clf + "log_sigmas"
        if self.classifier.sigma_param == "direct" and direct not in state_dict and log in state_dict:
            state_dict[direct] = torch.exp(state_dict.pop(log))
            logger.info("VCA: converted %s (log sigma) to %s", log, direct)
        elif self.classifier.sigma_param == "log" and log not in state_dict and direct in state_dict:
            # sigma = 0 exactly (log 0 = -inf) is kept at the smallest positive float instead.
            sigma = state_dict.pop(direct).abs().clamp(min=torch.finfo(torch.float32).tiny)
            state_dict[log] = torch.log(sigma).reshape(-1)
            logger.info("VCA: converted %s to %s (log sigma)", direct, log)

    def _embed(self, head: nn.Module, dec_in: Tensor) -> Tensor:
        feats = head.decoder_features(dec_in)
        if self.use_norm:  # official forward: L2-normalised features enter the embedding convs
            feats = F.normalize(feats, dim=1)
        return self.embed(feats)

    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        emb = self._embed(head, dec_in)
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


def _all_reduce_sum(*tensors: Tensor) -> None:
    """Sums each tensor over the processes of a distributed run, in place (nothing otherwise)."""
    if comm.get_world_size() > 1:
        for t in tensors:
            torch.distributed.all_reduce(t)


def _broadcast_from_first(*tensors: Tensor) -> None:
    """Replaces each tensor by the first process's in a distributed run, in place."""
    if comm.get_world_size() > 1:
        for t in tensors:
            torch.distributed.broadcast(t, src=0)
