"""Anomaly scores on class scores, one registry for both branches. Higher = more anomalous.

Every score takes class scores with the class dimension third from last, ``C x H x W`` or
``N x C x H x W``, and returns ``H x W`` or ``N x H x W``. On Mask2Former they are the semantic
scores L = sum_q softmax(class_q)[:C] * sigmoid(mask_q) (so 0 <= L_k <= Q); on per-pixel models
they are the logits.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from detectron2.utils.registry import Registry
from torchvision.transforms.functional import gaussian_blur

__all__ = [
    "OOD_SCORE_REGISTRY",
    "available_scores",
    "compute_ood_score",
    "densehybrid_score",
    "gaussian_smooth",
    "get_score_function",
]

class ScoreRegistry(Registry):
    """A Registry whose entries are registered under a short name of their own."""

    def register_as(self, name: str) -> Callable:
        def decorator(fn: Callable) -> Callable:
            self._do_register(name, fn)
            return fn

        return decorator


OOD_SCORE_REGISTRY = ScoreRegistry("OOD_SCORE")
OOD_SCORE_REGISTRY.__doc__ = """
Anomaly score functions ``fn(class_scores: (N x) C x H x W) -> (N x) H x W``, higher = more anomalous.
"""

_CLASS_DIM = -3


@OOD_SCORE_REGISTRY.register_as("rba")
def rba_score(class_scores: torch.Tensor) -> torch.Tensor:
    """Rejected by All: -sum_k tanh(L_k). Near 0 where no class claims the pixel."""
    return -torch.tanh(class_scores).sum(_CLASS_DIM)


@OOD_SCORE_REGISTRY.register_as("maxlogit")
def maxlogit_score(class_scores: torch.Tensor) -> torch.Tensor:
    """-max_k L_k."""
    return -class_scores.max(_CLASS_DIM).values


@OOD_SCORE_REGISTRY.register_as("msp")
def msp_score(class_scores: torch.Tensor) -> torch.Tensor:
    """-max_k softmax(L)_k (maximum softmax probability)."""
    return -F.softmax(class_scores, _CLASS_DIM).max(_CLASS_DIM).values


@OOD_SCORE_REGISTRY.register_as("entropy")
def entropy_score(class_scores: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(L) in nats."""
    log_p = F.log_softmax(class_scores, _CLASS_DIM)
    return -(log_p.exp() * log_p).sum(_CLASS_DIM)


@OOD_SCORE_REGISTRY.register_as("energy")
def energy_score(class_scores: torch.Tensor) -> torch.Tensor:
    """Free energy -logsumexp_k L_k."""
    return -torch.logsumexp(class_scores, _CLASS_DIM)


@OOD_SCORE_REGISTRY.register_as("neg_logit_sum")
def neg_logit_sum_score(class_scores: torch.Tensor) -> torch.Tensor:
    """-sum_k L_k (RbA without the tanh)."""
    return -class_scores.sum(_CLASS_DIM)


def densehybrid_score(class_scores: torch.Tensor, outlier_logits: torch.Tensor) -> torch.Tensor:
    """DenseHybrid's hybrid score: log p(outlier | x) - log p_hat(x).

    Args:
        class_scores: (N x) C x H x W.
        outlier_logits: (N x) 2 x H x W from the outlier head; channel 1 is "outlier".
    """
    log_p_outlier = F.log_softmax(outlier_logits, _CLASS_DIM).select(_CLASS_DIM, 1)
    return log_p_outlier - torch.logsumexp(class_scores, _CLASS_DIM)


def available_scores() -> List[str]:
    return sorted(OOD_SCORE_REGISTRY._obj_map.keys())


def get_score_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The registered score called ``name``; a ValueError lists the known names otherwise."""
    if name not in OOD_SCORE_REGISTRY:
        raise ValueError(f"unknown anomaly score '{name}'; known scores: {', '.join(available_scores())}")
    return OOD_SCORE_REGISTRY.get(name)


def gaussian_smooth(score: torch.Tensor, kernel_size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur of an ``(N x) H x W`` score map (reflect padding, as RPL/PEBAL/RbA smooth)."""
    if score.dim() not in (2, 3):
        raise ValueError(f"gaussian_smooth: expected H x W or N x H x W, got shape {tuple(score.shape)}")
    blurred = gaussian_blur(score.unsqueeze(-3), [kernel_size, kernel_size], [sigma, sigma])
    return blurred.squeeze(-3)


def compute_ood_score(
    name: str,
    class_scores: torch.Tensor,
    smoothing: bool = False,
    kernel_size: int = 7,
    sigma: float = 1.0,
) -> torch.Tensor:
    """Apply the registered score ``name`` and, optionally, Gaussian smoothing.

    Args:
        class_scores: (N x) C x H x W.
    Returns:
        (N x) H x W, higher = more anomalous.
    """
    if class_scores.dim() not in (3, 4):
        raise ValueError(
            f"compute_ood_score: class scores must be C x H x W or N x C x H x W, got {tuple(class_scores.shape)}"
        )
    score = get_score_function(name)(class_scores)
    if smoothing:
        score = gaussian_smooth(score, kernel_size, sigma)
    return score
