"""VCA prototype baseline: classifier and SupCon against hand computations; training scope."""
import math

import pytest
import torch
from detectron2.modeling import build_model

import rba_plugin.modeling.pixel  # noqa: F401
from rba_plugin.modeling.pixel.contrastive import supcon_loss
from rba_plugin.evaluation import UnknownIoU
from rba_plugin.modeling.pixel.vca import PrototypeClassifier
from tests.pixel_utils import state_snapshot, tiny_batch, tiny_pixel_cfg, train_steps


def test_prototype_classifier_hand():
    clf = PrototypeClassifier(embed_dim=2, num_classes=2)
    with torch.no_grad():
        clf.means.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        clf.log_sigmas.copy_(torch.tensor([0.0, math.log(2.0)]))
        clf.unknown_logit.fill_(-1.5)
    f = torch.tensor([[0.0, 0.0], [3.0, 0.0]]).t().reshape(1, 2, 1, 2)  # pixels (0,0) and (3,0)
    logits = clf(f)
    # logit_k = -||f - mu_k|| / (2 sigma_k^2)
    want = torch.tensor([[0.0, -5.0 / 8.0, -1.5], [-3.0 / 2.0, -4.0 / 8.0, -1.5]]).t().reshape(1, 3, 1, 2)
    torch.testing.assert_close(logits, want)
    clf.squared_distance = True
    want_sq = torch.tensor([[0.0, -25.0 / 8.0, -1.5], [-9.0 / 2.0, -16.0 / 8.0, -1.5]]).t().reshape(1, 3, 1, 2)
    torch.testing.assert_close(clf(f), want_sq)


def _supcon_by_hand(z, labels, tau):
    total, count = 0.0, 0
    for i in range(len(z)):
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(len(z)) if a != i)
        pos = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos)
        count += 1
    return total / count


def test_supcon_hand():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])  # the lone label-2 anchor has no positive
    got = supcon_loss(z, labels, tau=0.5)
    assert got.item() == pytest.approx(_supcon_by_hand(z.double(), labels.tolist(), 0.5), rel=1e-5)
    single = supcon_loss(z[:1], labels[:1])
    assert single.item() == 0.0


def test_unknown_iou_hand():
    metric = UnknownIoU()
    labels = torch.tensor([[0, 1, 1, 255]])
    metric.update(torch.tensor([[True, True, False, True]]), labels)  # I=1, U=3 (void ignored)
    metric.update(torch.tensor([[False, True, True, False]]), labels)  # I=2, U=2
    assert metric.compute() == pytest.approx(100 * 3 / 5)


def test_vca_trains_decoder_and_head_only_and_outlier_is_unknown():
    cfg = tiny_pixel_cfg("VCA")
    cfg.MODEL.VCA.SUPCON_WEIGHT = 0.1
    torch.manual_seed(0)
    model = build_model(cfg)
    before = state_snapshot(model)
    losses = train_steps(model, [tiny_batch(seed=s) for s in range(2)], steps=2, lr=1e-2)
    assert set(losses) == {"loss_vca_ce", "loss_vca_supcon"}
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith(("sem_seg_head.decoder.", "ood_method.")) for k in changed), sorted(changed)[:5]
    assert not any(k.startswith("backbone.") for k in changed)
    assert any(k.startswith("ood_method.classifier.unknown_logit") for k in changed)


def test_vca_loss_counts_pasted_outliers_as_unknown():
    torch.manual_seed(0)
    model = build_model(tiny_pixel_cfg("VCA"))
    model.train()
    batch = tiny_batch(n=1, seed=2, with_outliers=False)
    batch[0]["sem_seg"][:] = 254  # every pixel is a pasted outlier
    # A huge unknown constant makes every pixel confidently "unknown": the loss must vanish.
    with torch.no_grad():
        model.ood_method.classifier.unknown_logit.fill_(1e4)
    assert model(batch)["loss_vca_ce"].item() == pytest.approx(0.0, abs=1e-6)
    model.eval()
    with torch.no_grad():
        out = model(batch)[0]
    assert bool(out["unknown_mask"].all())
    assert torch.allclose(out["ood_score"], torch.ones_like(out["ood_score"]))
    assert out["sem_seg"].shape == (4, 64, 64)
