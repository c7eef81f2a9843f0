"""RAML: region separation on drawn images, region pooling, circle loss, MCA losses, candidate
selection / aggregation and theta_novel on hand-made cases, what each stage trains."""
import math

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

import rba_plugin.modeling.pixel  # noqa: F401
from torch.nn import functional as F
from rba_plugin.experiments.incremental import (
    IncrementalFewShot,
    assign_novel_classes,
    confusion_matrix,
    incremental_miou,
    novel_prototype,
    select_candidate_channels,
)
from rba_plugin.modeling.pixel.raml import dropblock_keep_mask, dropblock_regions, masked_average
from rba_plugin.modeling.pixel.raml_losses import (
    circle_loss,
    dice_coefficient,
    dice_per_image,
    mca_inter_loss,
    mca_known_loss,
    mca_reconstruction_loss,
    mca_split_loss,
    plain_circle_loss,
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


def _plain_circle_by_hand(z, labels, m, gamma):
    # Appendix C.4: log(1 + sum_i sum_j exp(gamma (s_n^j - s_p^i + m))) over the batch's pairs.
    z = [v / np.linalg.norm(v) for v in z]
    sp, sn = [], []
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            s = float(np.dot(z[i], z[j]))
            (sp if labels[i] == labels[j] else sn).append(s)
    return math.log1p(sum(math.exp(gamma * (n - p + m)) for p in sp for n in sn))


def test_circle_loss_hand():
    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    got = circle_loss(z, labels, margin=0.25, gamma=8.0)
    assert got.item() == pytest.approx(_circle_by_hand(z.numpy(), labels.tolist(), 0.25, 8.0), rel=1e-5)
    plain = plain_circle_loss(z.double(), labels, margin=0.25, gamma=8.0)
    want = _plain_circle_by_hand(z.double().numpy(), labels.tolist(), 0.25, 8.0)
    assert plain.item() == pytest.approx(want, rel=1e-12)


def test_circle_loss_spec_example():
    # e = (1,0), (1,0), (0,1), labels 0, 0, 1: s_p = [1] -> logit -0.25*0.25*8 = -0.5; s_n = [0, 0]
    # -> logits -0.5, -0.5; softplus(-0.5 + log 2 - 0.5) = 0.551444; official weight 0.1.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    want = math.log1p(math.exp(-1.0 + math.log(2.0)))
    assert want == pytest.approx(0.551444, abs=1e-6)
    assert circle_loss(z, labels).item() == pytest.approx(want, rel=1e-12)
    from rba_plugin.modeling.loss_terms.raml import RAMLCircleLoss

    term = RAMLCircleLoss(tiny_pixel_cfg("RAML"))  # default (official) form: 0.1 x adaptive
    got = term({"region_embeddings": z, "region_labels": labels}, None)["loss_raml_circle"]
    assert got.item() == pytest.approx(0.0551444, abs=1e-7)
    # Plain circle (paper): log(1 + 2 exp(8 (0 - 1 + 0.25))) = log(1 + 2 e^-6).
    assert plain_circle_loss(z, labels).item() == pytest.approx(math.log1p(2 * math.exp(-6.0)), rel=1e-12)


@pytest.mark.parametrize("loss", [circle_loss, plain_circle_loss])
def test_circle_loss_needs_both_pair_kinds(loss):
    z = torch.randn(3, 4, requires_grad=True)
    value = loss(z, torch.tensor([0, 1, 2]))  # no positive pair
    assert value.item() == 0.0
    value.backward()
    assert loss(z, torch.tensor([0, 0, 0])).item() == 0.0  # no negative pair


def test_dice_spec_examples():
    # a = b = [1, 1, 0, 0]: D = (2 + 1) / (2 + 2 + 1) = 0.6 (no factor 2): a perfect match scores 0.6.
    a = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_per_image(a, a).item() == pytest.approx(0.6)
    assert (1 - dice_per_image(a, a)).item() == pytest.approx(0.4)
    # Disjoint channels [1, 0] and [0, 1]: D = 1 / 3, so L_inter is never 0.
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    assert mca_inter_loss(c, "mean", "official").item() == pytest.approx(1 / 3)
    assert dice_coefficient(a[0], a[0]).item() == pytest.approx(1.0)  # standard Dice: 1


def test_inter_loss_hand_official_and_paper():
    a = torch.tensor([1.0, 1.0, 0.0, 0.0])
    b = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # Paper (standard Dice with the 2, pooled over the batch, sum over i < j); one image.
    c = torch.stack([a, b, 1 - a]).view(1, 3, 1, 4)
    d01 = (2 * 1 + 1) / (2 + 1 + 1)
    d02 = (0 + 1) / (2 + 2 + 1)
    d12 = (0 + 1) / (1 + 2 + 1)
    assert mca_inter_loss(c, "sum", "standard").item() == pytest.approx(d01 + d02 + d12, rel=1e-6)
    assert mca_inter_loss(c, "mean", "standard").item() == pytest.approx((d01 + d02 + d12) / 3, rel=1e-6)
    # Official: two images, Dice without the 2 per image, mean over images, mean over the six
    # ordered pairs (= over the three unordered ones).
    img0 = torch.stack([a, b, 1 - a])
    img1 = torch.stack([b, b, a])
    two = torch.stack([img0, img1]).view(2, 3, 1, 4)

    def d(x, y):
        return (float((x * y).sum()) + 1) / (float((x * x).sum()) + float((y * y).sum()) + 1)

    per_pair = []
    for i in range(3):
        for j in range(3):
            if i != j:
                per_pair.append((d(img0[i], img0[j]) + d(img1[i], img1[j])) / 2)
    assert mca_inter_loss(two, "mean", "official").item() == pytest.approx(sum(per_pair) / 6, rel=1e-6)
    assert mca_inter_loss(two[:, :1]).item() == 0.0  # one channel: no pair


def test_split_loss_official_hand():
    # Official: 50 x the batch mean of each meta channel, clamp(0, 1), -log, mean over channels.
    meta = torch.zeros(2, 3, 2, 5, dtype=torch.float64)
    meta[0, 0] = 0.02  # batch mean 0.01 -> -log(0.5)
    meta[:, 1] = 0.5  # batch mean 0.5 -> 25 -> 1 -> 0
    meta[1, 2, 0, 0] = 1.0  # batch mean 1/20 -> 2.5 -> 0
    got = mca_split_loss(meta, eta=0.02, mass="batch_mean", bound="min", reduction="mean")
    assert got.item() == pytest.approx(math.log(2.0) / 3, rel=1e-12)
    assert math.log(2.0) == pytest.approx(0.693147, abs=1e-6)
    # The mass is over the batch: the same channel split over two images gives the same value.
    moved = meta.clone()
    moved[0, 0] = 0.0
    moved[1, 0] = 0.02
    assert mca_split_loss(moved).item() == pytest.approx(got.item(), rel=1e-12)


def test_split_loss_dead_channel_is_finite():
    # A meta channel that is exactly 0 on the batch: the official log(0) is +inf; the floor keeps
    # it finite (-log of the smallest normal number) with no gradient.
    for dtype in (torch.float32, torch.float64):
        meta = torch.zeros(1, 2, 2, 2, dtype=dtype)
        meta[0, 1] = 0.5
        meta.requires_grad_(True)
        got = mca_split_loss(meta)
        assert torch.isfinite(got)
        assert got.item() == pytest.approx(-math.log(torch.finfo(dtype).tiny) / 2, rel=1e-6)
        got.backward()
        assert torch.isfinite(meta.grad).all()


def test_split_loss_paper_forms_hand():
    meta = torch.zeros(1, 2, 2, 5)
    meta[0, 0] = 0.5  # sum 5 -> eta*sum = 0.1 (eta 0.02)
    meta[0, 1] = 0.0  # dead channel: the floor
    got = mca_split_loss(meta, eta=0.02, mass="sum", bound="min", reduction="sum", eps=1e-6)
    assert got.item() == pytest.approx(-math.log(0.1) - math.log(1e-6), rel=1e-5)
    # Enough mass -> zero; "mean" mass = mean / eta = 0.5 / 0.02 = 25 -> clamped to 1 -> 0.
    assert mca_split_loss(meta[:, :1], eta=0.02, mass="mean").item() == pytest.approx(0.0, abs=1e-7)
    # Literal Eq. 8 (max): -log(max(0.1, 1)) = 0 for the first channel.
    assert mca_split_loss(meta[:, :1], eta=0.02, mass="sum", bound="max").item() == pytest.approx(0.0, abs=1e-7)
    # Per-image values are averaged over the images (image 1: 0.02 x sum 1 = 0.02).
    two = torch.cat([meta[:, :1], torch.full((1, 1, 2, 5), 0.1)])  # image 1: eta*sum = 0.02
    want = (-math.log(0.1) - math.log(0.02)) / 2
    assert mca_split_loss(two, eta=0.02, mass="sum", reduction="sum").item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="MODEL.MCA.SPLIT_BOUND"):
        mca_split_loss(meta, bound="median")
    with pytest.raises(ValueError, match="MODEL.MCA.SPLIT_MASS"):
        mca_split_loss(meta, mass="total")


def test_reconstruction_loss_hand():
    channels = torch.full((1, 2, 1, 2), 0.75)  # sum 1.5 -> (sum - 1) = 0.5
    image = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).view(1, 3, 1, 2)
    want = sum((x * 0.5) ** 2 for x in range(1, 7)) / 6
    assert mca_reconstruction_loss(channels, image).item() == pytest.approx(want)
    # Softmax channels sum to one: the term vanishes.
    soft = torch.randn(1, 4, 3, 3).softmax(dim=1)
    assert mca_reconstruction_loss(soft, torch.randn(1, 3, 3, 3)).item() == pytest.approx(0.0, abs=1e-10)


def _bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_known_loss_dice_bce_hand():
    # Two known channels, two images of 1 x 2 pixels; labels [[0, 255]], [[254, 0]]: void and
    # outlier pixels are negatives in both channels; class 1 is absent from the batch.
    c = torch.tensor([[[0.8, 0.3], [0.1, 0.6]], [[0.4, 0.9], [0.2, 0.5]]], dtype=torch.float64)  # N x K x W
    channels = c.view(2, 2, 1, 2)
    targets = torch.tensor([[[0, 255]], [[254, 0]]])
    y = [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]]
    total = 0.0
    for k in range(2):
        dice_losses, bces = [], []
        for n in range(2):
            p, t = c[n, k].tolist(), y[n][k]
            num = sum(a * b for a, b in zip(p, t)) + 1
            den = sum(a * a for a in p) + sum(b * b for b in t) + 1
            dice_losses.append(1 - num / den)
            bces.extend(_bce(a, b) for a, b in zip(p, t))
        total += sum(dice_losses) / 2 + sum(bces) / 4
    want = total / 2
    got = mca_known_loss(channels, targets, num_known=2, ignore_label=255, kind="dice_bce", dice="official")
    assert got.item() == pytest.approx(want, rel=1e-12)
    # All-void labels: every pixel a negative, still finite and positive.
    void = mca_known_loss(channels, torch.full((2, 1, 2), 255), 2, 255, "dice_bce")
    assert torch.isfinite(void) and void.item() > 0
    # A single image.
    single = mca_known_loss(channels[:1], targets[:1], 2, 255, "dice_bce")
    assert torch.isfinite(single)


def test_known_loss_nll_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]).t().reshape(1, 3, 1, 2)
    targets = torch.tensor([[[0, 255]]])
    got = mca_known_loss(probs, targets, num_known=2, ignore_label=255, kind="nll")
    assert got.item() == pytest.approx(-math.log(0.7))
    empty = mca_known_loss(probs, torch.full((1, 1, 2), 255), num_known=2, ignore_label=255, kind="nll")
    assert empty.item() == 0.0


def test_official_mca_losses_pass_gradcheck():
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 2, (2, 3, 3), generator=g)
    targets[0, 0] = 255
    meta = (torch.rand(2, 2, 3, 3, generator=g, dtype=torch.float64) * 0.02).requires_grad_()  # split active
    assert torch.autograd.gradcheck(lambda x: mca_known_loss(x.sigmoid(), targets, 2, 255, "dice_bce"), (pre,))
    assert torch.autograd.gradcheck(lambda x: mca_inter_loss(x.sigmoid(), "mean", "official"), (pre,))
    assert torch.autograd.gradcheck(lambda x: mca_split_loss(x, 0.02, "batch_mean", "min", "mean"), (meta,))
    z = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # (The adaptive circle loss detaches its weights alpha, so its gradient is not the numerical
    # derivative; tests/test_official_raml_vca.py checks it against the official gradient.)
    assert torch.autograd.gradcheck(lambda x: plain_circle_loss(x, labels), (z,))


# --- metric-stage regions (DropBlock) ----------------------------------------------------------


def _brute_force_keep(seeds, block):
    """Keep mask from a seed map by definition: a cell is dropped when a seed lies in the
    block x block window centred on it (odd block)."""
    n, h, w = seeds.shape
    r = block // 2
    keep = torch.ones(n, h, w)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                window = seeds[b, max(0, y - r): y + r + 1, max(0, x - r): x + r + 1]
                if bool(window.any()):
                    keep[b, y, x] = 0.0
    return keep


def test_dropblock_keep_mask_equals_brute_force_on_the_same_draw():
    torch.manual_seed(5)
    got = dropblock_keep_mask(2, 9, 11, drop_prob=0.3, block_size=3)
    torch.manual_seed(5)  # the same draw: rand(B, h, w) from the global generator, as DropBlock2D
    seeds = torch.rand(2, 9, 11) < 0.3 / 9
    assert bool(seeds.any())
    assert torch.equal(got, _brute_force_keep(seeds, 3))
    # A lone seed drops exactly its centred 3 x 3 block.
    g = torch.Generator().manual_seed(0)
    one = dropblock_keep_mask(1, 7, 7, drop_prob=9.0, block_size=3, generator=g)  # rate 1: every cell a seed
    assert bool((one == 0).all())


def test_dropblock_statistics():
    g = torch.Generator().manual_seed(1)
    n, h, w, p, block = 8, 120, 120, 0.3, 3
    keep = dropblock_keep_mask(n, h, w, p, block, generator=g)
    gamma = p / block**2
    # Interior cells are dropped iff one of the 9 cells of their window is a seed.
    interior = keep[:, 1:-1, 1:-1]
    want = 1 - (1 - gamma) ** 9
    assert (1 - interior.mean()).item() == pytest.approx(want, rel=0.05)
    # Seed rate: redraw the same stream and count the seeds.
    g2 = torch.Generator().manual_seed(1)
    seeds = torch.rand(n, h, w, generator=g2) < gamma
    assert seeds.float().mean().item() == pytest.approx(gamma, rel=0.05)
    # Every dropped cell lies in the 3 x 3 block of a seed, and every such cell is dropped.
    assert torch.equal(keep[:2], _brute_force_keep(seeds[:2], block))


def test_dropblock_regions_equal_a_literal_loop():
    """Official MetricModel.forward: `known` DropBlock draws of the one-hot known-class masks at
    the feature size (nearest), masks shared across classes, for each draw, class, image with a
    non-empty mask the masked mean feature."""
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 5, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 12, 12), generator=g)
    labels[0, :6] = 255  # void
    labels[1][labels[1] == 2] = 255  # class 2 absent from image 1
    torch.manual_seed(9)
    regions, region_labels = dropblock_regions(feats, labels, num_known=3, drop_prob=0.3, block_size=3)
    torch.manual_seed(9)
    small = labels[:, ::2, ::2]  # nearest 12 -> 6 reads source index 2i
    want, want_labels = [], []
    for _ in range(3):  # `known` repetitions
        keep = dropblock_keep_mask(2, 6, 6, 0.3, 3)
        for c in range(3):
            for b in range(2):
                mask = (small[b] == c).double() * keep[b].double()
                if mask.sum() > 0:
                    want.append((feats[b] * mask).sum(dim=(1, 2)) / mask.sum())
                    want_labels.append(c)
    assert region_labels.tolist() == want_labels
    torch.testing.assert_close(regions, torch.stack(want), rtol=1e-12, atol=1e-12)


def test_dropblock_regions_without_dropping_are_class_means():
    feats = torch.arange(2 * 4 * 4, dtype=torch.float64).view(1, 2, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :, 2:] = 1
    regions, region_labels = dropblock_regions(feats, labels, num_known=2, drop_prob=0.0, block_size=3)
    assert region_labels.tolist() == [0, 1, 0, 1]  # two repetitions (= known) of both classes
    torch.testing.assert_close(regions[0], feats[0, :, :, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(regions[1], feats[0, :, :, 2:].mean(dim=(1, 2)))
    empty, empty_labels = dropblock_regions(feats, torch.full((1, 4, 4), 255), num_known=2)
    assert empty.shape == (0, 2) and empty_labels.numel() == 0


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


def test_raml_anomaly_stage_trains_only_the_embedding_head_and_classifier():
    torch.manual_seed(0)
    model = build_model(tiny_pixel_cfg("RAML"))
    before = state_snapshot(model)
    losses = train_steps(model, [tiny_batch(seed=1)], steps=2, lr=1e-2)
    assert set(losses) == {"loss_raml_circle", "loss_raml_ce"}  # official: 0.1 x circle + classifier CE
    assert all(torch.isfinite(v) for v in losses.values())
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {
        "ood_method.embed.fc1.weight", "ood_method.embed.fc1.bias", "ood_method.embed.fc2.weight",
        "ood_method.embed.fc2.bias", "ood_method.classifier.weight", "ood_method.prototypes",
        "ood_method.prototype_valid",
    }
    assert model.ood_method.classifier.bias is None
    assert model.ood_method.classifier.weight.shape == (4, 8)  # known classes x embedding
    assert bool(model.ood_method.prototype_valid.all())


def test_raml_metric_stage_outputs_follow_the_official_model():
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES = [2]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    method, head = model.ood_method, model.sem_seg_head
    batch = tiny_batch(seed=1)
    images = model.preprocess_image(batch)
    dec_in = head.decode(model.backbone(images.tensor))
    targets = model.targets(batch)
    torch.manual_seed(4)
    out = method(head, None, dec_in, images, targets=targets)
    # Regions: known (3) DropBlock draws of the 3 known classes' masks at the feature stride.
    with torch.no_grad():
        feats = head.decoder_features(dec_in)
    compact = targets.labels.clone()
    compact[(compact == 2) | (compact == 254)] = 255
    compact[compact == 3] = 2
    torch.manual_seed(4)
    pooled, labels = dropblock_regions(feats, compact, 3, 0.3, 3)
    assert torch.equal(out["region_labels"], labels)
    assert 0 < labels.numel() <= 3 * 3 * 2 and set(labels.tolist()) <= {0, 1, 2}
    emb = method.embed(pooled)
    torch.testing.assert_close(out["region_embeddings"], emb)  # unnormalised
    torch.testing.assert_close(out["region_logits"], emb @ method.classifier.weight.t())
    assert out["region_logits"].shape[1] == 3


def test_raml_paper_form_metric_stage():
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.RAML.FORM = "paper"
    torch.manual_seed(0)
    model = build_model(cfg)
    losses = train_steps(model, [tiny_batch(seed=1)], steps=1, lr=1e-2)
    assert set(losses) == {"loss_raml_circle"}  # no classifier CE, weight 1, plain circle
    term = model.loss_terms[0]
    assert term.weight == 1.0 and term.loss is plain_circle_loss
    assert model.ood_method.region_sampling == "masks"
    # A single key overrides the bundle.
    cfg.MODEL.RAML.CIRCLE_FORM = "adaptive"
    assert build_model(cfg).loss_terms[0].loss is circle_loss


def test_raml_checkpoint_without_classifier_loads():
    # A RAML checkpoint written before the region classifier existed.
    torch.manual_seed(0)
    model = build_model(tiny_pixel_cfg("RAML"))
    old = {k: v for k, v in state_snapshot(model).items() if not k.startswith("ood_method.classifier")}
    torch.manual_seed(1)
    fresh = build_model(tiny_pixel_cfg("RAML"))
    init = fresh.ood_method.classifier.weight.detach().clone()
    result = fresh.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(fresh.ood_method.embed.fc1.weight, model.ood_method.embed.fc1.weight)
    assert torch.equal(fresh.ood_method.classifier.weight, init)  # kept as initialised
    # A closed-set checkpoint (no RAML head at all) leaves the classifier to the new-module rule.
    closed = {k: v for k, v in old.items() if not k.startswith("ood_method.")}
    result = fresh.load_state_dict(closed, strict=False)
    assert "ood_method.classifier.weight" in result.missing_keys


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
    torch.manual_seed(0)
    model = build_model(cfg)
    before = state_snapshot(model)
    losses = train_steps(model, [tiny_batch(seed=1)], steps=2, lr=1e-2)
    assert set(losses) == {"loss_sem_seg", "loss_mca_known", "loss_mca_inter", "loss_mca_split", "loss_mca_rec"}
    assert losses["loss_mca_rec"].item() > 0  # sigmoid (official): the reconstruction term acts
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("ood_method.embed") or k.startswith("ood_method.prototype")
                   or k.startswith("ood_method.classifier") for k in changed)
    assert any(k.startswith("ood_method.mca") for k in changed)
    assert any(k.startswith("backbone.") for k in changed)


def _mca_model(**keys):
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.RAML.STAGE = "mca"
    for key, value in keys.items():
        setattr(cfg.MODEL.MCA, key, value)
    torch.manual_seed(0)
    return build_model(cfg), cfg


def test_mca_official_channels_and_order():
    # 20 MCA channels in all (official conv3): 4 known classes + 16 meta channels.
    model, _ = _mca_model()
    method, head = model.ood_method, model.sem_seg_head
    assert method.num_meta == 16 and method.mca.out_channels == 20
    closed = torch.randn(2, 4, 5, 6)
    got = method.meta_channels(closed, head)
    # Sigmoid at the decoder stride, then bilinear upsampling (align_corners False) to the input.
    want = F.interpolate(torch.sigmoid(method.mca(closed)), size=(20, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, want)
    # With held-out classes: 3 known + 17 meta channels are what the losses see; the conv keeps
    # the C + K layout, and the held-out class's channel is left out.
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.RAML.STAGE = "mca"
    cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES = [1]
    torch.manual_seed(0)
    held = build_model(cfg).ood_method
    assert held.num_known == 3 and held.num_meta == 17 and held.mca.out_channels == 21
    out = held.meta_channels(closed, head)
    assert out.shape[1] == 20
    full = torch.sigmoid(held.mca(closed))
    keep = [0, 2, 3] + list(range(4, 21))
    torch.testing.assert_close(out, F.interpolate(full[:, keep], size=(20, 24), mode="bilinear", align_corners=False))


def test_mca_explicit_num_meta_and_paper_form():
    model, _ = _mca_model(NUM_META=4)
    assert model.ood_method.num_meta == 4
    paper, cfg = _mca_model(FORM="paper")
    method = paper.ood_method
    assert method.num_meta == 4 and method.mca_activation == "softmax" and not method.activate_before_upsample
    closed = torch.randn(1, 4, 5, 6)
    got = method.meta_channels(closed, paper.sem_seg_head)
    want = F.interpolate(method.mca(closed), size=(20, 24), mode="bilinear", align_corners=False).softmax(dim=1)
    torch.testing.assert_close(got, want)
    terms = {type(t).__name__: t for t in paper.loss_terms}
    assert terms["MCAKnownLoss"].kind == "nll" and terms["MCAKnownLoss"].weight == 1.0
    assert terms["MCAInterLoss"].reduction == "sum" and terms["MCAInterLoss"].dice == "standard"
    assert (terms["MCASplitLoss"].mass, terms["MCASplitLoss"].reduction) == ("sum", "sum")
    assert terms["RAMLSegLoss"].reduction == "mean"
    # One key overrides the bundle.
    cfg.MODEL.MCA.ACTIVATION = "sigmoid"
    assert build_model(cfg).ood_method.mca_activation == "sigmoid"


def test_mca_official_losses_on_the_model_batch_hand():
    # The terms of a built model on its own outputs equal the official formulas written out.
    model, _ = _mca_model()
    model.train()
    batch = tiny_batch(n=2, seed=1)
    images = model.preprocess_image(batch)
    dec_in = model.sem_seg_head.decode(model.backbone(images.tensor))
    targets = model.targets(batch)
    out = model.ood_method(model.sem_seg_head, None, dec_in, images, targets=targets)
    losses = {}
    for term in model.loss_terms:
        losses.update({k: v * term.weights.get(k, 1.0) for k, v in term(out, targets).items()})
    c = out["meta_channels"].double()
    labels = targets.labels
    y = torch.stack([(labels == i).double() for i in range(4)], dim=1)  # void and 254: negatives

    def dice(a, b):  # per image, no factor 2 (BinaryDiceLoss)
        return ((a * b).sum(dim=(1, 2)) + 1) / (a.pow(2).sum(dim=(1, 2)) + b.pow(2).sum(dim=(1, 2)) + 1)

    known = 0.0
    for i in range(4):
        known += (1 - dice(c[:, i], y[:, i])).mean() + F.binary_cross_entropy(c[:, i], y[:, i])
    split = torch.stack([-torch.log((c[:, i].mean() * 50).clamp(0, 1)) for i in range(4, 20)]).mean()
    pairs = []
    for i in range(20):
        for j in range(20):
            if i != j:
                pairs.append(dice(c[:, i], c[:, j]).mean())
    inter = torch.stack(pairs).mean()
    assert losses["loss_mca_known"].item() == pytest.approx(0.1 * known.item() / 4, rel=1e-5)
    assert losses["loss_mca_split"].item() == pytest.approx(0.1 * split.item(), rel=1e-5, abs=1e-8)
    assert losses["loss_mca_inter"].item() == pytest.approx(0.1 * inter.item(), rel=1e-5)
    ce = F.cross_entropy(out["logits"], targets.without_outliers(), ignore_index=255) / 2
    assert losses["loss_sem_seg"].item() == pytest.approx(ce.item(), rel=1e-6)


def test_mca_bad_options_name_the_key():
    for key, value in [("FORM", "code"), ("DICE", "soft"), ("KNOWN_LOSS", "ce"), ("SPLIT_MASS", "max"),
                       ("NUM_META", 0), ("KNOWN_WEIGHT", -1.0), ("SEG_LOSS_REDUCTION", "sum")]:
        with pytest.raises(ValueError, match=f"MODEL.MCA.{key}"):
            _mca_model(**{key: value})
    # Too many known classes for the official 20 channels: NUM_META must be given.
    cfg = tiny_pixel_cfg("RAML", num_classes=20)
    cfg.MODEL.RAML.STAGE = "mca"
    with pytest.raises(ValueError, match="MODEL.MCA.NUM_META"):
        build_model(cfg)
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.RAML.FORM = "code"
    with pytest.raises(ValueError, match=r"MODEL.RAML.FORM = 'code': must be one of 'official', 'paper'"):
        build_model(cfg)
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.RAML.REGION_SAMPLING = "grid"
    with pytest.raises(ValueError, match="MODEL.RAML.REGION_SAMPLING"):
        build_model(cfg)


def test_incremental_few_shot_pipeline_runs_and_paints_novel_regions():
    cfg = tiny_pixel_cfg("RAML")
    torch.manual_seed(0)
    model = build_model(cfg)
    inp = tiny_batch(n=1, seed=4)[0]
    learner = IncrementalFewShot.from_config(cfg, model)
    # Force meta channel 0 on everywhere and every other meta channel off: biases of the MCA conv.
    with torch.no_grad():
        model.ood_method.mca.bias[4:] = -50.0
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
