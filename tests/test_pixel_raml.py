"""RAML: region separation on drawn images, region pooling, circle loss, MCA losses, candidate
selection / aggregation and theta_novel on hand-made cases, what each stage trains."""
import math

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

import rba_plugin.modeling.pixel  # noqa: F401
from rba_plugin.experiments.incremental import (
    IncrementalFewShot,
    assign_novel_classes,
    confusion_matrix,
    incremental_miou,
    novel_prototype,
    select_candidate_channels,
)
from rba_plugin.modeling.pixel.raml import masked_average
from rba_plugin.modeling.pixel.raml_losses import (
    circle_loss,
    dice_coefficient,
    mca_inter_loss,
    mca_known_loss,
    mca_reconstruction_loss,
    mca_split_loss,
)
from rba_plugin.modeling.pixel.regions import (
    aggregate_channels,
    fill_and_label,
    grey_image,
    sobel_magnitude,
    uncertainty_region_separation,
)
from tests.pixel_utils import state_snapshot, tiny_batch, tiny_pixel_cfg, train_steps

# --- region separation -------------------------------------------------------------------------


def test_sobel_of_a_step_edge():
    grey = torch.zeros(5, 6)
    grey[:, 3:] = 100.0
    mag = sobel_magnitude(grey)
    # Columns 2 and 3 straddle the step: Gx = (1 + 2 + 1) * 100 = 400; elsewhere flat.
    assert torch.allclose(mag[:, 2], torch.full((5,), 400.0))
    assert torch.allclose(mag[:, 3], torch.full((5,), 400.0))
    assert torch.count_nonzero(mag[:, [0, 1, 4, 5]]) == 0


def test_grey_image_weights_and_format():
    img = torch.zeros(3, 1, 1)
    img[0] = 100.0  # first channel
    assert grey_image(img, "RGB").item() == pytest.approx(29.9, abs=1e-4)
    assert grey_image(img, "BGR").item() == pytest.approx(11.4, abs=1e-4)
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        grey_image(img, "L")


def test_urs_on_a_drawn_image_gives_the_two_squares():
    # Two bright squares on a dark road; a confident closed-set model everywhere.
    grey = torch.zeros(40, 60)
    grey[5:15, 5:15] = 200.0
    grey[20:32, 30:50] = 200.0
    logits = torch.zeros(3, 40, 60)
    logits[0] = 10.0  # MSP ~ 1 -> uncertainty ~ 0: only Sobel makes edges
    regions = uncertainty_region_separation(grey, logits, sobel_thresh=50.0, msp_thresh=0.5)
    assert int(regions.max()) == 2
    expected = torch.zeros(40, 60, dtype=torch.long)
    # The Sobel response covers one pixel on each side of the square's border; hole filling
    # then fills the inside: region = square grown by one pixel.
    expected[4:16, 4:16] = 1
    expected[19:33, 29:51] = 2
    assert torch.equal(regions, expected)


def test_urs_uncertainty_draws_edges_too():
    grey = torch.zeros(20, 20)  # no Sobel edge at all
    logits = torch.zeros(2, 20, 20)
    logits[0] = 5.0
    # A ring of uncertain pixels (equal logits: MSP 0.5, uncertainty 0.5) around a square.
    ring = torch.zeros(20, 20, dtype=torch.bool)
    ring[4:12, 4:12] = True
    ring[5:11, 5:11] = False
    logits[0][ring] = 0.0
    regions = uncertainty_region_separation(grey, logits, sobel_thresh=50.0, msp_thresh=0.4)
    expected = torch.zeros(20, 20, dtype=torch.long)
    expected[4:12, 4:12] = 1
    assert torch.equal(regions, expected)
    # Above the threshold of 0.5 the ring is not an edge: no region.
    assert int(uncertainty_region_separation(grey, logits, 50.0, 0.6).max()) == 0


def test_fill_and_label_min_area():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[5:9, 5:9] = True  # 16 px
    labels = fill_and_label(mask, min_area=5)
    assert int(labels.max()) == 1 and int((labels == 1).sum()) == 16


def test_masked_average_with_area_weights():
    feats = torch.arange(8, dtype=torch.float32).view(2, 2, 2)  # D=2, 2x2 cells
    mask = torch.zeros(1, 4, 4)
    mask[0, 0:2, 0:2] = 1  # the whole top-left cell
    mask[0, 0, 2] = 1  # a quarter of the top-right cell
    got = masked_average(feats, mask)
    # weights: cell(0,0)=1, cell(0,1)=0.25 -> (1*f00 + 0.25*f01) / 1.25
    want = (feats[:, 0, 0] + 0.25 * feats[:, 0, 1]) / 1.25
    torch.testing.assert_close(got[0], want)


# --- losses ------------------------------------------------------------------------------------


def _circle_by_hand(z, labels, m, gamma):
    z = [v / np.linalg.norm(v) for v in z]
    sp, sn = [], []
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            s = float(np.dot(z[i], z[j]))
            (sp if labels[i] == labels[j] else sn).append(s)
    lp = [-gamma * max(0.0, 1 + m - s) * (s - (1 - m)) for s in sp]
    ln = [gamma * max(0.0, s + m) * (s - m) for s in sn]
    x = math.log(sum(math.exp(v) for v in ln)) + math.log(sum(math.exp(v) for v in lp))
    return math.log1p(math.exp(x))


def test_circle_loss_hand():
    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    got = circle_loss(z, labels, margin=0.25, gamma=8.0)
    assert got.item() == pytest.approx(_circle_by_hand(z.numpy(), labels.tolist(), 0.25, 8.0), rel=1e-5)


def test_circle_loss_needs_both_pair_kinds():
    z = torch.randn(3, 4, requires_grad=True)
    loss = circle_loss(z, torch.tensor([0, 1, 2]))  # no positive pair
    assert loss.item() == 0.0
    loss.backward()


def test_dice_and_inter_loss_hand():
    a = torch.tensor([1.0, 1.0, 0.0, 0.0])
    b = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert dice_coefficient(a, b, smooth=1.0).item() == pytest.approx((2 * 1 + 1) / (2 + 1 + 1))
    # Three channels over N=1, 1x4 pixels.
    c = torch.stack([a, b, 1 - a]).view(1, 3, 1, 4)
    d01 = (2 * 1 + 1) / (2 + 1 + 1)
    d02 = (0 + 1) / (2 + 2 + 1)
    d12 = (0 + 1) / (1 + 2 + 1)
    assert mca_inter_loss(c, "sum").item() == pytest.approx(d01 + d02 + d12, rel=1e-6)
    assert mca_inter_loss(c, "mean").item() == pytest.approx((d01 + d02 + d12) / 3, rel=1e-6)


def test_split_loss_hand_and_dead_channel():
    meta = torch.zeros(1, 2, 2, 5)
    meta[0, 0] = 0.5  # sum 5 -> eta*sum = 0.1 (eta 0.02)
    meta[0, 1] = 0.0  # dead channel: eps floor
    got = mca_split_loss(meta, eta=0.02, mass="sum", bound="min", eps=1e-6)
    assert got.item() == pytest.approx(-math.log(0.1) - math.log(1e-6), rel=1e-5)
    assert torch.isfinite(got)
    # Enough mass -> zero; "mean" mass = mean / eta = 0.5 / 0.02 = 25 -> clamped to 1 -> 0.
    assert mca_split_loss(meta[:, :1], eta=0.02, mass="mean").item() == pytest.approx(0.0, abs=1e-7)
    # Literal Eq. 8 (max): -log(max(0.1, 1)) = 0 for the first channel.
    assert mca_split_loss(meta[:, :1], eta=0.02, mass="sum", bound="max").item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="MODEL.MCA.SPLIT_BOUND"):
        mca_split_loss(meta, bound="median")


def test_reconstruction_loss_hand():
    channels = torch.full((1, 2, 1, 2), 0.75)  # sum 1.5 -> (sum - 1) = 0.5
    image = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).view(1, 3, 1, 2)
    want = sum((x * 0.5) ** 2 for x in range(1, 7)) / 6
    assert mca_reconstruction_loss(channels, image).item() == pytest.approx(want)
    # Softmax channels sum to one: the term vanishes.
    soft = torch.randn(1, 4, 3, 3).softmax(dim=1)
    assert mca_reconstruction_loss(soft, torch.randn(1, 3, 3, 3)).item() == pytest.approx(0.0, abs=1e-10)


def test_known_loss_nll_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]).t().reshape(1, 3, 1, 2)
    targets = torch.tensor([[[0, 255]]])
    assert mca_known_loss(probs, targets, num_known=2, ignore_label=255).item() == pytest.approx(-math.log(0.7))
    empty = mca_known_loss(probs, torch.full((1, 1, 2), 255), num_known=2, ignore_label=255)
    assert empty.item() == 0.0


# --- incremental few-shot ----------------------------------------------------------------------


def test_candidate_channel_selection_and_aggregation_hand_case():
    novel = torch.zeros(4, 5, dtype=torch.bool)
    novel[0:2, 0:5] = True  # 10 px
    meta = torch.zeros(3, 4, 5, dtype=torch.bool)
    meta[0, 0, 0:5] = True  # 5 px inside -> 0.5
    meta[1, 1, 0:1] = True  # 1 px inside -> 0.1, not > 0.1
    meta[1, 2:4, :] = True  # 10 px outside the mask
    meta[2, 1, 0:2] = True  # 2 px inside -> 0.2
    assert select_candidate_channels(meta, novel, kappa=0.1) == {0, 2}
    # Counting all of a channel's pixels (literal Eq. 13), channel 1 has 11 / 10 > 0.1.
    assert select_candidate_channels(meta, novel, kappa=0.1, inside_mask=False) == {0, 1, 2}
    union = aggregate_channels(meta[[0, 2]])
    assert torch.equal(union > 0.5, meta[0] | meta[2])
    soft = torch.tensor([[[0.5]], [[0.5]]])
    assert aggregate_channels(soft).item() == pytest.approx(0.75)  # 1 - 0.5 * 0.5


def test_novel_assignment_respects_theta():
    protos = torch.stack([novel_prototype(torch.tensor([[1.0, 0.0], [1.0, 0.0]])), torch.tensor([0.0, 1.0])])
    angle_79 = math.acos(0.79)
    angle_81 = math.acos(0.81)
    regions = torch.tensor(
        [
            [math.cos(angle_81), math.sin(angle_81)],  # cos 0.81 to class 0 -> class 0
            [math.cos(angle_79), -math.sin(angle_79)],  # cos 0.79 to class 0, < 0 to class 1 -> none
            [0.1, 1.0],  # close to class 1
        ]
    )
    assigned, sims = assign_novel_classes(regions, protos, theta_novel=0.8)
    assert assigned.tolist() == [0, -1, 1]
    assert sims[0, 0].item() == pytest.approx(0.81, abs=1e-6)


def test_incremental_miou_hand():
    gt = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    conf = confusion_matrix(pred, gt, 3)
    # IoU0 = 1/3, IoU1 = 2/3, IoU2 = 1/2; novel = {2}
    res = incremental_miou(conf, novel_ids=[2])
    old, new = 50.0, 50.0
    assert res["mIoU_old"] == pytest.approx(old)
    assert res["mIoU_novel"] == pytest.approx(new)
    assert res["mIoU_harmonic"] == pytest.approx(2 * old * new / (old + new))
    res3 = incremental_miou(conf, novel_ids=[1, 2])
    assert res3["mIoU_old"] == pytest.approx(100 / 3)
    assert res3["mIoU_novel"] == pytest.approx((200 / 3 + 50) / 2)


# --- the model -----------------------------------------------------------------------------------


def test_raml_anomaly_stage_trains_only_the_embedding_head():
    torch.manual_seed(0)
    model = build_model(tiny_pixel_cfg("RAML"))
    before = state_snapshot(model)
    train_steps(model, [tiny_batch(seed=1)], steps=2, lr=1e-2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {
        "ood_method.embed.fc1.weight", "ood_method.embed.fc1.bias", "ood_method.embed.fc2.weight",
        "ood_method.embed.fc2.bias", "ood_method.prototypes", "ood_method.prototype_valid",
    }
    assert bool(model.ood_method.prototype_valid.all())


def test_raml_region_score_hand():
    torch.manual_seed(0)
    method = build_model(tiny_pixel_cfg("RAML")).ood_method
    method.prototypes.zero_()
    method.prototypes[0, 0] = 1.0
    method.prototype_valid[0] = True
    # Embedding head = identity on the first 8 of 16 feature dims (fc2 o relu o fc1).
    with torch.no_grad():
        method.embed.fc1.weight.zero_(); method.embed.fc1.bias.zero_()
        method.embed.fc1.weight[:8, :8] = torch.eye(8)
        method.embed.fc2.weight.zero_(); method.embed.fc2.bias.zero_()
        method.embed.fc2.weight[:, :8] = torch.eye(8)
    feats = torch.zeros(16, 2, 2)
    feats[0, 0, 0] = 1.0  # cell (0,0): along the prototype -> cos 1
    feats[0, 0, 1] = 1.0
    feats[1, 0, 1] = 1.0  # cell (0,1): 45 degrees -> cos 1/sqrt(2)
    logits = torch.zeros(3, 8, 8)
    logits[1] = 2.0
    regions = torch.zeros(8, 8, dtype=torch.long)
    regions[0:4, 0:4] = 1
    regions[0:4, 4:8] = 2
    from rba_plugin.modeling.ood import get_score

    similarity = method.region_similarity_map(feats, regions)
    q = get_score("raml")({"class_scores": logits, "region_similarity": similarity[None]})
    assert torch.allclose(q[0:4, 0:4], torch.full((4, 4), -2.0))
    assert torch.allclose(q[0:4, 4:8], torch.full((4, 4), -2.0 / math.sqrt(2)))
    assert torch.allclose(q[4:], torch.full((4, 8), -2.0))  # outside regions: -max logit


def test_raml_mca_stage_trains_network_and_mca_not_embedding():
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.RAML.STAGE = "mca"
    cfg.MODEL.MCA.ACTIVATION = "sigmoid"  # so the reconstruction term is active
    torch.manual_seed(0)
    model = build_model(cfg)
    before = state_snapshot(model)
    losses = train_steps(model, [tiny_batch(seed=1)], steps=2, lr=1e-2)
    assert set(losses) == {"loss_sem_seg", "loss_mca_known", "loss_mca_inter", "loss_mca_split", "loss_mca_rec"}
    assert losses["loss_mca_rec"].item() > 0
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("ood_method.embed") or k.startswith("ood_method.prototype") for k in changed)
    assert any(k.startswith("ood_method.mca") for k in changed)
    assert any(k.startswith("backbone.") for k in changed)


def test_incremental_few_shot_pipeline_runs_and_paints_novel_regions():
    cfg = tiny_pixel_cfg("RAML")
    torch.manual_seed(0)
    model = build_model(cfg)
    inp = tiny_batch(n=1, seed=4)[0]
    learner = IncrementalFewShot.from_config(cfg, model)
    # Force meta channel 0 on everywhere: bias of the MCA conv for that channel.
    with torch.no_grad():
        model.ood_method.mca.bias[4] = 50.0
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[10:30, 10:30] = True
    learner.add_shots(7, [(inp, mask)])
    assert learner.candidates == {0}
    labels = learner.predict(inp)
    assert labels.shape == (64, 64)
    # The one region (the whole image) has the same embedding as the shot only if the pooled
    # features match; with theta 0.8 check the rule on the similarity itself.
    feats = learner._extract(inp)[1]
    emb_all = model.ood_method.embed_regions(feats, torch.ones(1, 64, 64))
    assigned, sims = assign_novel_classes(emb_all, torch.stack(learner.prototypes), 0.8)
    assert bool((labels == 7).all()) == (sims[0, 0].item() > 0.8)


def test_pick_shots_is_seeded_and_only_takes_images_with_the_class():
    from rba_plugin.experiments.incremental import pick_shots

    inputs = []
    for i in range(6):
        sem = torch.zeros(4, 4, dtype=torch.long)
        if i % 2:
            sem[0, : i] = 13
        inputs.append({"sem_seg": sem, "id": i})
    shots = pick_shots(inputs, 13, num_shots=2, seed=3)
    assert len(shots) == 2 and all(x["id"] % 2 == 1 for x, _ in shots)
    assert all(torch.equal(m, x["sem_seg"] == 13) for x, m in shots)
    assert [x["id"] for x, _ in pick_shots(inputs, 13, 2, seed=3)] == [x["id"] for x, _ in shots]
    with pytest.raises(ValueError, match="class 13"):
        pick_shots(inputs, 13, num_shots=4)


def test_evaluate_incremental_pools_over_images():
    from rba_plugin.experiments.incremental import evaluate_incremental

    class FixedLearner:
        def __init__(self, preds):
            self.preds = iter(preds)

        def predict(self, inp):
            return next(self.preds)

    gts = [torch.tensor([[0, 0, 1]]), torch.tensor([[1, 2, 255]])]
    preds = [torch.tensor([[0, 1, 1]]), torch.tensor([[1, 2, 0]])]
    res = evaluate_incremental(FixedLearner(preds), [{"sem_seg": g} for g in gts], 3, novel_ids=[2])
    # pooled: class0 I=1 U=2 -> 0.5; class1 I=2 U=3 -> 2/3; class2 I=1 U=1 -> 1
    assert res["mIoU_old"] == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert res["mIoU_novel"] == pytest.approx(100.0)


def test_raml_bad_options_name_the_key():
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.MCA.ACTIVATION = "tanh"
    with pytest.raises(ValueError, match="MODEL.MCA.ACTIVATION"):
        build_model(cfg)
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.RAML.STAGE = "novel"
    with pytest.raises(ValueError, match="MODEL.RAML.STAGE"):
        build_model(cfg)


def test_run_incremental_setting_end_to_end_on_a_tiny_model():
    from rba_plugin.experiments.incremental import run_incremental_setting

    cfg = tiny_pixel_cfg("RAML", num_classes=19)
    torch.manual_seed(0)
    model = build_model(cfg)
    pool = tiny_batch(n=3, num_classes=19, seed=11)
    res = run_incremental_setting(cfg, model, pool, tiny_batch(n=2, num_classes=19, seed=12), setting="16+1", num_shots=2)
    assert set(res) == {"mIoU_old", "mIoU_novel", "mIoU_harmonic", "mIoU_all"}
    assert 0.0 <= res["mIoU_old"] <= 100.0 and 0.0 <= res["mIoU_novel"] <= 100.0
    with pytest.raises(ValueError, match="setting"):
        run_incremental_setting(cfg, model, pool, [], setting="12+7")
