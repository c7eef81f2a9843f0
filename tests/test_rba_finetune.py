"""RbA on Mask2Former: anomaly outputs, the outlier criterion, and fine-tuning that trains only
the class head and the mask MLP."""
import math
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Instances

from rba_plugin.config import get_cfg
from rba_plugin.engine import Trainer
from rba_plugin.modeling.criterion import build_set_criterion
from rba_plugin.modeling.loss_terms import PixelTargets, SquaredHingeOutlierLoss
from rba_plugin.modeling.loss_terms.outlier import outlier_loss_score_name
from rba_plugin.modeling.meta_arch.mask_former import rba_trainable_prefixes

from .conftest import REPO_ROOT
from .m2f_build import build_on

FINETUNE = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_rba_finetune.yaml"
TRAINABLE = ("sem_seg_head.predictor.class_embed.", "sem_seg_head.predictor.mask_embed.")


def small_cfg(path=FINETUNE, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64", *opts])
    return cfg


def batch(num_classes=19, size=64, seed=0):
    """Two images with three classes each and a square pasted outlier (254) in the first."""
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(2):
        sem_seg = torch.zeros(size, size, dtype=torch.long)
        sem_seg[: size // 2] = 10
        sem_seg[size // 2 :, : size // 2] = 13
        sem_seg[-4:, -4:] = 255
        if i == 0:
            sem_seg[20:36, 20:36] = 254
        classes = torch.tensor([0, 10, 13])
        instances = Instances((size, size))
        instances.gt_classes = classes
        instances.gt_masks = torch.stack([sem_seg == c for c in classes])
        image = torch.randint(0, 255, (3, size, size), generator=gen, dtype=torch.uint8)
        inputs.append({"image": image, "sem_seg": sem_seg, "instances": instances})
    return inputs


def test_inference_returns_every_configured_score():
    cfg = small_cfg()
    model = build_on(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}])[0]
    L = out["sem_seg"]
    assert set(out["ood_scores"]) == {"rba", "msp", "maxlogit", "energy", "entropy"}
    assert torch.equal(out["ood_score"], out["ood_scores"]["rba"])  # the first configured score
    assert torch.allclose(out["ood_scores"]["rba"], -torch.tanh(L).sum(0), atol=1e-6)
    assert torch.allclose(out["ood_scores"]["msp"], -F.softmax(L, 0).max(0).values, atol=1e-6)
    assert torch.allclose(out["ood_scores"]["maxlogit"], -L.max(0).values, atol=1e-6)
    assert torch.allclose(out["ood_scores"]["energy"], -torch.logsumexp(L, 0), atol=1e-5)


def test_unknown_score_name_fails_at_build():
    cfg = small_cfg(FINETUNE, "MODEL.OOD.SCORES", "['rba', 'rbaa']")
    with pytest.raises(ValueError, match="MODEL.OOD.SCORES: unknown anomaly score 'rbaa'"):
        build_on(cfg, "meta")


def test_rba_loss_target_names():
    assert outlier_loss_score_name("nls", "tanh") == "rba"
    assert outlier_loss_score_name("nls", "none") == "neg_logit_sum"
    assert outlier_loss_score_name("nls", "sigmoid") == "neg_sigmoid_sum"
    # RbA's code ignores SCORE_NORM for the other targets.
    assert outlier_loss_score_name("energy", "tanh") == "energy"
    assert outlier_loss_score_name("softmax_entropy", "sigmoid") == "entropy"
    assert outlier_loss_score_name("sum_entropy", "none") == "sum_entropy"
    with pytest.raises(ValueError, match="OUTLIER_LOSS_TARGET must be one of .* got 'none'"):
        outlier_loss_score_name("none", "none")


def test_outlier_loss_matches_hand_computation():
    # One image, Q = 2 queries, C = 2 classes, 2x2 mask logits, labels at 4x4.
    cfg = small_cfg()
    criterion = build_set_criterion(cfg, 2)
    assert criterion.losses == ["labels", "masks"]
    assert [type(t) for t in criterion.terms] == [SquaredHingeOutlierLoss]
    assert criterion.weight_dict["loss_outlier"] == 1.0 and criterion.weight_dict["loss_outlier_0"] == 1.0
    logits = torch.tensor([[[2.0, 0.0, 0.5], [0.0, 1.0, 0.0]]])
    masks = torch.tensor([[[[3.0, -3.0], [0.0, 1.0]], [[-1.0, 2.0], [0.5, -2.0]]]])
    labels = torch.tensor([[0, 0, 1, 1], [0, 254, 254, 1], [255, 254, 254, 1], [0, 0, 1, 1]])
    loss = criterion.term_losses({"pred_logits": logits, "pred_masks": masks}, PixelTargets(labels[None]), False)
    # By hand (RbA's criterion.py): L = sum_q softmax(logits_q)[:C] * sigmoid(mask_q); RbA =
    # -sum_k tanh(L_k) at 2x2, upsampled bilinearly with align_corners=True to 4x4; the inlier
    # hinge max(0, s - 0)^2 is 0 since s <= 0, so the loss is 0.5 x mean of (5 - RbA)^2 over
    # the outliers (halved on a batch with outlier pixels).
    assert (cfg.MODEL.MASK_FORMER.INLIER_UPPER_THRESHOLD, cfg.MODEL.MASK_FORMER.OUTLIER_LOWER_THRESHOLD) == (0.0, 5.0)
    def softmax(row):
        e = [math.exp(v) for v in row]
        return [x / sum(e) for x in e]

    probs = [softmax(r) for r in logits[0].tolist()]
    rba = np.zeros((2, 2))
    for y in range(2):
        for x in range(2):
            L = [sum(probs[q][k] / (1 + math.exp(-masks[0, q, y, x].item())) for q in range(2)) for k in range(2)]
            rba[y, x] = -sum(math.tanh(v) for v in L)
    # Bilinear 2x2 -> 4x4 with align_corners=True: target index i reads source i / 3, so the
    # centre 2x2 pixels (the outliers) sit at 1/3 and 2/3 between the source pixels.
    w = {1: (2 / 3, 1 / 3), 2: (1 / 3, 2 / 3)}
    values = []
    for (y, x) in [(1, 1), (1, 2), (2, 1), (2, 2)]:
        (a0, a1), (b0, b1) = w[y], w[x]
        v = a0 * (b0 * rba[0, 0] + b1 * rba[0, 1]) + a1 * (b0 * rba[1, 0] + b1 * rba[1, 1])
        values.append((5.0 - v) ** 2)
    assert loss["loss_outlier"].item() == pytest.approx(0.5 * sum(values) / 4, rel=1e-5)
    # No outlier pixel anywhere: zero, not NaN.
    clean = torch.where(labels == 254, torch.zeros_like(labels), labels)
    zero = criterion.term_losses({"pred_logits": logits, "pred_masks": masks}, PixelTargets(clean[None]), False)
    assert zero["loss_outlier"].item() == 0.0


def test_pebal_and_densehybrid_replace_the_mask_losses():
    pebal = build_set_criterion(small_cfg(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_pebal_finetune.yaml"), 19,
                                ["class_scores", "class_scores_and_no_object", "energy"])
    # RbA's PEBAL recipe: the energy hinge is RbA's outlier loss on the energy.
    assert pebal.losses == [] and [type(t).__name__ for t in pebal.terms] == [
        "SquaredHingeOutlierLoss", "MaskFormerPEBALAbstention", "MaskFormerEnergySmoothness", "MaskFormerEnergySparsity"]
    assert pebal.terms[0].score_name == "energy"
    assert "loss_pal_0" in pebal.weight_dict and "loss_ce" not in pebal.weight_dict
    dense = build_set_criterion(small_cfg(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_densehybrid_finetune.yaml"), 19,
                                ["class_scores", "outlier_logits"])
    assert dense.losses == [] and [type(t).__name__ for t in dense.terms] == ["MaskFormerDenseHybridLoss"]
    assert "loss_dh_outlier" in dense.weight_dict
    assert "loss_dh_outlier_0" not in dense.weight_dict  # one outlier head: final prediction only


def _finetune_steps(cfg, steps=3):
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)  # applies the FREEZE_* keys
    optimizer = Trainer.build_optimizer(cfg, model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(steps):
        losses = model(batch(seed=i))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return model, losses, changed


def test_finetuning_changes_only_class_head_and_mask_mlp():
    cfg = small_cfg()
    model, losses, changed = _finetune_steps(cfg)
    assert {"loss_outlier", "loss_outlier_0", "loss_ce", "loss_mask", "loss_dice"} <= set(losses)
    assert losses["loss_outlier"].item() > 0
    trainable = {k for k in model.state_dict() if k.startswith(TRAINABLE)}
    # Every other parameter and buffer (BatchNorm statistics included) is bit-identical.
    assert changed == trainable and trainable
    assert not model.backbone.training and not model.sem_seg_head.pixel_decoder.training


def test_densehybrid_finetuning_trains_its_head_too():
    cfg = small_cfg(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_densehybrid_finetune.yaml")
    model, losses, changed = _finetune_steps(cfg, steps=2)
    assert set(losses) == {"loss_dh_ce", "loss_dh_outlier", "loss_dh_density"}
    head = {k for k in changed if k.startswith("sem_seg_head.predictor.ood_pred.")}
    assert head and changed - head <= {k for k in model.state_dict() if k.startswith(TRAINABLE)}


DENSEHYBRID = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_densehybrid_finetune.yaml"


def test_densehybrid_recipe_matches_rbas_code():
    """The trainable set and the loss list of DenseHybrid inside Mask2Former are those of RbA's
    code (NazirNayal8/RbA @ cf263d5):

    * ``train_net.py`` lines 242-263 (``build_optimizer``): FREEZE_BACKBONE and
      FREEZE_PIXEL_DECODER freeze those modules; FREEZE_TRANSFORMER_DECODER_EXCEPT_MLP_AND_OOD_PRED
      freezes every parameter of ``sem_seg_head.predictor`` whose name holds none of
      ``class_embed``, ``mask_embed``, ``ood_pred`` (query features and embeddings, level
      embedding, decoder norm, attention and FFN layers stay frozen);
    * ``mask2former/maskformer_model.py`` lines 164-169: DENSE_HYBRID_LOSS sets
      ``losses = ["densehybrid"]``, replacing Mask2Former's labels and masks losses;
    * ``mask2former/modeling/criterion.py`` lines 612-618: the densehybrid loss is skipped on the
      auxiliary outputs, so with it alone nothing trains on them;
    * ``mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py`` line 366:
      the head ``ood_pred`` (BatchNorm, ReLU, 1x1 conv with bias) on the mask features.

    ``DENSE_HYBRID_KEEP_MASK_LOSSES`` (ours, off by default) keeps the Mask2Former losses beside it.
    """
    cfg = small_cfg(DENSEHYBRID)
    model = Trainer.build_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    predictor = "sem_seg_head.predictor."
    official = {n for n, _ in model.named_parameters() if n.startswith(predictor)
                and any(k in n[len(predictor):] for k in ("class_embed", "mask_embed", "ood_pred"))}
    assert trainable == official
    assert {n.split(".")[2] for n in trainable} == {"class_embed", "mask_embed", "ood_pred"}
    assert {n for n in trainable if "ood_pred" in n} == {
        f"{predictor}ood_pred.{m}" for m in ("norm.weight", "norm.bias", "conv.weight", "conv.bias")}
    criterion = model.criterion
    assert criterion.losses == [] and [type(t).__name__ for t in criterion.terms] == ["MaskFormerDenseHybridLoss"]
    assert set(criterion.weight_dict) == {"loss_dh_ce", "loss_dh_outlier", "loss_dh_density"}  # no aux term

    kept = build_set_criterion(small_cfg(DENSEHYBRID, "MODEL.MASK_FORMER.DENSE_HYBRID_KEEP_MASK_LOSSES", "True"),
                               19, ["class_scores", "outlier_logits"])
    assert kept.losses == ["labels", "masks"]
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dh_ce"} <= set(kept.weight_dict)
    assert "loss_dh_ce_0" not in kept.weight_dict


def test_release_config_trains_0_21_percent_of_swin_b(reference_dir):
    cfg = get_cfg()
    cfg.merge_from_file(str(reference_dir / "rba_release_configs/swin_b_1dl_rba_ood_coco.yaml"))
    model = build_on(cfg, "meta")
    prefixes = rba_trainable_prefixes(cfg, has_outlier_head=False)
    assert prefixes == ["sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.mask_embed"]
    from rba_plugin.modeling.freeze import freeze_except, trainable_parameter_count

    freeze_except(model, prefixes)
    trainable, total = trainable_parameter_count(model)
    # Linear 256 -> 20 plus a 3-layer 256-wide MLP.
    assert trainable == (256 * 20 + 20) + 3 * (256 * 256 + 256)
    assert 100 * trainable / total == pytest.approx(0.21, abs=0.005)
