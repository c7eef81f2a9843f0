"""Each loss term of the set criterion against a hand computation on a tiny case."""
import math

import pytest
import torch
from detectron2.projects.point_rend.point_features import point_sample

from rba_plugin.modeling.criterion import SetCriterion


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


class FixedMatcher:
    """Returns given indices (so the losses are tested apart from the matching)."""

    def __init__(self, indices):
        self.indices = indices

    def __call__(self, outputs, targets):
        return self.indices


def _criterion(indices, eos=0.1, num_classes=2, points=30):
    return SetCriterion(
        num_classes,
        matcher=FixedMatcher(indices),
        weight_dict={},
        eos_coef=eos,
        losses=["labels", "masks"],
        num_points=points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def test_classification_loss_by_hand():
    # 3 queries, classes {0, 1} + no-object (2); query 1 is matched to a target of class 1.
    logits = torch.tensor([[[1.0, -0.5, 0.3], [0.2, 2.0, -1.0], [-0.3, 0.1, 0.9]]])
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 4, 4)}]
    loss = _criterion(indices).loss_labels({"pred_logits": logits}, targets, indices, 1.0)["loss_ce"]
    wanted = [2, 1, 2]  # unmatched queries: no object
    weights = [0.1, 1.0, 0.1]  # eos_coef on the no-object class
    total = norm = 0.0
    for row, cls, w in zip(logits[0].tolist(), wanted, weights):
        log_softmax = row[cls] - math.log(sum(math.exp(v) for v in row))
        total += -w * log_softmax
        norm += w
    assert loss.item() == pytest.approx(total / norm, rel=1e-6)


def test_mask_losses_by_hand():
    gen = torch.Generator().manual_seed(0)
    # 2 images; image 0: queries 2 and 0 matched to targets 0 and 1; image 1: query 1 to target 0.
    pred_masks = torch.randn(2, 3, 4, 6, generator=gen) * 2
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": (torch.rand(2, 16, 24, generator=gen) > 0.5).float()},
        {"labels": torch.tensor([1]), "masks": (torch.rand(1, 16, 24, generator=gen) > 0.5).float()},
    ]
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 1])), (torch.tensor([1]), torch.tensor([0]))]
    criterion = _criterion(indices, points=30)
    coords = torch.rand(3, 30, 2, generator=gen)
    criterion.sample_points = lambda logits: coords  # fixed points, read back below
    num_masks = 3.0
    losses = criterion.loss_masks({"pred_masks": pred_masks}, targets, indices, num_masks)
    pairs = [(pred_masks[0, 2], targets[0]["masks"][0]), (pred_masks[0, 0], targets[0]["masks"][1]),
             (pred_masks[1, 1], targets[1]["masks"][0])]
    bce_sum = dice_sum = 0.0
    for k, (pred, tgt) in enumerate(pairs):
        p = point_sample(pred[None, None], coords[k : k + 1], align_corners=False).flatten().tolist()
        t = point_sample(tgt[None, None], coords[k : k + 1], align_corners=False).flatten().tolist()
        s = [_sigmoid(v) for v in p]
        bce_sum += sum(-(ti * math.log(si) + (1 - ti) * math.log(1 - si)) for si, ti in zip(s, t)) / len(s)
        dice_sum += 1 - (2 * sum(si * ti for si, ti in zip(s, t)) + 1) / (sum(s) + sum(t) + 1)
    assert losses["loss_mask"].item() == pytest.approx(bce_sum / num_masks, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice_sum / num_masks, rel=1e-5)


def test_uncertain_points_concentrate_on_the_mask_boundary():
    # Logits grow linearly away from the vertical line x = 0.5, so uncertainty (-|logit|) is
    # highest there. 75 % of the points are the most uncertain quarter of 3x as many uniform
    # candidates (|x - 0.5| < ~1/8), the other 25 % uniform: ~81 % fall in that band, against
    # 25 % for uniform sampling.
    logits = (torch.linspace(-20, 20, 64)[None, :].expand(64, 64))[None, None].contiguous()
    criterion = _criterion([], points=400)
    torch.manual_seed(0)
    points = criterion.sample_points(logits)[0]
    assert points.shape == (400, 2)
    in_band = ((points[:, 0] - 0.5).abs() < 0.13).float().mean().item()
    assert in_band > 0.65


def test_forward_deep_supervision_and_num_masks():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 3, generator=gen)
    masks = torch.randn(1, 3, 4, 4, generator=gen)
    indices = [(torch.tensor([0, 2]), torch.tensor([1, 0]))]
    targets = [{"labels": torch.tensor([0, 1]), "masks": (torch.rand(2, 8, 8, generator=gen) > 0.5).float()}]
    criterion = _criterion(indices)
    coords = torch.rand(2, 30, 2, generator=gen)
    criterion.sample_points = lambda m: coords
    main = {"pred_logits": logits, "pred_masks": masks}
    outputs = dict(main, aux_outputs=[dict(main), {"pred_logits": logits * 2, "pred_masks": masks}])
    losses = criterion(outputs, targets)
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    # The first auxiliary prediction equals the final one, so its losses do too.
    for name in ("ce", "mask", "dice"):
        assert losses[f"loss_{name}_0"].item() == pytest.approx(losses[f"loss_{name}"].item())
    assert losses["loss_ce_1"].item() != pytest.approx(losses["loss_ce"].item())
    # Normalised by the 2 target masks.
    direct = criterion.loss_masks(main, targets, indices, 2.0)
    assert losses["loss_dice"].item() == pytest.approx(direct["loss_dice"].item())


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown loss 'outlier'"):
        SetCriterion(2, FixedMatcher([]), {}, 0.1, ["labels", "outlier"], 10, 3.0, 0.75)
