"""Supervised contrastive loss (Khosla et al. 2020) on sampled pixel embeddings (VCA's auxiliary)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["supcon_loss"]


def supcon_loss(embeddings: Tensor, labels: Tensor, tau: float = 0.07) -> Tensor:
    """SupCon ("all" mode): for anchor i with positives P(i) (same label, j != i),
    -1/|P(i)| sum_p log( exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau) ), averaged over
    anchors with at least one positive.

    Args:
        embeddings: M x D, L2-normalised.
        labels: M ints.
    Returns:
        scalar; 0 (graph-connected) when no anchor has a positive.
    """
    m = embeddings.shape[0]
    if m < 2:
        return embeddings.sum() * 0.0
    logits = embeddings @ embeddings.t() / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(m, dtype=torch.bool, device=embeddings.device)
    positives = (labels[:, None] == labels[None, :]) & not_self
    log_denominator = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    num_pos = positives.sum(dim=1)
    valid = num_pos > 0
    if not valid.any():
        return embeddings.sum() * 0.0
    return (-(log_prob * positives).sum(dim=1)[valid] / num_pos[valid]).mean()
