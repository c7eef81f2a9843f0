"""Hungarian matching of predicted masks to ground-truth masks (Mask2Former's matcher).

The cost of assigning query i to target j is
``cost_class * (-p_i(c_j)) + cost_mask * BCE(m_i, t_j) + cost_dice * dice(m_i, t_j)``, with the
mask terms evaluated on ``num_points`` random points shared by all pairs of one image.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = ["HungarianMatcher", "batch_dice_cost", "batch_sigmoid_ce_cost"]


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss. inputs: N x P mask logits; targets: M x P in [0, 1]. Returns N x M."""
    inputs = inputs.sigmoid()
    numerator = 2 * torch.einsum("nc,mc->nm", inputs, targets)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy. inputs: N x P logits; targets: M x P. Returns N x M."""
    points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (torch.einsum("nc,mc->nm", pos, targets) + torch.einsum("nc,mc->nm", neg, 1 - targets)) / points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to queries minimising the total cost (scipy's
    ``linear_sum_assignment``); queries left unmatched are "no object"."""

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0, num_points: int = 0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        target_masks: torch.Tensor,
        point_coords: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            logits: Q x (C+1) class logits of one image.
            masks: Q x h x w mask logits.
            labels: T int64 target classes.
            target_masks: T x H x W binary target masks.
            point_coords: P x 2 points in [0, 1]^2 (x, y), shared by all masks.

        Returns:
            Q x T float32 cost matrix.
        """
        cost_class = -logits.softmax(-1)[:, labels]
        coords = point_coords[None]
        tgt = point_sample(target_masks[:, None].float(), coords.repeat(target_masks.shape[0], 1, 1), align_corners=False)
        out = point_sample(masks[:, None].float(), coords.repeat(masks.shape[0], 1, 1), align_corners=False)
        tgt, out = tgt.squeeze(1), out.squeeze(1)
        cost = (
            self.cost_mask * batch_sigmoid_ce_cost(out, tgt)
            + self.cost_class * cost_class
            + self.cost_dice * batch_dice_cost(out, tgt)
        )
        return cost.float()

    def sample_points(self, device) -> torch.Tensor:
        """num_points x 2 uniform random points in [0, 1]^2, drawn anew for every image."""
        return torch.rand(self.num_points, 2, device=device)

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: "pred_logits" B x Q x (C+1), "pred_masks" B x Q x h x w.
            targets: per image {"labels": T_b, "masks": T_b x H x W}.

        Returns:
            per image (query indices, target indices), int64, each of length min(Q, T_b).
        """
        indices = []
        for b, target in enumerate(targets):
            logits = outputs["pred_logits"][b]
            masks = outputs["pred_masks"][b]
            point_coords = self.sample_points(masks.device)
            cost = self.cost_matrix(logits, masks, target["labels"], target["masks"].to(masks), point_coords)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
