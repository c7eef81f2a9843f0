"""Anomaly score of a logit map through the shared score registry, with optional smoothing."""
from __future__ import annotations

from torch import Tensor

from ..ood.scores import compute_ood_score, gaussian_smooth

__all__ = ["score_map"]


def score_map(name: str, logits: Tensor, kernel_size: int = 0, sigma: float = 1.0) -> Tensor:
    """N x C x H x W logits -> N x H x W score (higher = more anomalous), smoothed if kernel_size > 0."""
    score = compute_ood_score(name, logits)
    if kernel_size > 0:
        score = gaussian_smooth(score, kernel_size=kernel_size, sigma=sigma)
    return score
