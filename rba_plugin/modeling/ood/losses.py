"""The math of the outlier losses, shared by the loss terms of both branches
(:mod:`rba_plugin.modeling.loss_terms`), in two forms each:

* **official**: what the official training code computes (RbA ``mask2former/modeling/criterion.py``,
  PEBAL ``code/losses.py`` + ``code/engine/trainer.py``, DenseHybrid ``semseg_negatives_joint_th.py``),
  value and gradient, with the batch-level means and the factors those codes use;
* **paper**: the equations of the papers, with sums over pixels written as means over the pixels of
  each set (the papers' sums are notation: their published weights only make sense for means).

Conventions: ``labels`` is ``N x H x W`` int64 with inlier class ids in ``[0, C)``, ``ood_label``
(254) on outlier pixels and ``ignore_label`` (255) on void; I, O and V name those three pixel sets
over the whole (per-process) batch. Maps at another resolution than the labels (Mask2Former
predicts at 1/4) are upsampled bilinearly with ``align_corners=True``, as RbA's code does
(``Up_T`` below). A mean over an empty set is 0 (still attached to the graph) where the official
code gives NaN (the only departure from the official values, noted at each function).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .scores import gaussian_smooth, get_score_function

__all__ = [
    "masked_mean",
    "resize_to_labels",
    "split_labels",
    "outlier_score_map",
    "sum_entropy",
    "TRAINING_TARGETS",
    "official_outlier_loss",
    "official_kl_outlier_loss",
    "official_bce_outlier_loss",
    "squared_hinge_outlier_loss",
    "mse_outlier_loss",
    "l1_outlier_loss",
    "bce_outlier_loss",
    "kl_outlier_loss",
    "inlier_energy",
    "gambler_loss",
    "official_reward",
    "pal_loss",
    "energy_hinge_loss",
    "official_energy_hinge_loss",
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


def resize_to_labels(values: torch.Tensor, labels: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Bilinearly resize ``N x H x W`` or ``N x C x H x W`` maps to the labels' ``H x W``
    (``align_corners=True`` as RbA's criterion; identity at equal sizes)."""
    size = labels.shape[-2:]
    if values.shape[-2:] == size:
        return values
    if values.dim() == 3:
        return F.interpolate(values[:, None], size=size, mode="bilinear", align_corners=align_corners)[:, 0]
    return F.interpolate(values, size=size, mode="bilinear", align_corners=align_corners)


def split_labels(labels: torch.Tensor, num_classes: int, ood_label: int = 254, ignore_label: int = 255):
    """(inlier, outlier) N x H x W bool masks.

    Raises:
        ValueError: an inlier label outside [0, num_classes).
    """
    outlier = labels == ood_label
    inlier = (labels != ignore_label) & ~outlier
    if inlier.any() and int(labels[inlier].max()) >= num_classes:
        bad = int(labels[inlier].max())
        raise ValueError(
            f"labels contain class id {bad}, but there are {num_classes} classes "
            f"(outlier label {ood_label}, ignore label {ignore_label})"
        )
    return inlier, outlier


def sum_entropy(class_scores: torch.Tensor) -> torch.Tensor:
    """Entropy of non-negative class scores normalised by their sum over dim 1,
    -sum_k (L_k / S) log(L_k / S) with S = sum_j L_j, in [0, log C] (RbA's OUTLIER_LOSS_TARGET
    "sum_entropy"). A training target only: it is meaningless for logits, which can be negative,
    so it is not an anomaly score of the registry."""
    p = class_scores / class_scores.sum(1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(1)


# Targets of RbA's outlier loss that are not inference scores (see sum_entropy).
TRAINING_TARGETS = {"sum_entropy": sum_entropy}


def outlier_score_map(class_scores: torch.Tensor, labels: torch.Tensor, score_name: str) -> torch.Tensor:
    """The score ``score_name`` (a registered score or a :data:`TRAINING_TARGETS` entry) of
    ``N x C x h x w`` class scores, computed at their resolution and then upsampled (``Up_T``) to
    the labels: N x H x W (RbA ``criterion.py`` ``outlier_loss``, score then interpolation)."""
    score = TRAINING_TARGETS.get(score_name) or get_score_function(score_name)
    return resize_to_labels(score(class_scores), labels)


# --- RbA and the alternatives of the RbA paper's Table 4 -------------------------------------


def _half_when_outliers(inlier_part: torch.Tensor, outlier_part: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
    # RbA's criterion: the inlier part alone on a batch without outlier pixels, else the mean of both.
    if not outlier.any():
        return inlier_part
    return 0.5 * (inlier_part + outlier_part)


def official_outlier_loss(
    kind: str,
    score: torch.Tensor,
    inlier: torch.Tensor,
    outlier: torch.Tensor,
    *,
    gamma_in: float,
    gamma_out: float,
) -> torch.Tensor:
    """RbA's ``squared_hinge``, ``mse`` and ``l1`` outlier losses as its code computes them
    (``criterion.py`` ``outlier_loss``), on the score map s at the labels' resolution.

    * squared_hinge: l_in = mean_I max(0, s - gamma_in)^2, l_out = mean_O max(0, gamma_out - s)^2;
    * mse: l_in = mean_I (s - gamma_in)^2, l_out = mean_O (s - gamma_out)^2;
    * l1: l_in = mean_I |s - gamma_in|, l_out = mean_O |s - gamma_out|;

    returning l_in on a batch without outlier pixels and 0.5 (l_in + l_out) otherwise. An empty I
    gives l_in = 0 (the official code: NaN).

    Args:
        score: N x H x W; inlier / outlier: N x H x W bool; gamma_in / gamma_out:
            INLIER_UPPER_THRESHOLD / OUTLIER_LOWER_THRESHOLD.
    """
    if kind == "squared_hinge":
        term_in, term_out = F.relu(score - gamma_in) ** 2, F.relu(gamma_out - score) ** 2
    elif kind == "mse":
        term_in, term_out = (score - gamma_in) ** 2, (score - gamma_out) ** 2
    elif kind == "l1":
        term_in, term_out = (score - gamma_in).abs(), (score - gamma_out).abs()
    else:
        raise ValueError(f"official_outlier_loss: kind must be squared_hinge, mse or l1, got {kind!r}")
    return _half_when_outliers(masked_mean(term_in, inlier), masked_mean(term_out, outlier), outlier)


def official_bce_outlier_loss(score: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
    """RbA's ``binary_cross_entropy``: 0.5 x the mean over **every** pixel (void included, as an
    inlier) of BCE-with-logits(s, 1[outlier]); the 0.5 is unconditional."""
    return 0.5 * F.binary_cross_entropy_with_logits(score, outlier.to(score.dtype))


def official_kl_outlier_loss(class_scores: torch.Tensor, inlier: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
    """RbA's ``kl`` loss as its code computes it; it reads no class label.

    R = the class scores (N x C x H x W at the labels' size); rows r(x) of non-inlier pixels are
    zeroed, each row is sorted in descending order and log-softmaxed (q), and
    KL_in = (1 / (N H W C)) sum_x sum_k t_k (log t_k - q_k(x)) with t = softmax(e_1) (a fixed soft
    peak on whichever class is currently largest); KL_out is the same on the rows of outlier pixels
    (others zeroed) against the uniform target 1/C. Returns KL_in without outlier pixels, else
    0.5 (KL_in + KL_out) (``F.kl_div`` with its default mean over all elements).
    """
    num_classes = class_scores.shape[1]
    rows = class_scores.permute(0, 2, 3, 1).reshape(-1, num_classes)
    peak = F.softmax(torch.eye(num_classes, dtype=rows.dtype, device=rows.device)[0], dim=0)
    q_in = F.log_softmax((rows * inlier.reshape(-1, 1)).sort(dim=1, descending=True).values, dim=1)
    kl_in = (peak * (peak.log() - q_in)).mean()  # F.kl_div(q_in, peak, reduction="mean")
    q_out = F.log_softmax(rows * outlier.reshape(-1, 1), dim=1)  # sorting: irrelevant for a uniform target
    uniform = 1.0 / num_classes
    kl_out = (uniform * (torch.log(torch.tensor(uniform, dtype=rows.dtype)) - q_out)).mean()
    return _half_when_outliers(kl_in, kl_out, outlier)


def squared_hinge_outlier_loss(score: torch.Tensor, outlier: torch.Tensor, *, alpha: float = 5.0) -> torch.Tensor:
    """RbA paper Eq. 6 (per-pixel mean): mean_O max(0, alpha - s)^2."""
    return masked_mean(F.relu(alpha - score) ** 2, outlier)


def mse_outlier_loss(score: torch.Tensor, outlier: torch.Tensor, *, alpha: float = 5.0) -> torch.Tensor:
    """RbA paper Eq. 8 (per-pixel mean): mean_O (s - alpha)^2."""
    return masked_mean((score - alpha) ** 2, outlier)


def l1_outlier_loss(score: torch.Tensor, outlier: torch.Tensor, *, alpha: float = 5.0) -> torch.Tensor:
    """RbA paper Eq. 9 (per-pixel mean): mean_O |s - alpha|."""
    return masked_mean((score - alpha).abs(), outlier)


def bce_outlier_loss(score: torch.Tensor, inlier: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
    """RbA paper Eq. 10 as its text reads it ("BCE with the RbA score as the positive logit"):
    mean over non-void pixels of BCE-with-logits(s, 1[outlier])."""
    bce = F.binary_cross_entropy_with_logits(score, outlier.to(score.dtype), reduction="none")
    return masked_mean(bce, inlier | outlier)


def kl_outlier_loss(class_scores: torch.Tensor, labels: torch.Tensor, inlier: torch.Tensor,
                    outlier: torch.Tensor) -> torch.Tensor:
    """RbA paper Eq. 11 in the direction that is finite for one-hot targets:
    0.5 (mean_I KL(onehot(y) || softmax(L)) + mean_O KL(U || softmax(L))), i.e. the cross-entropy
    on inliers and the divergence from uniform on outliers (class scores at the labels' size)."""
    num_classes = class_scores.shape[1]
    log_p = F.log_softmax(class_scores, dim=1)
    target = torch.where(inlier, labels, torch.zeros_like(labels))
    kl_inlier = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    log_uniform = -torch.log(torch.tensor(float(num_classes), dtype=log_p.dtype, device=log_p.device))
    kl_outlier = (log_uniform - log_p).mean(1)  # sum_c (1/C) (log(1/C) - log p_c)
    return 0.5 * (masked_mean(kl_inlier, inlier) + masked_mean(kl_outlier, outlier))


# --- PEBAL -----------------------------------------------------------------------------------


def inlier_energy(logits: torch.Tensor, num_inlier_classes: int) -> torch.Tensor:
    """Free energy of the inlier classes, E = -logsumexp(logits[:, :K]) (PEBAL Eq. 4). N x H x W."""
    return -torch.logsumexp(logits[:, :num_inlier_classes], dim=1)


def gambler_loss(
    probs: torch.Tensor,
    reward: torch.Tensor,
    labels: torch.Tensor,
    *,
    with_outliers: bool,
    outlier_weight: float = 0.1,
    ood_label: int = 254,
    ignore_label: int = 255,
) -> torch.Tensor:
    """PEBAL's abstention loss as its code computes it (``losses.py`` ``Gambler.forward``).

    With a = p_abs / reward:
    * ``with_outliers`` False: -mean over non-void pixels of log(p_y + a);
    * True: -[mean_I log(p_y + a) + outlier_weight x mean over O and the K inlier classes of
      log(max(p_c + a, 1e-7))].
    Empty sets give 0 (the official code: NaN).

    Args:
        probs: N x (K+1) x H x W probabilities, the last channel abstaining.
        reward: N x H x W, the penalty (officially the Gaussian-blurred squared free energy).
    """
    num_inlier = probs.shape[1] - 1
    inlier, outlier = split_labels(labels, num_inlier, ood_label, ignore_label)
    abstain = probs[:, num_inlier] / reward
    target = torch.where(inlier, labels, torch.zeros_like(labels))
    log_target = torch.log(probs.gather(1, target.unsqueeze(1)).squeeze(1) + abstain)
    if not with_outliers:
        return -masked_mean(log_target, inlier | outlier)
    log_classes = torch.log((probs[:, :num_inlier] + abstain.unsqueeze(1)).clamp_min(1e-7)).mean(1)
    return -(masked_mean(log_target, inlier) + outlier_weight * masked_mean(log_classes, outlier))


def official_reward(class_logits: torch.Tensor, num_inlier_classes: int) -> torch.Tensor:
    """PEBAL's penalty: GaussianBlur(7, sigma 1)(logsumexp_{c<K} z_c ^ 2), per image, with gradient."""
    return gaussian_smooth(torch.logsumexp(class_logits[:, :num_inlier_classes], dim=1) ** 2, 7, 1.0)


def pal_loss(
    probs: torch.Tensor,
    energy: torch.Tensor,
    labels: torch.Tensor,
    *,
    outlier_weight: float = 1.0,
    ood_label: int = 254,
    ignore_label: int = 255,
    eps: float = 1e-7,
) -> torch.Tensor:
    """PEBAL paper Eq. 3 with the penalty a = (-E)^2 of Eq. 5 (per-pixel means): on an outlier
    pixel every one of the K+1 labels is a target ("y = 1 for all the Y + 1 labels").

    Returns:
        mean_I[-log(p_y + p_abs / a)] + outlier_weight * mean_O[mean_c -log(p_c + p_abs / a)].
    """
    num_inlier = probs.shape[1] - 1
    inlier, outlier = split_labels(labels, num_inlier, ood_label, ignore_label)
    abstain = probs[:, num_inlier] / (energy**2).clamp_min(eps)  # N x H x W
    target = torch.where(inlier, labels, torch.zeros_like(labels))
    p_target = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    loss_in = -torch.log((p_target + abstain).clamp_min(eps))
    loss_out = -torch.log((probs + abstain.unsqueeze(1)).clamp_min(eps)).mean(1)
    return masked_mean(loss_in, inlier) + outlier_weight * masked_mean(loss_out, outlier)


def energy_hinge_loss(energy: torch.Tensor, inlier: torch.Tensor, outlier: torch.Tensor, *, m_in: float,
                      m_out: float) -> torch.Tensor:
    """PEBAL paper Eqs. 6-7 (per-pixel means): mean_I max(0, E - m_in)^2 + mean_O max(0, m_out - E)^2."""
    return masked_mean(F.relu(energy - m_in) ** 2, inlier) + masked_mean(F.relu(m_out - energy) ** 2, outlier)


def official_energy_hinge_loss(energy: torch.Tensor, inlier: torch.Tensor, outlier: torch.Tensor, *, m_in: float,
                               m_out: float) -> torch.Tensor:
    """PEBAL's code (``losses.py`` ``energy_loss``): mean_I max(0, E - m_in)^2 alone on a batch
    without outlier pixels, else 0.5 (that + mean_O max(0, m_out - E)^2)."""
    return _half_when_outliers(masked_mean(F.relu(energy - m_in) ** 2, inlier),
                               masked_mean(F.relu(m_out - energy) ** 2, outlier), outlier)


def energy_smoothness_loss(energy: torch.Tensor, *, norm: str = "l2", reduction: str = "sum") -> torch.Tensor:
    """Smoothness of an ``N x H x W`` map over vertical and horizontal neighbours.

    ``norm="l2"``: 0.5 sum (E(w) - E(N(w)))^2 (PEBAL's and RbA's code, ``smooth``); ``norm="l1"``:
    sum |E(w) - E(N(w))| (PEBAL paper Eq. 8, beta_1 term). ``reduction="mean"`` divides by the number
    of neighbour pairs.
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
    energy: torch.Tensor, mask: Optional[torch.Tensor] = None, *, norm: str = "l2", reduction: str = "sum"
) -> torch.Tensor:
    """Sparsity of an energy map over ``mask`` (every pixel if None).

    ``norm="l2"``: ||E[mask]||_2 (PEBAL's and RbA's code ``sparsity``, over the outlier pixels; 0
    when there are none); ``norm="l1"``: sum |E| (PEBAL paper Eq. 8, beta_2 term, over every
    pixel). ``reduction="mean"`` (L1 only) divides by the number of pixels.
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
    form: str = "official",
    ood_label: int = 254,
    ignore_label: int = 255,
) -> Dict[str, torch.Tensor]:
    """DenseHybrid's objective on Mask2Former, as three weighted outputs.

    With Lu, Du the class scores and the outlier head's logits at the labels' size (``Up_T``):
    * ``loss_dh_ce``: mean_I CE(Lu, y);
    * ``loss_dh_outlier``: beta1 x CE(Du, 1[outlier]) over every pixel, void counted as inlier
      (official, RbA ``criterion.py`` ``loss_densehybrid``; ``form="paper"``: over non-void pixels);
    * ``loss_dh_density``: beta2 x (mean_O logsumexp(Lu) - sg[mean Lu]) (official: minus the
      stop-gradient mean of every element of Lu; RbA paper Eq. 18 and ``form="paper"``: plus).
      0 without outlier pixels (the official code: NaN, which stops a Detectron2 run).

    Official weights: beta1 = 10 x beta2 (RbA's code), beta2 = DENSE_HYBRID_BETA.
    """
    if form not in ("official", "paper"):
        raise ValueError(f"MODEL.MASK_FORMER.DENSE_HYBRID_FORM must be 'official' or 'paper', got {form!r}")
    inlier, outlier = split_labels(labels, class_scores.shape[1], ood_label, ignore_label)
    class_scores = resize_to_labels(class_scores, labels)
    outlier_logits = resize_to_labels(outlier_logits, labels)
    target = torch.where(inlier, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(class_scores, target, reduction="none")
    head_ce = F.cross_entropy(outlier_logits, outlier.long(), reduction="none")
    head_pixels = torch.ones_like(outlier) if form == "official" else inlier | outlier
    if outlier.any():
        sign = -1.0 if form == "official" else 1.0
        density = masked_mean(torch.logsumexp(class_scores, 1), outlier) + sign * class_scores.mean().detach()
    else:
        density = class_scores.sum() * 0.0
    return {
        "loss_dh_ce": masked_mean(ce, inlier),
        "loss_dh_outlier": beta1 * masked_mean(head_ce, head_pixels),
        "loss_dh_density": beta2 * density,
    }
