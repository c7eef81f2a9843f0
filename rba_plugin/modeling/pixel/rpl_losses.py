"""RPL's losses (Eq. 4-6) and CoroCL's contrastive loss (Eq. 7), per-pixel means.

The paper writes Eqs. 5-6 as sums over pixels; the official code (``rpl_corocl.code/loss/
PositiveEnergy.py``, ``loss/CoroCL.py``; its learning rate and alpha = 0.05 go with it) uses means
over the inlier and outlier pixels, which we keep so the weights transfer and the loss does not
scale with the crop size.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "softmax_entropy",
    "rpl_inlier_losses",
    "positive_energy_loss",
    "corocl_loss",
    "sample_pixel_embeddings",
    "official_corocl_samples",
]

# RPL's code clamps the probabilities inside its entropies (PositiveEnergy.py disimilarity_entropy).
OFFICIAL_MIN_PROB = 1e-7


def _zero_like_graph(x: Tensor) -> Tensor:
    # A zero that stays connected to the graph, so every step backpropagates through the same
    # parameters whatever the batch holds (uniform graphs across DDP ranks).
    return x.sum() * 0.0


def softmax_entropy(logits: Tensor, min_prob: Optional[float] = None) -> Tensor:
    """Shannon entropy of softmax over dim 1: N x C x H x W -> N x H x W (natural log).

    ``min_prob``: clamp each probability from below first (no renormalisation), as RPL's code
    does with 1e-7: a class below it adds -min_prob log(min_prob) and gets no gradient.
    """
    if min_prob is not None:
        p = F.softmax(logits, dim=1).clamp_min(min_prob)
        return -(p * p.log()).sum(dim=1)
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def rpl_inlier_losses(
    rpl_logits: Tensor,
    base_logits: Tensor,
    inlier_mask: Tensor,
    *,
    entropy_t: float = 1.0,
    targets: Optional[Tensor] = None,
    min_prob: Optional[float] = OFFICIAL_MIN_PROB,
) -> Tuple[Tensor, Tensor]:
    """Eq. 5: cross-entropy and entropy dis-similarity on inlier pixels.

    Args:
        rpl_logits: N x C x H x W logits of the RPL path (fed through the frozen classifier).
        base_logits: N x C x H x W logits of the frozen closed-set model (no gradient needed).
        inlier_mask: N x H x W bool, pixels neither void nor outlier.
        entropy_t: t of ||(H(base) - H(rpl)) / t||^2.
        targets: N x H x W long ground truth; ``None`` uses the frozen model's argmax (paper).
        min_prob: probability clamp inside the entropies (official 1e-7; None: exact entropy).

    Returns:
        (mean CE, mean dis-similarity) over inlier pixels; zeros when there are none (the
        official code: NaN).
    """
    if not inlier_mask.any():
        zero = _zero_like_graph(rpl_logits)
        return zero, zero
    base_logits = base_logits.detach()
    labels = base_logits.argmax(dim=1) if targets is None else targets
    ce = F.cross_entropy(rpl_logits, labels.clamp(min=0, max=rpl_logits.shape[1] - 1), reduction="none")
    dis = ((softmax_entropy(base_logits, min_prob) - softmax_entropy(rpl_logits, min_prob)) / entropy_t) ** 2
    return ce[inlier_mask].mean(), dis[inlier_mask].mean()


def positive_energy_loss(rpl_logits: Tensor, outlier_mask: Tensor) -> Tensor:
    """Eq. 6: mean over outlier pixels of max(-E, 0), E = -logsumexp over the C inlier logits.

    Pushes the energy of outliers up to at least 0 with no margin; zero when no outlier pixel.
    """
    if not outlier_mask.any():
        return _zero_like_graph(rpl_logits)
    neg_energy = torch.logsumexp(rpl_logits, dim=1)
    return F.relu(neg_energy[outlier_mask]).mean()


def corocl_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    *,
    tau: float = 0.1,
    anchor_positions: Optional[Tensor] = None,
) -> Tensor:
    """Eq. 7: for each anchor r and positive p, -log(e^{r.p/tau} / (e^{r.p/tau} + sum_n e^{r.n/tau})).

    The terms are averaged over each anchor's positives, then over anchors that have at least
    one positive (the paper sums; the mean keeps the weight 1 independent of the sample count).

    Args:
        anchors: A x D embeddings (L2-normalised by the caller).
        anchor_labels: A ints (0 inlier, 1 outlier).
        contrast: M x D embeddings.
        contrast_labels: M ints.
        anchor_positions: A indices of the anchors inside ``contrast`` (self-pairs are dropped).
    """
    if anchors.numel() == 0 or contrast.numel() == 0:
        return _zero_like_graph(anchors) + _zero_like_graph(contrast)
    logits = anchors @ contrast.t() / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability; cancels out
    same = anchor_labels[:, None] == contrast_labels[None, :]
    negatives = ~same
    positives = same.clone()
    if anchor_positions is not None:
        positives[torch.arange(anchors.shape[0], device=anchors.device), anchor_positions] = False
    neg_sum = (logits.exp() * negatives).sum(dim=1, keepdim=True)
    log_prob = logits - torch.log(logits.exp() + neg_sum)
    num_pos = positives.sum(dim=1)
    valid = num_pos > 0
    if not valid.any():
        return _zero_like_graph(anchors) + _zero_like_graph(contrast)
    per_anchor = -(log_prob * positives).sum(dim=1)[valid] / num_pos[valid]
    return per_anchor.mean()


def official_corocl_samples(
    city_embeddings: Tensor,
    city_labels: Tensor,
    raw_embeddings: Tensor,
    raw_labels: Tensor,
    *,
    max_views: int = 512,
    ood_label: int = 254,
    ignore_label: int = 255,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """CoroCL's anchors and contrast set as RPL's code draws them (``CoroCL.py``
    ``extraction_samples``).

    Four pools of rows (image-major, then row-major pixels): city outliers (label ``ood_label``),
    city inliers (neither outlier nor void), raw-image outliers and raw-image background. One
    count n = min(max_views, the four pool sizes) is drawn from each with
    ``pool[torch.randperm(len(pool))][:n]`` on the global CPU generator, in the order city
    outliers, city inliers, raw outliers, raw background.

    Args:
        city_embeddings / raw_embeddings: N x D x h x w (L2-normalised by the caller).
        city_labels / raw_labels: N x h x w.

    Returns:
        anchors (2n x D: n city outliers, then n city inliers), their labels (1, 0), the
        contrast set (4n x D: the anchors, n raw outliers, n raw background) and its labels.
    """
    def rows(emb: Tensor) -> Tensor:
        return emb.flatten(2).permute(0, 2, 1)

    city, raw = rows(city_embeddings), rows(raw_embeddings)
    city_l, raw_l = city_labels.flatten(1), raw_labels.flatten(1)
    pools = [
        city[city_l == ood_label],
        city[(city_l != ood_label) & (city_l != ignore_label)],
        raw[raw_l == ood_label],
        raw[(raw_l != ood_label) & (raw_l != ignore_label)],
    ]
    n = min(max_views, *(p.shape[0] for p in pools))
    drawn = [p[torch.randperm(p.shape[0]).to(p.device)][:n] for p in pools]
    ones, zeros = city.new_ones(n, dtype=torch.long), city.new_zeros(n, dtype=torch.long)
    anchors = torch.cat(drawn[:2])
    anchor_labels = torch.cat([ones, zeros])
    contrast = torch.cat(drawn)
    contrast_labels = torch.cat([ones, zeros, ones, zeros])
    return anchors, anchor_labels, contrast, contrast_labels


def sample_pixel_embeddings(embeddings: Tensor, mask: Tensor, max_views: int, generator=None) -> Tensor:
    """Up to ``max_views`` embeddings drawn without replacement from the pixels in ``mask``.

    Args:
        embeddings: N x D x h x w.
        mask: N x h x w bool.
    Returns:
        k x D with k = min(max_views, mask.sum()).
    """
    flat = embeddings.permute(0, 2, 3, 1)[mask]
    if flat.shape[0] > max_views:
        idx = torch.randperm(flat.shape[0], generator=generator, device="cpu")[:max_views].to(flat.device)
        flat = flat[idx]
    return flat
