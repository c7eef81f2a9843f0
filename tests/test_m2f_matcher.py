"""The Hungarian matcher finds the same assignment as brute force over all assignments."""
import itertools
import math

import pytest
import torch
from detectron2.projects.point_rend.point_features import point_sample

from rba_plugin.modeling.matcher import HungarianMatcher

WEIGHTS = dict(cost_class=2.0, cost_mask=5.0, cost_dice=5.0)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _pair_cost(logits, mask_values, label, target_values):
    """Cost of one (query, target) pair from plain Python numbers."""
    probs = torch.softmax(logits, -1)
    cost_class = -float(probs[label])
    n = len(mask_values)
    bce = 0.0
    inter = pred_sum = 0.0
    for m, t in zip(mask_values, target_values):
        p = _sigmoid(m)
        bce += -(t * math.log(p) + (1 - t) * math.log(1 - p))
        inter += p * t
        pred_sum += p
    dice = 1 - (2 * inter + 1) / (pred_sum + sum(target_values) + 1)
    return WEIGHTS["cost_class"] * cost_class + WEIGHTS["cost_mask"] * bce / n + WEIGHTS["cost_dice"] * dice


def _brute_force(cost):
    """Minimum total cost over all injective maps targets -> queries, and one argmin."""
    q, t = len(cost), len(cost[0])
    best, best_rows = None, None
    for rows in itertools.permutations(range(q), t):
        total = sum(cost[r][c] for c, r in enumerate(rows))
        if best is None or total < best - 1e-12:
            best, best_rows = total, rows
    return best, best_rows


@pytest.mark.parametrize("seed", range(6))
def test_cost_matrix_matches_pairwise_hand_computation(seed):
    gen = torch.Generator().manual_seed(seed)
    q, t, c = 5, 3, 4
    logits = torch.randn(q, c + 1, generator=gen)
    masks = torch.randn(q, 6, 8, generator=gen) * 3
    labels = torch.randint(0, c, (t,), generator=gen)
    targets = (torch.rand(t, 24, 32, generator=gen) > 0.5).float()
    coords = torch.rand(50, 2, generator=gen)
    matcher = HungarianMatcher(num_points=50, **WEIGHTS)
    cost = matcher.cost_matrix(logits, masks, labels, targets, coords)
    # Point values read independently with detectron2's point_sample, one mask at a time.
    mask_points = [point_sample(m[None, None], coords[None], align_corners=False).flatten().tolist() for m in masks]
    target_points = [point_sample(tm[None, None], coords[None], align_corners=False).flatten().tolist() for tm in targets]
    for i in range(q):
        for j in range(t):
            expected = _pair_cost(logits[i], mask_points[i], int(labels[j]), target_points[j])
            assert cost[i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("seed", range(10))
def test_assignment_is_brute_force_optimum(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    q, t, c, points = 6, 4, 5, 40
    logits = torch.randn(2, q, c + 1, generator=gen) * 2
    pred_masks = torch.randn(2, q, 5, 7, generator=gen) * 3
    targets = []
    for _ in range(2):
        labels = torch.randperm(c, generator=gen)[:t]
        targets.append({"labels": labels, "masks": (torch.rand(t, 20, 28, generator=gen) > 0.5).float()})
    coords = [torch.rand(points, 2, generator=gen) for _ in range(2)]
    matcher = HungarianMatcher(num_points=points, **WEIGHTS)
    drawn = iter(coords)
    matcher.sample_points = lambda device: next(drawn)  # the points the brute force also uses
    indices = matcher({"pred_logits": logits, "pred_masks": pred_masks}, targets)
    for b, (rows, cols) in enumerate(indices):
        mask_points = [point_sample(m[None, None], coords[b][None], align_corners=False).flatten().tolist() for m in pred_masks[b]]
        target_points = [
            point_sample(tm[None, None], coords[b][None], align_corners=False).flatten().tolist() for tm in targets[b]["masks"]
        ]
        cost = [
            [_pair_cost(logits[b, i], mask_points[i], int(targets[b]["labels"][j]), target_points[j]) for j in range(t)]
            for i in range(q)
        ]
        best, best_rows = _brute_force(cost)
        assert sorted(cols.tolist()) == list(range(t))  # every target matched once
        assert len(set(rows.tolist())) == t  # to distinct queries
        total = sum(cost[r][col] for r, col in zip(rows.tolist(), cols.tolist()))
        assert total == pytest.approx(best, abs=1e-4)
        assignment = dict(zip(cols.tolist(), rows.tolist()))
        assert tuple(assignment[j] for j in range(t)) == best_rows


def test_points_are_drawn_per_image_in_unit_square():
    matcher = HungarianMatcher(num_points=500, **WEIGHTS)
    a, b = matcher.sample_points("cpu"), matcher.sample_points("cpu")
    assert a.shape == (500, 2) and not torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_matcher_rejects_all_zero_costs():
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0, num_points=10)
