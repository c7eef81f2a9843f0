"""Per-pixel DenseHybrid: its training objective is the official one (written out here from
``experiments/semseg_negatives_joint_th.py``), it trains everything, and it scores with the official
formula (and ``densehybrid``) through the shared score contract, on either network."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from rba_plugin.modeling.loss_terms import PixelTargets, build_loss_terms

from .pixel_official import CASES
from .pixel_utils import state_snapshot, tiny_batch, tiny_pixel_cfg, train_steps


def _official_objective(logits, logits_ood, label, beta=0.03, num_classes=4):
    """``SemsegJointNegativesTHExperiment.train``, lines 113-129: outliers carry num_classes + 1,
    void num_classes (the code's ignore id); the loss sees logits at the labels' size."""
    label = label.clone()
    label[label == 255] = num_classes
    label[label == 254] = num_classes + 1
    label_ood = torch.zeros_like(label)
    label_ood[label == num_classes + 1] = 1
    label[label == num_classes + 1] = num_classes
    cls_out = F.log_softmax(logits, dim=1)
    ood_out = F.log_softmax(logits_ood, dim=1)
    lse = torch.logsumexp(logits, 1) * label_ood
    n, _, h, w = logits.shape
    reg = -logits.mean(1).mean().view(1, 1, 1).repeat(n, h, w) * label_ood  # get_batch_avg
    loss_ood = (lse + reg.detach()).sum() / label_ood[label_ood == 1].numel()
    loss_seg = F.nll_loss(cls_out, label, ignore_index=num_classes)
    loss_th = F.nll_loss(ood_out, label_ood)
    return loss_seg + beta * loss_ood + beta * 10 * loss_th


def test_the_loss_term_is_the_official_objective_value_and_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(2, 4, 9, 11) * 3).requires_grad_()
    logits_ood = (torch.randn(2, 2, 9, 11) * 2).requires_grad_()
    labels = torch.randint(0, 4, (2, 9, 11))
    labels[:, :2] = 255
    labels[0, 4:7, 3:8] = 254
    labels[1, 1:3, 1:3] = 254  # outliers inside the void rows too
    cfg = tiny_pixel_cfg("DenseHybrid")
    (term,) = build_loss_terms(cfg, ["DenseHybridLoss"])
    ours = term({"class_scores": logits, "outlier_logits": logits_ood}, PixelTargets(labels))
    total = sum(v * term.weights[k] for k, v in ours.items())
    reference = _official_objective(logits, logits_ood, labels)
    assert torch.allclose(total, reference, rtol=1e-6, atol=1e-7), (total, reference)
    ours_grad = torch.autograd.grad(total, (logits, logits_ood))
    ref_grad = torch.autograd.grad(reference, (logits, logits_ood))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(ours_grad, ref_grad))
    assert set(ours) == {"loss_dh_ce", "loss_dh_outlier", "loss_dh_density"}
    cfg.MODEL.DENSE_HYBRID.FORM = "papr"
    with pytest.raises(ValueError, match="MODEL.DENSE_HYBRID.FORM"):
        build_loss_terms(cfg, ["DenseHybridLoss"])


def test_trains_everything_and_scores_with_the_official_formula_on_detectron2_deeplab():
    torch.manual_seed(0)
    model = build_model(tiny_pixel_cfg("DenseHybrid"))
    assert model.trainable_prefixes is None
    assert model.scorer.names == ["densehybrid_official"] and model.scorer.smoothing_kernel == 0
    before = state_snapshot(model)
    train_steps(model, [tiny_batch(seed=1)], steps=2)
    after = model.state_dict()
    assert not torch.equal(before["backbone.stem.conv1.weight"], after["backbone.stem.conv1.weight"])
    assert not torch.equal(before["ood_method.logits_ood.conv.weight"], after["ood_method.logits_ood.conv.weight"])
    model.eval()
    with torch.no_grad():
        out = model(tiny_batch(n=1, seed=2))[0]
        images = model.preprocess_image(tiny_batch(n=1, seed=2))
        features = model.backbone(images.tensor)
        outputs = model.ood_method(model.sem_seg_head, features, model.sem_seg_head.decode(features), images)
    expected = -torch.logsumexp(outputs["class_scores"][0], 0) + F.softmax(outputs["outlier_logits"][0], 0)[1].log()
    assert torch.allclose(out["ood_score"], expected, atol=1e-6)
    assert torch.equal(out["sem_seg"], outputs["class_scores"][0])


def test_both_densehybrid_scores_through_the_score_contract():
    cfg = CASES["densehybrid"].cfg("MODEL.WIDE_RESNET.STRUCTURE", "[1, 1, 1, 1, 1, 1]",
                                   "MODEL.OOD.SCORES", "['densehybrid_official', 'densehybrid', 'maxlogit']")
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 24, 40)).float()
    with torch.no_grad():
        out = model([{"image": image}])[0]
    scores = out["ood_scores"]
    assert set(scores) == {"densehybrid_official", "densehybrid", "maxlogit"}
    # log(softmax) and log_softmax: the same quantity up to float rounding
    assert torch.allclose(scores["densehybrid_official"], scores["densehybrid"], atol=1e-4)
    assert torch.equal(out["ood_score"], scores["densehybrid_official"])
