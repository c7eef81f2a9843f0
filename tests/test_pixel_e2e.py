"""The per-pixel branch end to end through tools/train_net.py on a tiny synthetic benchmark:
optimizer and mapper wiring, then closed-set training and every method's fine-tuning and OOD
evaluation."""
import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from rba_plugin.config import get_cfg
from rba_plugin.data.dataset_mappers import PixelSemanticOutlierMapper, build_train_mapper
from rba_plugin.data.dataset_mappers.pixel_semantic_outlier import fit_to_size
from rba_plugin.engine import Trainer

from .conftest import REPO_ROOT
from .pixel_e2e_utils import load_tool, register_tiny_synthcity, tiny_run_opts
from .pixel_utils import tiny_pixel_cfg

OOD_KEYS = ("AP", "FPR95", "AUROC", "sIoU", "PPV", "mean_F1", "mIoU")
PREFIX = "e2e_pixel_synth"


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    return register_tiny_synthcity(tmp_path_factory.mktemp("synth"), PREFIX)


def synth_cfg(method_file, prefix, output_dir, *extra):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs/synthcity/pixel" / method_file))
    cfg.merge_from_list(tiny_run_opts(prefix, output_dir, 2) + list(extra))
    return cfg


def test_optimizer_groups_follow_the_method():
    cfg = tiny_pixel_cfg("RPL")
    cfg.SOLVER.OPTIMIZER = "ADAM"
    cfg.SOLVER.BASE_LR = 0.01
    model = build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.Adam)
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    expand = {id(p) for n, p in model.named_parameters() if n.startswith("ood_method.residual_block.expand.")}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(by_lr) == {0.01, 0.01 * cfg.MODEL.RPL.EXPAND_LR_MULT}
    assert by_lr[0.01 * cfg.MODEL.RPL.EXPAND_LR_MULT] == expand
    assert set().union(*by_lr.values()) == trainable  # frozen parameters never reach the optimizer
    assert all(n.startswith("ood_method.residual_block.") for n, p in model.named_parameters() if id(p) in trainable)

    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="LAMB"):
        Trainer.build_optimizer(cfg, model)
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"  # one builder for both branches: supported here too
    assert type(Trainer.build_optimizer(cfg, model)).__name__ == "FullModelGradientClippingSGD"


def test_fit_to_size_centre_crops_and_pads():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    label = np.arange(24, dtype=np.int64).reshape(4, 6)
    out_image, out_label = fit_to_size(image, label, (6, 4), ignore_label=255)
    # width 6 -> 4: columns 1..4; height 4 -> 6: one padded row above and below
    assert out_label.shape == (6, 4) and out_image.shape == (6, 4, 3)
    assert (out_label[0] == 255).all() and (out_label[5] == 255).all()
    np.testing.assert_array_equal(out_label[1:5], label[:, 1:5])
    np.testing.assert_array_equal(out_image[1:5], image[:, 1:5])
    assert (out_image[0] == 0).all()


def test_mapper_pastes_outliers_and_gives_corocl_raw_images(tiny_synth, tmp_path):
    cfg = synth_cfg("rpl_corocl.yaml", tiny_synth, tmp_path)
    # The trainer gives the mapper the extra inputs the model asks for (CoroCL's raw images).
    assert build_model(cfg).extra_training_inputs == ("outlier_image",)
    mapper = build_train_mapper(cfg, extra_inputs=("outlier_image",))
    assert isinstance(mapper, PixelSemanticOutlierMapper) and mapper.raw_outliers
    np.random.seed(0)
    record = DatasetCatalog.get(f"{tiny_synth}_train")[0]
    out = mapper(record)
    assert out["image"].shape == (3, 128, 128) and out["image"].dtype == torch.uint8
    assert out["sem_seg"].shape == (128, 128) and (out["sem_seg"] == 254).any()  # OOD_PROB is 1
    assert "instances" not in out
    assert out["outlier_image"].shape == (3, 128, 128) and out["outlier_image"].dtype == torch.uint8
    raw = out["outlier_sem_seg"]
    assert set(raw.unique().tolist()) == {0, 254, 255}  # object, its background, padding (48 px pool)
    # the object pixels of the raw image are those of a pool mask
    assert (raw == 254).sum() > 0 and (raw == 255).sum() == 128 * 128 - 48 * 48

    assert build_model(synth_cfg("rpl.yaml", tiny_synth, tmp_path)).extra_training_inputs == ()
    rpl = build_train_mapper(synth_cfg("rpl.yaml", tiny_synth, tmp_path))  # RPL without CoroCL
    assert rpl.outlier_paster is not None and not rpl.raw_outliers
    assert "outlier_image" not in rpl(record)

    cfg = synth_cfg("closed_set.yaml", tiny_synth, tmp_path)
    closed = build_train_mapper(cfg)
    assert closed.outlier_paster is None and not closed.raw_outliers
    assert (closed(record)["sem_seg"] != 254).all()


def read_ood_results(output_dir, dataset):
    with open(output_dir / "inference" / f"ood_{dataset}.json") as f:
        return json.load(f)["results"]


@pytest.mark.slow
def test_every_method_trains_and_evaluates_through_train_net(tiny_synth, tmp_path):
    train_net = load_tool("train_net")

    def run(method_file, name, *extra):
        out = tmp_path / name
        args = default_argument_parser().parse_args(
            ["--config-file", str(REPO_ROOT / "configs/synthcity/pixel" / method_file), *tiny_run_opts(tiny_synth, out, 2), *extra]
        )
        train_net.main(args)
        assert (out / "model_final.pth").is_file()
        return out, read_ood_results(out, f"{tiny_synth}_anomaly")

    base_dir, base = run("closed_set.yaml", "closed_set")
    weights = ("MODEL.WEIGHTS", str(base_dir / "model_final.pth"))
    results = {"closed_set": base}
    for method in ("rpl_corocl", "pebal", "densehybrid", "raml", "vca"):
        _, results[method] = run(f"{method}.yaml", method, *weights)
    for method, values in results.items():
        for key in OOD_KEYS:
            assert key in values, f"{method}: no {key}"
            assert math.isnan(values[key]) or 0.0 <= values[key] <= 100.0, (method, key, values[key])
        assert not math.isnan(values["AP"]) and not math.isnan(values["AUROC"]), method
    # RPL and RAML's anomaly stage keep the closed-set prediction: same mIoU as the base model.
    assert results["rpl_corocl"]["mIoU"] == base["mIoU"]
    assert results["raml"]["mIoU"] == base["mIoU"]
    # RPL scores with energy, RAML with its region score: their rankings differ from max-logit.
    assert results["rpl_corocl"]["AUROC"] != base["AUROC"]
    # VCA reports its open-set metric; the others predict no unknown class.
    assert 0.0 <= results["vca"]["unknown_IoU"] <= 100.0
    assert all("unknown_IoU" not in results[m] for m in ("closed_set", "rpl_corocl", "pebal", "densehybrid", "raml"))
    # Fine-tuned checkpoints carry the method's trained modules, started from the base.
    rpl_state = torch.load(tmp_path / "rpl_corocl" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    base_state = torch.load(base_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("ood_method.residual_block.projector") for k in rpl_state)
    assert torch.equal(rpl_state["sem_seg_head.predictor.weight"], base_state["sem_seg_head.predictor.weight"])
    log = (tmp_path / "rpl_corocl" / "log.txt").read_text()
    assert "loss_corocl" in log
