"""Anomaly scores exactly as the official PEBAL, RPL and DenseHybrid test code computes them.

Higher = more anomalous. Each takes full-resolution logits B x C x H x W and returns B x H x W.

- PEBAL (``code/model/wide_network.py::DeepWV3Plus.compute_anomaly_score``) and RPL
  (``rpl_corocl.code/valid.py::compute_anomaly_score``, mode ``energy``): the free energy
  ``-logsumexp`` of the first 19 logits, smoothed by torchvision's ``GaussianBlur(7, sigma=1)``
  (reflect padding). They reuse :func:`rba_plugin.modeling.ood.scores.energy_score` and
  :func:`~rba_plugin.modeling.ood.scores.gaussian_smooth`, which are bit-identical to the official
  calls. The official functions ``squeeze()`` the batch, i.e. assume one image; these run per image.
- DenseHybrid (``evaluations/evaluations.py::THKLOODEvaluation.compute_ood_probs``):
  ``-logsumexp(logits, 1) + log(softmax(logits_ood, 1)[:, 1])`` with no epsilon. The project's
  :func:`~rba_plugin.modeling.ood.scores.densehybrid_score` computes the same quantity with
  ``log_softmax`` (more accurate, finite where the softmax underflows to 0); it agrees to float
  rounding on ordinary inputs but is not bit-identical, so the official form is kept here.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..ood.scores import energy_score, gaussian_smooth

__all__ = ["densehybrid_official_score", "energy_official_score", "NUM_INLIER_CLASSES"]

# PEBAL's released model has a 20th (abstention) output; both scores use the 19 Cityscapes classes.
NUM_INLIER_CLASSES = 19


def energy_official_score(logits: torch.Tensor, num_classes: int = NUM_INLIER_CLASSES, smooth: bool = True) -> torch.Tensor:
    """PEBAL / RPL score: GaussianBlur(7, 1)(-logsumexp(logits[:, :num_classes], 1)).

    Args:
        logits: B x C x H x W upsampled logits (PEBAL: all 20 outputs; RPL: the residual-path
            logits ``out2``); only the first ``num_classes`` channels are used.
        smooth: apply the 7x7, sigma 1 Gaussian blur (False gives the raw energy).

    Returns:
        B x H x W.

    Raises:
        ValueError: if logits is not 4-D or has fewer than ``num_classes`` channels.
    """
    if logits.dim() != 4 or logits.shape[1] < num_classes:
        raise ValueError(f"energy_official_score: expected B x >={num_classes} x H x W logits, got {tuple(logits.shape)}")
    score = energy_score(logits[:, :num_classes])
    return gaussian_smooth(score, 7, 1.0) if smooth else score


def densehybrid_official_score(logits: torch.Tensor, logits_ood: torch.Tensor) -> torch.Tensor:
    """DenseHybrid score ``-logsumexp(logits, 1) + log(softmax(logits_ood, 1)[:, 1])``.

    Args:
        logits: B x C x H x W closed-set logits.
        logits_ood: B x 2 x H x W outputs of ``logits_ood``; channel 1 is "outlier".

    Returns:
        B x H x W; ``-inf`` where the outlier probability underflows to 0, as the official code.
    """
    return -torch.logsumexp(logits, dim=1) + F.softmax(logits_ood, dim=1)[:, 1].log()
