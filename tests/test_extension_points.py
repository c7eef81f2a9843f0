"""Adding a score, a loss term, a per-pixel method or a fine-tuning method touches no plugin file:
each is registered here, inside the test, and used by training and evaluation through the
config. Also: build-time refusals of unknown names and bad keys, and the freezing declarations."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.layers import Conv2d
from detectron2.modeling import build_model

from rba_plugin.config import get_cfg, load_config
from rba_plugin.engine import Trainer
from rba_plugin.modeling.criterion import batched_semantic_scores
from rba_plugin.modeling.loss_terms import LOSS_TERM_REGISTRY, LossTerm
from rba_plugin.modeling.ood import get_score, register_score
from rba_plugin.modeling.pixel import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

from .conftest import REPO_ROOT
from .pixel_e2e_utils import register_tiny_synthcity, tiny_run_opts
from .pixel_utils import tiny_batch, tiny_pixel_cfg
from .test_rba_finetune import batch as m2f_batch
from .test_rba_finetune import small_cfg

M2F_FINETUNE = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_rba_finetune.yaml"


@pytest.fixture(scope="module", autouse=True)
def toy_components():
    """Registers the toy score, loss term and method of this module (as a user's own module
    would by being imported) and removes them afterwards, so other tests see the built-ins only."""
    from rba_plugin.modeling.ood.scores import OOD_SCORE_REGISTRY

    register_score("toy_top2_margin")(toy_top2_margin)
    LOSS_TERM_REGISTRY.register(ToyOutlierMassLoss)
    PIXEL_OOD_METHOD_REGISTRY.register(ToyProbe)
    yield
    for registry, name in ((OOD_SCORE_REGISTRY, "toy_top2_margin"), (LOSS_TERM_REGISTRY, "ToyOutlierMassLoss"),
                           (PIXEL_OOD_METHOD_REGISTRY, "ToyProbe")):
        registry._obj_map.pop(name)


# --- a new anomaly score -------------------------------------------------------------------------


def toy_top2_margin(class_scores):
    """-(L_(1) - L_(2)): a small margin between the two largest class scores is anomalous."""
    top2 = class_scores.topk(2, dim=-3).values
    return -(top2.select(-3, 0) - top2.select(-3, 1))


def test_a_new_score_is_used_by_both_meta_architectures():
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    for cfg in (small_cfg(M2F_FINETUNE, "MODEL.OOD.SCORES", "['toy_top2_margin', 'rba']"),
                tiny_pixel_cfg("ClosedSet")):
        cfg.MODEL.OOD.SCORES = ["toy_top2_margin", "rba"]
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            out = model([{"image": image}])[0]
        top2 = out["sem_seg"].topk(2, dim=0).values
        torch.testing.assert_close(out["ood_score"], top2[1] - top2[0])
        assert set(out["ood_scores"]) == {"toy_top2_margin", "rba"}


# --- a new loss term, used by Mask2Former's training (a fine-tuning method) ------------------------


class ToyOutlierMassLoss(LossTerm):
    """weight x mean over pasted outlier pixels of sum_k L_k at mask resolution."""

    inputs = ("class_scores",)

    @configurable
    def __init__(self, *, weight: float):
        super().__init__()
        self.weights = {"loss_toy_mass": weight}

    @classmethod
    def from_config(cls, cfg):
        return {"weight": 0.25}

    def forward(self, outputs, targets):
        scores = outputs["class_scores"]
        outlier = F.interpolate(targets.outlier[:, None].float(), size=scores.shape[-2:], mode="nearest")[:, 0]
        return {"loss_toy_mass": (scores.sum(1) * outlier).sum() / outlier.sum().clamp(min=1)}


def test_a_new_loss_term_trains_mask2former_as_a_fine_tuning_method():
    cfg = small_cfg(M2F_FINETUNE, "MODEL.LOSS_TERMS", "['ToyOutlierMassLoss']", "MODEL.MASK_FORMER.OUTLIER_SUPERVISION",
                    "False")
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert [type(t).__name__ for t in model.criterion.terms] == ["ToyOutlierMassLoss"]
    assert model.criterion.weight_dict["loss_toy_mass"] == 0.25 and model.criterion.weight_dict["loss_toy_mass_0"] == 0.25
    model.train()
    inputs = m2f_batch()
    losses = model(inputs)
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_toy_mass", "loss_toy_mass_0"} <= set(losses)
    # The weighted term equals the hand computation on the model's own final prediction.
    with torch.no_grad():
        images = model.preprocess_images(inputs)
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        scores = batched_semantic_scores(outputs["pred_logits"], outputs["pred_masks"])
        labels = torch.stack([x["sem_seg"] for x in inputs])
        outlier = F.interpolate((labels == 254)[:, None].float(), size=scores.shape[-2:], mode="nearest")[:, 0]
        want = 0.25 * (scores.sum(1) * outlier).sum() / outlier.sum()
    torch.testing.assert_close(losses["loss_toy_mass"], want)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("sem_seg_head.predictor.class_embed.", "sem_seg_head.predictor.mask_embed."))
                           for k in changed)


# --- a new per-pixel method -----------------------------------------------------------------------


class ToyProbe(PixelOODMethod):
    """A 1x1 linear probe on the frozen network's decoder features, trained with the head's CE."""

    default_scores = ("entropy",)
    training_outputs = ("logits",)

    @configurable
    def __init__(self, *, in_channels: int, num_classes: int):
        super().__init__()
        self.probe = Conv2d(in_channels, num_classes, kernel_size=1)

    @classmethod
    def from_config(cls, cfg, sem_seg_head):
        return {"in_channels": sem_seg_head.feature_channels, "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}

    @classmethod
    def loss_term_names(cls, cfg):
        return ["SemSegLoss"]

    def trainable_prefixes(self):
        return ["ood_method.probe"]

    def forward(self, head, features, dec_in, images, targets=None, extras=None):
        logits = head.upsample(self.probe(head.decoder_features(dec_in)))
        if self.training:
            return {"logits": logits}
        return {"sem_seg": logits, "class_scores": logits}


@pytest.mark.slow
def test_a_new_per_pixel_method_trains_and_evaluates_through_the_trainer(tmp_path):
    prefix = register_tiny_synthcity(tmp_path / "synth", "ext_toy_probe")
    cfg = load_config(str(REPO_ROOT / "configs/synthcity/pixel/closed_set.yaml"),
                      tiny_run_opts(prefix, tmp_path / "probe", 3)
                      + ["MODEL.PIXEL_OOD.METHOD", "ToyProbe", "MODEL.OOD.SCORES", "[]"])
    trainer = Trainer(cfg)
    model = trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"ood_method.probe.weight", "ood_method.probe.bias"}
    name = f"{prefix}_anomaly"
    results = Trainer.test(cfg, model)[name][name]
    assert 0.0 <= results["AP"] <= 100.0 and 0.0 <= results["AUROC"] <= 100.0
    assert model.scorer.names == ["entropy"]  # the method's own default score


# --- refusals at build time -----------------------------------------------------------------------


def test_unknown_loss_terms_and_bad_term_keys_fail_at_build_naming_them():
    with pytest.raises(ValueError, match=r"MODEL.LOSS_TERMS: unknown loss term 'NoSuchTerm'.*SquaredHingeOutlierLoss"):
        build_model(small_cfg(M2F_FINETUNE, "MODEL.LOSS_TERMS", "['NoSuchTerm']"))
    with pytest.raises(ValueError, match=r"MODEL.LOSS_TERMS: unknown loss term 'NoSuchTerm'"):
        cfg = tiny_pixel_cfg("RPL")
        cfg.MODEL.LOSS_TERMS = ["NoSuchTerm"]
        build_model(cfg)
    with pytest.raises(ValueError, match=r"MODEL.MASK_FORMER.OUTLIER_LOSS_FUNC = 'hinge': must be one of 'squared_hinge'"):
        build_model(small_cfg(M2F_FINETUNE, "MODEL.MASK_FORMER.OUTLIER_LOSS_FUNC", "hinge"))
    with pytest.raises(ValueError, match=r"MODEL.MASK_FORMER.OUTLIER_LOSS_TARGET must be one of .* got 'none'"):
        build_model(small_cfg(M2F_FINETUNE, "MODEL.MASK_FORMER.OUTLIER_LOSS_TARGET", "none"))
    cfg = tiny_pixel_cfg("RAML")
    cfg.MODEL.RAML.STAGE = "mca"
    cfg.MODEL.MCA.INTER_REDUCTION = "max"
    with pytest.raises(ValueError, match=r"MODEL.MCA.INTER_REDUCTION = 'max': must be one of None, 'mean', 'sum'"):
        build_model(cfg)
    # A term that reads an output the model does not produce in training.
    cfg = tiny_pixel_cfg("ClosedSet")
    cfg.MODEL.LOSS_TERMS = ["RPLPositiveEnergy"]
    with pytest.raises(ValueError, match=r"RPLPositiveEnergy needs the training output\(s\) rpl_logits"):
        build_model(cfg)


# --- freezing declarations ------------------------------------------------------------------------


def _under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


PIXEL_METHODS = ["ClosedSet", "RPL", "PEBAL", "RAML", "RAML-mca", "VCA", "ToyProbe"]


@pytest.mark.parametrize("method", PIXEL_METHODS)
def test_each_per_pixel_method_trains_exactly_what_it_declares(method):
    cfg = tiny_pixel_cfg(method.split("-")[0])
    if method == "RAML-mca":
        cfg.MODEL.RAML.STAGE = "mca"
    torch.manual_seed(0)
    model = build_model(cfg)
    declared = model.trainable_prefixes
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if declared is None:
        assert trainable == set(names)
        return
    assert trainable == {n for n in names if _under(n, declared)} and trainable
    model.train()
    for name, module in model.named_modules():
        own = [f"{name}.{n}" for n, _ in module.named_parameters()] if name else names
        if own and not any(_under(n, declared) for n in own) and not _under(name, declared):
            assert not module.training, f"{method}: frozen module {name} is in train mode"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = model(tiny_batch(seed=1))
    sum(losses.values()).backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert {n for n in names if n in changed} <= trainable  # frozen parameters never move
    # Statistics of frozen modules (BatchNorm running means...) never move either.
    frozen_modules = [n for n, m in model.named_modules() if n and not m.training]
    frozen_buffers = {f"{m}.{b}" for m in frozen_modules for b, _ in model.get_submodule(m).named_buffers(recurse=False)}
    assert not (changed & frozen_buffers), sorted(changed & frozen_buffers)[:5]


@pytest.mark.parametrize("config,expected", [
    ("maskformer2_R18_1dl.yaml", None),
    ("maskformer2_R18_1dl_rba_finetune.yaml", ["sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.mask_embed"]),
    ("maskformer2_R18_1dl_pebal_finetune.yaml", ["sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.mask_embed"]),
    ("maskformer2_R18_1dl_densehybrid_finetune.yaml",
     ["sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.mask_embed", "sem_seg_head.predictor.ood_pred"]),
])
def test_each_mask2former_fine_tuning_trains_exactly_what_rbas_keys_declare(config, expected):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs/synthcity/mask2former" / config))
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    assert model.trainable_prefixes == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    names = [n for n, _ in model.named_parameters()]
    assert trainable == ({n for n in names if _under(n, expected)} if expected else set(names))
