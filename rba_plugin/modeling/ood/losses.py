"""Outlier losses shared by the mask-classification and the per-pixel branch.

Conventions: ``labels`` is ``N x H x W`` int64 with inlier class ids in ``[0, C)``,
``ood_label`` (254) on outlier pixels and ``ignore_label`` (255) on void. Class scores are
``N x C x h x w``; when (h, w) is not the labels' size (Mask2Former predicts masks at 1/4), the
score map (or, for losses that need the class distribution, the class scores) is upsampled
bilinearly to the labels' resolution, as RbA's code upsamples its score.

Normalisation (the papers write sums over pixels): every pixel term here is a **mean over the
pixels of its own set** in the batch (outlier pixels, inlier pixels), so a loss does not scale with
object size, crop size or batch size, and a batch without outlier pixels contributes exactly zero
(no NaN). The official RbA code averages too, but multiplies by 0.5 only when a batch has
outliers; we do not, so the loss scale does not jump with outlier presence. Regularisers that the
papers define as sums (PEBAL's smoothness and sparsity) keep a ``reduction`` switch.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .scores import get_score_function

__all__ = [
    "masked_mean",
    "resize_to_labels",
    "squared_hinge_outlier_loss",
    "mse_outlier_loss",
    "l1_outlier_loss",
    "bce_outlier_loss",
    "kl_outlier_loss",
    "inlier_energy",
    "pal_loss",
    "energy_hinge_loss",
    "energy_smoothness_loss",
    "energy_sparsity_loss",
    "densehybrid_loss",
]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True; 0 (still attached to the graph) if none is."""
    count = mask.sum()
    if count == 0:
        return values.sum() * 0.0
    return values[mask].sum() / count


def resize_to_labels(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``N x H x W`` or ``N x C x H x W`` maps to the labels' ``H x W``."""
    size = labels.shape[-2:]
    if values.shape[-2:] == size:
        return values
    if values.dim() == 3:
        return F.interpolate(values[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return F.interpolate(values, size=size, mode="bilinear", align_corners=False)


def _score(class_scores: torch.Tensor, labels: torch.Tensor, score_name: str) -> torch.Tensor:
    """The registered score of the class scores, at the labels' resolution (N x H x W)."""
    return resize_to_labels(get_score_function(score_name)(class_scores), labels)


def _split(labels: torch.Tensor, num_classes: int, ood_label: int, ignore_label: int):
    outlier = labels == ood_label
    inlier = (labels != ignore_label) & ~outlier
    if inlier.any() and int(labels[inlier].max()) >= num_classes:
        bad = int(labels[inlier].max())
        raise ValueError(
            f"labels contain class id {bad}, but there are {num_classes} classes "
            f"(outlier label {ood_label}, ignore label {ignore_label})"
        )
    return inlier, outlier


# --- RbA and the alternatives of the RbA paper's Table 4 -------------------------------------


def squared_hinge_outlier_loss(
    class_scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    score_name: str = "rba",
    alpha: float = 5.0,
    inlier_threshold: Optional[float] = None,
    ood_label: int = 254,
    ignore_label: int = 255,
) -> torch.Tensor:
    """RbA's loss (paper Eq. 6): mean over outlier pixels of max(0, alpha - score)^2.

    With the RbA score (<= 0 by construction) and alpha > 0 the hinge is always active: it pulls
    every known class's tanh(L_k) towards 0 on outlier pixels. ``inlier_threshold`` adds the
    official code's optional inlier term, mean over inlier pixels of max(0, score - threshold)^2
    (vacuous for RbA when the threshold is >= 0, as in the released configs).
    """
    inlier, outlier = _split(labels, class_scores.shape[1], ood_label, ignore_label)
    score = _score(class_scores, labels, score_name)
    loss = masked_mean(F.relu(alpha - score) ** 2, outlier)
    if inlier_threshold is not None:
        loss = loss + masked_mean(F.relu(score - inlier_threshold) ** 2, inlier)
    return loss


def mse_outlier_loss(class_scores, labels, *, score_name="rba", alpha=5.0, ood_label=254,
                     ignore_label=255) -> torch.Tensor:
    """RbA paper Eq. 8: mean over outlier pixels of (score - alpha)^2."""
    _, outlier = _split(labels, class_scores.shape[1], ood_label, ignore_label)
    score = _score(class_scores, labels, score_name)
    return masked_mean((score - alpha) ** 2, outlier)


def l1_outlier_loss(class_scores, labels, *, score_name="rba", alpha=5.0, ood_label=254,
                    ignore_label=255) -> torch.Tensor:
    """RbA paper Eq. 9: mean over outlier pixels of |score - alpha|."""
    _, outlier = _split(labels, class_scores.shape[1], ood_label, ignore_label)
    score = _score(class_scores, labels, score_name)
    return masked_mean((score - alpha).abs(), outlier)


def bce_outlier_loss(class_scores, labels, *, score_name="rba", ood_label=254, ignore_label=255) -> torch.Tensor:
    """RbA paper Eq. 10: binary cross-entropy with the score as the outlier logit, over all
    non-void pixels (outlier = positive)."""
    inlier, outlier = _split(labels, class_scores.shape[1], ood_label, ignore_label)
    score = _score(class_scores, labels, score_name)
    bce = F.binary_cross_entropy_with_logits(score, outlier.to(score.dtype), reduction="none")
    return masked_mean(bce, inlier | outlier)


def kl_outlier_loss(class_scores, labels, *, ood_label=254, ignore_label=255) -> torch.Tensor:
    """RbA paper Eq. 11: 0.5 (KL to one-hot on inliers + KL to uniform on outliers).

    The class distribution is softmax over the class scores. The divergence is taken as
    KL(target || prediction), the direction that is finite for one-hot targets (on inliers it is
    the cross-entropy). log_softmax is applied once (the official code applies it twice).
    """
    num_classes = class_scores.shape[1]
    inlier, outlier = _split(labels, num_classes, ood_label, ignore_label)
    log_p = F.log_softmax(resize_to_labels(class_scores, labels), dim=1)
    target = torch.where(inlier, labels, torch.zeros_like(labels))
    kl_inlier = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    log_uniform = -torch.log(torch.tensor(float(num_classes), dtype=log_p.dtype, device=log_p.device))
    kl_outlier = (log_uniform - log_p).mean(1)  # sum_c (1/C) (log(1/C) - log p_c)
    return 0.5 * (masked_mean(kl_inlier, inlier) + masked_mean(kl_outlier, outlier))


# --- PEBAL -----------------------------------------------------------------------------------


def inlier_energy(logits: torch.Tensor, num_inlier_classes: int) -> torch.Tensor:
    """Free energy of the inlier classes, E = -logsumexp(logits[:, :K]) (PEBAL Eq. 4). N x H x W."""
    return -torch.logsumexp(logits[:, :num_inlier_classes], dim=1)


def pal_loss(
    probs: torch.Tensor,
    energy: torch.Tensor,
    labels: torch.Tensor,
    *,
    outlier_weight: float = 1.0,
    outlier_classes: str = "all",
    ood_label: int = 254,
    ignore_label: int = 255,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Pixel-wise anomaly abstention loss (PEBAL Eq. 3 with the penalty a = (-E)^2 of Eq. 5).

    Args:
        probs: N x (K+1) x H x W class probabilities whose last channel is the abstention class
            (softmax of a K+1-way head; on Mask2Former the semantic scores with the no-object
            column kept).
        energy: N x H x W inlier free energy E.
        labels: N x H x W.
        outlier_weight: weight of the outlier pixels' term (PEBAL's code: 0.1; paper: 1).
        outlier_classes: on an outlier pixel every label counts as its target (paper: "we set
            y = 1 for all the Y + 1 labels", ``"all"``); the official code uses the K inlier
            labels only (``"inlier"``).

    Returns:
        mean_in[-log(p_y + p_abs / a)] + outlier_weight * mean_out[mean_c -log(p_c + p_abs / a)].
    """
    num_inlier = probs.shape[1] - 1
    inlier, outlier = _split(labels, num_inlier, ood_label, ignore_label)
    penalty = energy**2
    abstain = probs[:, num_inlier] / penalty.clamp_min(eps)  # N x H x W
    target = torch.where(inlier, labels, torch.zeros_like(labels))
    p_target = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    loss_in = -torch.log((p_target + abstain).clamp_min(eps))
    if outlier_classes == "all":
        class_probs = probs
    elif outlier_classes == "inlier":
        class_probs = probs[:, :num_inlier]
    else:
        raise ValueError(f"pal_loss: outlier_classes must be 'all' or 'inlier', got '{outlier_classes}'")
    loss_out = -torch.log((class_probs + abstain.unsqueeze(1)).clamp_min(eps)).mean(1)
    return masked_mean(loss_in, inlier) + outlier_weight * masked_mean(loss_out, outlier)


def energy_hinge_loss(
    energy: torch.Tensor,
    labels: torch.Tensor,
    *,
    m_in: float,
    m_out: float,
    ood_label: int = 254,
    ignore_label: int = 255,
) -> torch.Tensor:
    """PEBAL Eqs. 6-7: mean_in max(0, E - m_in)^2 + mean_out max(0, m_out - E)^2."""
    outlier = labels == ood_label
    inlier = (labels != ignore_label) & ~outlier
    return masked_mean(F.relu(energy - m_in) ** 2, inlier) + masked_mean(F.relu(m_out - energy) ** 2, outlier)


def energy_smoothness_loss(energy: torch.Tensor, *, norm: str = "l1", reduction: str = "sum") -> torch.Tensor:
    """Smoothness of the energy map over vertical and horizontal neighbours (PEBAL Eq. 8, beta_1 term).

    ``norm="l1"``: sum |E(w) - E(N(w))| (the paper); ``norm="l2"``: 0.5 sum (E(w) - E(N(w)))^2 (the
    official code). ``reduction="mean"`` divides by the number of neighbour pairs.
    """
    dy = energy[..., 1:, :] - energy[..., :-1, :]
    dx = energy[..., :, 1:] - energy[..., :, :-1]
    if norm == "l1":
        terms = (dy.abs(), dx.abs())
    elif norm == "l2":
        terms = (0.5 * dy**2, 0.5 * dx**2)
    else:
        raise ValueError(f"energy_smoothness_loss: norm must be 'l1' or 'l2', got '{norm}'")
    total = terms[0].sum() + terms[1].sum()
    if reduction == "mean":
        return total / max(1, dy.numel() + dx.numel())
    if reduction != "sum":
        raise ValueError(f"energy_smoothness_loss: reduction must be 'sum' or 'mean', got '{reduction}'")
    return total


def energy_sparsity_loss(
    energy: torch.Tensor, mask: Optional[torch.Tensor] = None, *, norm: str = "l1", reduction: str = "sum"
) -> torch.Tensor:
    """Sparsity of the energy map (PEBAL Eq. 8, beta_2 term) over ``mask`` (all pixels if None).

    ``norm="l1"``: sum |E| (the paper, over all pixels); ``norm="l2"``: ||E||_2 (the official code,
    over outlier pixels only: pass the outlier mask).
    """
    values = energy if mask is None else energy[mask]
    if values.numel() == 0:
        return energy.sum() * 0.0
    if norm == "l1":
        total = values.abs().sum()
    elif norm == "l2":
        total = values.pow(2).sum().sqrt()
    else:
        raise ValueError(f"energy_sparsity_loss: norm must be 'l1' or 'l2', got '{norm}'")
    if reduction == "mean" and norm == "l1":
        return total / values.numel()
    return total


# --- DenseHybrid -----------------------------------------------------------------------------


def densehybrid_loss(
    class_scores: torch.Tensor,
    outlier_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta1: float = 0.3,
    beta2: float = 0.03,
    ood_label: int = 254,
    ignore_label: int = 255,
) -> Dict[str, torch.Tensor]:
    """DenseHybrid's objective as in the RbA paper's appendix C.3 (Eqs. 17-18), weighted terms.

    Args:
        class_scores: N x C x h x w, used as logits.
        outlier_logits: N x 2 x h' x w' from the outlier head (channel 1 = outlier).

    Returns:
        ``loss_dh_ce``: CE of the class scores on inlier pixels; ``loss_dh_outlier``: beta1 x CE of
        the outlier head on all non-void pixels; ``loss_dh_density``: beta2 x (mean over outlier
        pixels of logsumexp L + stop-gradient mean of L), zero without outlier pixels.
    """
    inlier, outlier = _split(labels, class_scores.shape[1], ood_label, ignore_label)
    class_scores = resize_to_labels(class_scores, labels)
    outlier_logits = resize_to_labels(outlier_logits, labels)
    target = torch.where(inlier, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(class_scores, target, reduction="none")
    head_ce = F.cross_entropy(outlier_logits, outlier.long(), reduction="none")
    if outlier.any():
        density = masked_mean(torch.logsumexp(class_scores, 1), outlier) + class_scores.mean().detach()
    else:
        density = class_scores.sum() * 0.0
    return {
        "loss_dh_ce": masked_mean(ce, inlier),
        "loss_dh_outlier": beta1 * masked_mean(head_ce, inlier | outlier),
        "loss_dh_density": beta2 * density,
    }
