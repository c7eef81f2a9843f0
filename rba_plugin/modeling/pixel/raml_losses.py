"""RAML's losses: circle loss on region embeddings, and the MCA losses (paper Eqs. 6-9)."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["circle_loss", "dice_coefficient", "mca_inter_loss", "mca_split_loss", "mca_reconstruction_loss", "mca_known_loss"]


def circle_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.25, gamma: float = 8.0) -> Tensor:
    """Circle loss (Sun et al. 2020) over all pairs i < j of a batch of embeddings.

    s = cosine similarity; positives (same label): alpha_p = [1 + m - s_p]_+, delta_p = 1 - m;
    negatives: alpha_n = [s_n + m]_+, delta_n = m (alphas not differentiated);
    L = softplus( logsumexp_n(gamma alpha_n (s_n - delta_n)) + logsumexp_p(-gamma alpha_p (s_p - delta_p)) ).

    Args:
        embeddings: M x D (normalised here).
        labels: M ints.
    Returns:
        scalar; 0 (graph-connected) unless there is at least one positive and one negative pair.
    """
    z = F.normalize(embeddings, dim=1)
    sim = z @ z.t()
    upper = torch.triu(torch.ones_like(sim, dtype=torch.bool), diagonal=1)
    same = labels[:, None] == labels[None, :]
    s_p = sim[upper & same]
    s_n = sim[upper & ~same]
    if s_p.numel() == 0 or s_n.numel() == 0:
        return embeddings.sum() * 0.0
    alpha_p = (1 + margin - s_p.detach()).clamp(min=0)
    alpha_n = (s_n.detach() + margin).clamp(min=0)
    logit_p = -gamma * alpha_p * (s_p - (1 - margin))
    logit_n = gamma * alpha_n * (s_n - margin)
    return F.softplus(torch.logsumexp(logit_n, dim=0) + torch.logsumexp(logit_p, dim=0))


def dice_coefficient(a: Tensor, b: Tensor, smooth: float = 1.0) -> Tensor:
    """(2 sum(a b) + s) / (sum(a^2) + sum(b^2) + s) over all elements (the official p = 2 form)."""
    return (2 * (a * b).sum() + smooth) / (a.pow(2).sum() + b.pow(2).sum() + smooth)


def mca_inter_loss(channels: Tensor, reduction: str = "sum", smooth: float = 1.0) -> Tensor:
    """Eq. 7: sum over channel pairs i < j of (1 - dice_loss(C_i, C_j)) = Dice overlap.

    Args:
        channels: N x (N_cls + K) x H x W activations.
        reduction: "sum" over pairs (paper) or "mean" (official code's average).
    """
    k = channels.shape[1]
    if k < 2:
        return channels.sum() * 0.0
    # All pairwise Dice overlaps from one Gram matrix: sum(C_i C_j) = G_ij, sum(C_i^2) = G_ii.
    flat = channels.transpose(0, 1).reshape(k, -1)
    gram = flat @ flat.t()
    diag = gram.diagonal()
    dice = (2 * gram + smooth) / (diag[:, None] + diag[None, :] + smooth)
    i, j = torch.triu_indices(k, k, offset=1, device=channels.device)
    total = dice[i, j]
    if reduction == "sum":
        return total.sum()
    if reduction == "mean":
        return total.mean()
    raise ValueError(f"MODEL.MCA.INTER_REDUCTION must be 'sum' or 'mean', got {reduction!r}")


def mca_split_loss(meta: Tensor, eta: float = 0.02, mass: str = "sum", bound: str = "min", eps: float = 1e-6) -> Tensor:
    """Eq. 8: sum over meta channels of -log(bound(x_i, 1)), averaged over images.

    Args:
        meta: N x K x H x W meta-channel activations.
        mass: "sum": x_i = eta * sum_pixels C_i (paper); "mean": x_i = mean_pixels C_i / eta (code).
        bound: "min": -log(min(x, 1)) (zero once a channel holds enough mass; the code's form),
            "max": the literal -log(max(x, 1)).
        eps: floor inside the log, so a dead channel gives a finite loss.
    """
    if mass == "sum":
        x = eta * meta.sum(dim=(2, 3))
    elif mass == "mean":
        x = meta.mean(dim=(2, 3)) / eta
    else:
        raise ValueError(f"MODEL.MCA.SPLIT_MASS must be 'sum' or 'mean', got {mass!r}")
    if bound == "min":
        x = x.clamp(max=1.0)
    elif bound == "max":
        x = x.clamp(min=1.0)
    else:
        raise ValueError(f"MODEL.MCA.SPLIT_BOUND must be 'min' or 'max', got {bound!r}")
    return -torch.log(x.clamp(min=eps)).sum(dim=1).mean()


def mca_reconstruction_loss(channels: Tensor, image: Tensor) -> Tensor:
    """Eq. 9: ||X (.) (sum_i C_i - 1)||^2, as a mean over pixels and colour channels (code's MSE).

    With softmax activations sum_i C_i = 1 and the term vanishes; it acts with sigmoid ones.

    Args:
        channels: N x (N_cls + K) x H x W; image: N x 3 x H x W (normalised).
    """
    total = channels.sum(dim=1, keepdim=True)
    return (image * (total - 1.0)).pow(2).mean()


def mca_known_loss(channels: Tensor, targets: Tensor, num_known: int, ignore_label: int, kind: str = "nll") -> Tensor:
    """Supervision of the first ``num_known`` channels by the known-class labels.

    kind "nll": mean over labelled pixels of -log C_y (softmax outputs are class probabilities);
    kind "dice_bce": mean over known channels of Dice loss + BCE against the one-hot labels
    (official code), over labelled pixels.
    """
    valid = (targets != ignore_label) & (targets < num_known)
    if not valid.any():
        return channels.sum() * 0.0
    if kind == "nll":
        probs = channels.permute(0, 2, 3, 1)[valid][:, :num_known]
        picked = probs.gather(1, targets[valid][:, None])[:, 0]
        return -torch.log(picked.clamp(min=1e-7)).mean()
    if kind == "dice_bce":
        probs = channels.permute(0, 2, 3, 1)[valid][:, :num_known].clamp(1e-7, 1 - 1e-7)
        onehot = F.one_hot(targets[valid], num_known).to(probs)
        per_class = [
            1 - dice_coefficient(probs[:, i], onehot[:, i]) + F.binary_cross_entropy(probs[:, i], onehot[:, i])
            for i in range(num_known)
        ]
        return torch.stack(per_class).mean()
    raise ValueError(f"MODEL.MCA.KNOWN_LOSS must be 'nll' or 'dice_bce', got {kind!r}")
