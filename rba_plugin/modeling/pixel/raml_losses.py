"""RAML's losses: the circle loss on region embeddings (anomaly / metric stage) and the MCA losses
(paper Eqs. 6-9), each in the form of the official code (czifan/RAML ``incremental/``, commit
670be907) and in the paper's.

Conventions: ``channels`` are MCA activations, N x K x H x W in [0, 1] (the first ones the known
classes, the rest meta channels); all reductions are over the tensors given (the per-process
batch), as the official code does.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "circle_loss",
    "plain_circle_loss",
    "dice_coefficient",
    "dice_per_image",
    "mca_inter_loss",
    "mca_split_loss",
    "mca_reconstruction_loss",
    "mca_known_loss",
]


def _pair_similarities(embeddings: Tensor, labels: Tensor):
    """Cosine similarities of the pairs i < j with equal (s_p) and different (s_n) labels, in the
    row-major order of ``convert_label_to_similarity`` (RAML ``main_metric.py:28-38``)."""
    z = F.normalize(embeddings, dim=1)
    sim = z @ z.t()
    upper = torch.triu(torch.ones_like(sim, dtype=torch.bool), diagonal=1)
    same = labels[:, None] == labels[None, :]
    return sim[upper & same], sim[upper & ~same]


def circle_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.25, gamma: float = 8.0) -> Tensor:
    """Adaptive circle loss (Sun et al. 2020, Eq. 6) over all pairs i < j of a batch, as RAML's
    ``CircleLoss`` (``main_metric.py:40-59``).

    s = cosine similarity of the L2-normalised embeddings; positives (same label):
    alpha_p = [1 + m - s_p]_+, delta_p = 1 - m; negatives: alpha_n = [s_n + m]_+, delta_n = m
    (the alphas carry no gradient);
    L = softplus( logsumexp_n(gamma alpha_n (s_n - delta_n)) + logsumexp_p(-gamma alpha_p (s_p - delta_p)) ).

    Args:
        embeddings: M x D, any scale (normalised here).
        labels: M ints.
    Returns:
        scalar >= 0. 0 (still connected to the graph) without a positive or a negative pair,
        where the official code's logsumexp over an empty set gives softplus(-inf) = 0 too.
    """
    s_p, s_n = _pair_similarities(embeddings, labels)
    if s_p.numel() == 0 or s_n.numel() == 0:
        return embeddings.sum() * 0.0
    alpha_p = (1 + margin - s_p.detach()).clamp(min=0)
    alpha_n = (s_n.detach() + margin).clamp(min=0)
    logit_p = -gamma * alpha_p * (s_p - (1 - margin))
    logit_n = gamma * alpha_n * (s_n - margin)
    return F.softplus(torch.logsumexp(logit_n, dim=0) + torch.logsumexp(logit_p, dim=0))


def plain_circle_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.25, gamma: float = 8.0) -> Tensor:
    """The circle loss as RAML's paper writes it (appendix C.4), without the adaptive weights:
    L = log(1 + sum_n sum_p exp(gamma (s_n - s_p + m)))
      = softplus( logsumexp_n(gamma s_n) + logsumexp_p(-gamma s_p) + gamma m ),
    over the pairs i < j of the batch (as the official code pairs them).

    Args / returns: as :func:`circle_loss`.
    """
    s_p, s_n = _pair_similarities(embeddings, labels)
    if s_p.numel() == 0 or s_n.numel() == 0:
        return embeddings.sum() * 0.0
    return F.softplus(torch.logsumexp(gamma * s_n, dim=0) + torch.logsumexp(-gamma * s_p, dim=0) + gamma * margin)


def dice_coefficient(a: Tensor, b: Tensor, smooth: float = 1.0) -> Tensor:
    """Standard Dice (2 sum(a b) + s) / (sum(a^2) + sum(b^2) + s) over all elements."""
    return (2 * (a * b).sum() + smooth) / (a.pow(2).sum() + b.pow(2).sum() + smooth)


def dice_per_image(a: Tensor, b: Tensor, smooth: float = 1.0, factor: float = 1.0) -> Tensor:
    """Per-image Dice (factor sum(a b) + s) / (sum(a^2) + sum(b^2) + s), sums over all but the
    first dimension.

    ``factor=1`` is RAML's ``BinaryDiceLoss`` (``main.py:107-131``, smooth 1, p 2): its numerator
    lacks the usual 2, so identical inputs score sum(a^2) + 1 over 2 sum(a^2) + 1 (about 1/2),
    not 1.

    Args:
        a, b: N x ... (same shape).
    Returns:
        N values in (0, factor].
    """
    a, b = a.flatten(1), b.flatten(1)
    return (factor * (a * b).sum(dim=1) + smooth) / (a.pow(2).sum(dim=1) + b.pow(2).sum(dim=1) + smooth)


def _check(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def mca_inter_loss(channels: Tensor, reduction: str = "mean", dice: str = "official", smooth: float = 1.0) -> Tensor:
    """L_inter: the Dice overlap of every pair of channels (known and meta alike).

    dice "official" (``CDiceLoss`` loss3, ``main.py:167-175``): per-image Dice without the factor
    2 (:func:`dice_per_image`), averaged over the images; "standard": Dice with the 2, pooled over
    the batch (Eq. 7 with the usual Dice). Dice is symmetric, so the official mean over ordered
    pairs i != j equals the mean over i < j.

    Args:
        channels: N x K x H x W activations.
        reduction: "mean" over the pairs (official) or "sum" over i < j (paper Eq. 7).
    Returns:
        scalar (0 with fewer than two channels).
    Raises:
        ValueError: an unknown ``reduction`` or ``dice``.
    """
    _check("MODEL.MCA.INTER_REDUCTION", reduction, ("mean", "sum"))
    _check("MODEL.MCA.DICE", dice, ("official", "standard"))
    n, k = channels.shape[:2]
    if k < 2:
        return channels.sum() * 0.0
    # All pairwise overlaps from Gram matrices: sum(C_i C_j) = G_ij, sum(C_i^2) = G_ii.
    if dice == "official":
        flat = channels.reshape(n, k, -1)
        gram = flat @ flat.transpose(1, 2)  # N x K x K, one per image
        diag = gram.diagonal(dim1=1, dim2=2)
        overlap = ((gram + smooth) / (diag[:, :, None] + diag[:, None, :] + smooth)).mean(dim=0)
    else:
        flat = channels.transpose(0, 1).reshape(k, -1)
        gram = flat @ flat.t()
        diag = gram.diagonal()
        overlap = (2 * gram + smooth) / (diag[:, None] + diag[None, :] + smooth)
    i, j = torch.triu_indices(k, k, offset=1, device=channels.device)
    pairs = overlap[i, j]
    return pairs.mean() if reduction == "mean" else pairs.sum()


def mca_split_loss(
    meta: Tensor,
    eta: float = 0.02,
    mass: str = "batch_mean",
    bound: str = "min",
    reduction: str = "mean",
    eps: Optional[float] = None,
) -> Tensor:
    """L_split on the meta channels: -log(bound(x_i, 1)) per meta channel i, reduced over them.

    mass (x_i):
      * "batch_mean": mean of C_i over the batch and its pixels, over eta: one value per channel
        (official ``CDiceLoss`` loss2, ``main.py:162-165``: 50 x mean with eta = 0.02);
      * "sum": eta x sum of C_i over the pixels of each image (paper Eq. 8);
      * "mean": mean of C_i over the pixels of each image, over eta.
    Per-image masses are reduced over the channels, then averaged over the images.

    bound: "min" = -log(min(x, 1)) (the official clamp(0, 1); zero once a channel holds enough
    mass); "max" = the literal Eq. 8 -log(max(x, 1)).

    Args:
        meta: N x K x H x W meta-channel activations.
        reduction: over the meta channels, "mean" (official) or "sum" (Eq. 8).
        eps: floor of x inside the log (default: the smallest positive normal number of the
            dtype). The official value is +inf when a channel is exactly 0 on the whole batch
            (log 0); the floor changes only that case, to a finite value with no gradient.
    Returns:
        scalar >= 0 (0 without meta channels).
    Raises:
        ValueError: an unknown ``mass``, ``bound`` or ``reduction``.
    """
    _check("MODEL.MCA.SPLIT_MASS", mass, ("batch_mean", "sum", "mean"))
    _check("MODEL.MCA.SPLIT_BOUND", bound, ("min", "max"))
    _check("MODEL.MCA.SPLIT_REDUCTION", reduction, ("mean", "sum"))
    if meta.shape[1] == 0:
        return meta.sum() * 0.0
    if mass == "batch_mean":
        x = meta.transpose(0, 1).reshape(meta.shape[1], -1).mean(dim=1) / eta  # K
    elif mass == "sum":
        x = eta * meta.sum(dim=(2, 3))  # N x K
    else:
        x = meta.mean(dim=(2, 3)) / eta
    x = x.clamp(max=1.0) if bound == "min" else x.clamp(min=1.0)
    floor = torch.finfo(meta.dtype).tiny if eps is None else eps
    per_channel = -torch.log(x.clamp(min=floor))
    reduced = per_channel.mean(dim=-1) if reduction == "mean" else per_channel.sum(dim=-1)
    return reduced.mean()


def mca_reconstruction_loss(channels: Tensor, image: Tensor) -> Tensor:
    """L_rec (Eq. 9) as the official code computes it: mean over images, colour channels and
    pixels of (X_c (sum_i C_i - 1))^2 (``network/utils.py:195`` then ``MSELoss`` at ``main.py:410``).

    With softmax activations sum_i C_i = 1 and the term vanishes; it acts with sigmoid ones.

    Args:
        channels: N x K x H x W; image: N x 3 x H x W (normalised).
    """
    total = channels.sum(dim=1, keepdim=True)
    return (image * (total - 1.0)).pow(2).mean()


def mca_known_loss(
    channels: Tensor, targets: Tensor, num_known: int, ignore_label: int, kind: str = "dice_bce", dice: str = "official"
) -> Tensor:
    """Supervision of the first ``num_known`` channels by the known-class labels.

    kind "dice_bce" (official ``CDiceLoss`` loss1, ``main.py:155-160``): the mean over the known
    channels i of [Dice loss(C_i, Y_i) + BCE(C_i, Y_i)], Y_i = 1[y = i] over **every** pixel:
    void, unknown and outlier pixels are negatives in every channel (``encode_target_czifan``).
    With dice "official" the Dice loss is mean over images of (1 - Dice without the 2), as
    ``BinaryDiceLoss``; with "standard", 1 - the Dice with the 2 pooled over the batch. The BCE is
    ``nn.BCELoss``: a mean over the whole batch, log clamped at -100.
    kind "nll" (paper: the first N channels are the in-distribution segmentation): mean over the
    pixels with a known label of -log C_y (floor 1e-7 against log 0).

    Args:
        channels: N x K x H x W activations, K >= num_known.
        targets: N x H x W long, a known class index in [0, num_known) or anything else
            (``ignore_label``, outliers) for a pixel of no known class.
    Returns:
        scalar; "nll" gives 0 (graph-connected) when no pixel has a known label.
    Raises:
        ValueError: an unknown ``kind`` or ``dice``.
    """
    _check("MODEL.MCA.KNOWN_LOSS", kind, ("dice_bce", "nll"))
    _check("MODEL.MCA.DICE", dice, ("official", "standard"))
    valid = (targets >= 0) & (targets < num_known) & (targets != ignore_label)
    if kind == "nll":
        if not valid.any():
            return channels.sum() * 0.0
        probs = channels.permute(0, 2, 3, 1)[valid][:, :num_known]
        picked = probs.gather(1, targets[valid][:, None])[:, 0]
        return -torch.log(picked.clamp(min=1e-7)).mean()
    if num_known == 0:
        return channels.sum() * 0.0
    known = channels[:, :num_known]
    onehot = torch.zeros_like(known)
    onehot.scatter_(1, torch.where(valid, targets, 0)[:, None], valid[:, None].to(known.dtype))
    per_class = []
    for i in range(num_known):
        c, y = known[:, i], onehot[:, i]
        if dice == "official":
            dice_loss = (1 - dice_per_image(c, y)).mean()
        else:
            dice_loss = 1 - dice_coefficient(c, y)
        per_class.append(dice_loss + F.binary_cross_entropy(c, y))
    return torch.stack(per_class).mean()
