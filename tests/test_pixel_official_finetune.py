"""Fine-tuning each method on its official network (the shipped Cityscapes configs, full-size
WideResNet-38) trains only what the official recipe trains; every other parameter and buffer is
bit-identical after the steps (frozen parts run in eval mode: no BatchNorm statistics, no dropout):

* PEBAL: the ``final`` block (``code/engine/trainer.py`` ``freeze_model_parameters``: names under
  ``module.branch1.final``), its 20th row included;
* RPL + CoroCL: the residual block (``rpl_corocl.code`` ``train_module_list`` + ``train()`` of
  ``residual_block`` only), ``atten_aspp_final`` at 10x the LR;
* DenseHybrid: everything (``Adam(model.parameters())``, ``model.train()``);
* RAML on its network: the MCA stage everything but the metric head (main.py --finetune trains
  backbone and classifier, conv3 included); the anomaly (metric) stage only the metric head
  (main_metric.py optimises MetricModel), plus its prototypes.
"""
from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model

from rba_plugin.engine import Trainer

from .pixel_official import CASES, OfficialCase, image_input, pixel_batch

# What trains (segmentor-relative prefixes); None: everything.
TRAINED = {"pebal": ("sem_seg_head.final.",), "rpl": ("ood_method.residual_block.",), "densehybrid": None,
           "raml_mca": ("backbone.", "sem_seg_head."), "raml": ("ood_method.embed.", "ood_method.classifier.",
                                                                 "ood_method.prototype")}
FINETUNE_CASES = {
    "pebal": CASES["pebal"], "rpl": CASES["rpl"], "densehybrid": CASES["densehybrid"],
    "raml_mca": OfficialCase("raml_dlv3p_r101_os16_19cls", "configs/cityscapes/pixel/raml_mca_16+3.yaml"),
    "raml": CASES["raml19"],
}


def _steps(model, cfg, batches):
    optimizer = Trainer.build_optimizer(cfg, model)  # the method's trainable parameters and LR factors
    model.train()
    for batch in batches:
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("test_id", list(FINETUNE_CASES))
def test_fine_tuning_trains_only_what_the_official_recipe_trains(test_id):
    case = FINETUNE_CASES[test_id]
    cfg = case.cfg("SOLVER.BASE_LR", "0.01")
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    probe = image_input(torch.randint(0, 256, (3, 40, 56)).float())
    model.eval()
    with torch.no_grad():
        closed_before = model(probe)[0]["sem_seg"]
    batches = [pixel_batch(2, (48, 64), seed=s, raw_outliers=test_id == "rpl") for s in range(2)]
    losses = _steps(model, cfg, batches)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    prefixes = TRAINED[test_id]
    if prefixes is None:
        assert any(k.startswith("backbone.mod1.") for k in changed)
        assert any(k.startswith("ood_method.logits_ood.") for k in changed)
        assert any(k.endswith("running_mean") and k.startswith("backbone.") for k in changed)  # BN trains too
        return
    frozen_changed = sorted(k for k in changed if not k.startswith(prefixes))
    assert not frozen_changed, frozen_changed[:10]
    trained = [name for name, _ in model.named_parameters() if name.startswith(prefixes)]
    if test_id == "raml_mca":  # the held-out classes' rows get no gradient (void in training)
        trained = [n for n in trained if not n.startswith(("sem_seg_head.conv2.", "sem_seg_head.conv3."))]
        assert "sem_seg_head.conv3.weight" in changed  # the MCA conv is the head's
    assert trained and all(name in changed for name in trained), sorted(set(trained) - changed)
    if test_id == "pebal":
        assert not torch.equal(before["sem_seg_head.final.6.weight"][19], after["sem_seg_head.final.6.weight"][19])
    if test_id == "rpl":  # the closed-set prediction is the frozen network's, unchanged
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(probe)[0]["sem_seg"], closed_before)
        lrs = {g["lr"] for g in Trainer.build_optimizer(cfg, model).param_groups}
        assert lrs == {0.01, 0.1}
