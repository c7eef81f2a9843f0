"""Model pieces: Swin shapes, position encoding, semantic scores, training targets and losses,
optimizer parameter groups and gradient clipping."""
import math

import pytest
import torch
from detectron2.structures import Instances

from rba_plugin.config import get_cfg
from rba_plugin.engine import build_optimizer, optimizer_param_groups
from rba_plugin.modeling import semantic_scores
from rba_plugin.modeling.position_encoding import PositionEmbeddingSine

from .conftest import REPO_ROOT
from .m2f_build import build_on

MICRO = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"


def _micro_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(str(MICRO))
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0  # deterministic training forward
    cfg.DATASETS.TRAIN = ()
    return cfg


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return build_on(_micro_cfg())


@pytest.mark.parametrize("hw", [(64, 96), (70, 101)])
def test_swin_feature_shapes(micro, hw):
    h, w = hw
    with torch.no_grad():
        feats = micro.backbone(torch.randn(1, 3, h, w))
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        stride = 4 * 2**i
        assert feats[name].shape == (1, 32 * 2**i, math.ceil(h / stride), math.ceil(w / stride))
    assert {k: v.stride for k, v in micro.backbone.output_shape().items()} == {
        "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_sine_position_encoding_by_hand():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    out = pe(torch.zeros(1, 1, 2, 3))
    assert out.shape == (1, 8, 2, 3)
    for y in range(2):
        for x in range(3):
            ey = (y + 1) / (2 + 1e-6) * 2 * math.pi
            ex = (x + 1) / (3 + 1e-6) * 2 * math.pi
            dims = [10000 ** (2 * (i // 2) / 4) for i in range(4)]
            expected_y = [math.sin(ey / dims[0]), math.cos(ey / dims[1]), math.sin(ey / dims[2]), math.cos(ey / dims[3])]
            expected_x = [math.sin(ex / dims[0]), math.cos(ex / dims[1]), math.sin(ex / dims[2]), math.cos(ex / dims[3])]
            assert out[0, :, y, x].tolist() == pytest.approx(expected_y + expected_x, abs=1e-5)


def test_semantic_scores_by_hand():
    gen = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(4, 3, generator=gen), torch.randn(4, 2, 2, generator=gen)
    scores = semantic_scores(logits, masks)
    assert scores.shape == (2, 2, 2)
    for k in range(2):
        for y in range(2):
            for x in range(2):
                expected = 0.0
                for q in range(4):
                    exps = [math.exp(v) for v in logits[q].tolist()]
                    expected += exps[k] / sum(exps) / (1 + math.exp(-masks[q, y, x].item()))
                assert scores[k, y, x].item() == pytest.approx(expected, rel=1e-5)


def _training_input(h, w, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    label = torch.tensor(classes)[torch.randint(0, len(classes), (h, w), generator=gen)]
    label[:2] = 255
    label[-3:, :4] = 254
    present = torch.unique(label)
    present = present[(present != 255) & (present != 254)]
    inst = Instances((h, w))
    inst.gt_classes = present
    inst.gt_masks = label[None] == present[:, None, None]
    image = torch.randint(0, 256, (3, h, w), generator=gen).to(torch.uint8)
    return {"image": image, "instances": inst, "sem_seg": label}


def test_targets_are_padded_and_carry_sem_seg(micro):
    batch = [_training_input(40, 60, [0, 5, 9], 0), _training_input(48, 50, [1, 2], 1)]
    images = micro.preprocess_images(batch)
    assert tuple(images.tensor.shape[-2:]) == (64, 64)  # padded to the size divisibility 32
    targets = micro.prepare_targets(batch, images)
    for x, t in zip(batch, targets):
        h, w = x["sem_seg"].shape
        assert t["masks"].shape[-2:] == (64, 64) and not t["masks"][:, h:].any() and not t["masks"][:, :, w:].any()
        assert torch.equal(t["masks"][:, :h, :w], x["instances"].gt_masks)
        assert torch.equal(t["labels"], x["instances"].gt_classes)
        assert torch.equal(t["sem_seg"][:h, :w], x["sem_seg"]) and (t["sem_seg"][h:] == 255).all()
        assert (t["sem_seg"] == 254).sum() == (x["sem_seg"] == 254).sum()


def test_training_returns_weighted_losses_of_every_prediction(micro):
    batch = [_training_input(64, 64, [0, 5, 9], 2), _training_input(64, 64, [1, 2, 13], 3)]
    micro.train()
    torch.manual_seed(5)
    losses = micro(batch)
    # The same criterion call by hand, with the same random points.
    with torch.no_grad():
        images = micro.preprocess_images(batch)
        outputs = micro.sem_seg_head(micro.backbone(images.tensor))
        torch.manual_seed(5)
        raw = micro.criterion(outputs, micro.prepare_targets(batch, images))
    micro.eval()
    weights = {"ce": 2.0, "mask": 5.0, "dice": 5.0}
    assert set(losses) == {f"loss_{n}{s}" for n in weights for s in ("", "_0")}  # 1 decoder layer: 1 aux
    for key, value in losses.items():
        name = key.split("_")[1]
        assert value.item() == pytest.approx(weights[name] * raw[key].item(), rel=1e-4)
    sum(losses.values()).backward()
    assert micro.sem_seg_head.predictor.query_feat.weight.grad is not None


def test_param_groups_lr_and_weight_decay():
    torch.manual_seed(0)
    model = build_on(_micro_cfg())
    model.sem_seg_head.predictor.mask_embed.layers[0].weight.requires_grad_(False)
    groups = optimizer_param_groups(model, base_lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1,
                                    weight_decay_norm=0.0, weight_decay_embed=0.0)
    where = {}
    for g in groups:
        for p in g["params"]:
            where[id(p)] = (g["lr"], g["weight_decay"])
    named = dict(model.named_parameters())
    expect = {
        "backbone.layers.0.blocks.0.attn.qkv.weight": (1e-5, 0.05),
        "backbone.layers.0.blocks.0.attn.relative_position_bias_table": (1e-5, 0.0),
        "backbone.layers.0.blocks.0.norm1.weight": (1e-5, 0.0),
        "sem_seg_head.predictor.query_feat.weight": (1e-4, 0.0),
        "sem_seg_head.predictor.query_embed.weight": (1e-4, 0.0),
        "sem_seg_head.predictor.level_embed.weight": (1e-4, 0.0),
        "sem_seg_head.predictor.decoder_norm.weight": (1e-4, 0.0),
        "sem_seg_head.pixel_decoder.adapter_1.norm.weight": (1e-4, 0.0),  # GroupNorm
        "sem_seg_head.predictor.class_embed.weight": (1e-4, 0.05),
        # A raw Parameter, not an nn.Embedding: Mask2Former decays it, and so do we.
        "sem_seg_head.pixel_decoder.transformer.level_embed": (1e-4, 0.05),
    }
    for name, hyper in expect.items():
        assert where[id(named[name])] == pytest.approx(hyper), name
    assert id(named["sem_seg_head.predictor.mask_embed.layers.0.weight"]) not in where  # frozen: left out
    assert len(where) == sum(1 for p in model.parameters() if p.requires_grad)


def test_full_model_gradient_clipping():
    cfg = _micro_cfg()
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    optimizer = build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    optimizer.step()
    total_norm = math.sqrt(sum((g**2).sum().item() for g in grads))
    for p, b, g in zip(model.parameters(), before, grads):
        # One SGD step with lr 1 on the gradient rescaled to global norm 0.01.
        assert torch.allclose(b - p.detach(), g * 0.01 / total_norm, atol=1e-7)
