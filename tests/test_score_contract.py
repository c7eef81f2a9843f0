"""One anomaly-score contract for both meta-architectures: MODEL.OOD.SCORES (and RbA's alias)
read by every model, scores refused at build when the model lacks their inputs, every
registered score reachable where its inputs exist, and tools/demo.py --score for each."""
import importlib.util

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from rba_plugin.config import get_cfg
from rba_plugin.engine import SafeCheckpointer
from rba_plugin.modeling.ood import available_scores, gaussian_smooth, get_score, scores_for_inputs

from .conftest import REPO_ROOT
from .pixel_utils import tiny_pixel_cfg

M2F = REPO_ROOT / "configs/synthcity/mask2former"
BUILTIN_SCORES = ["densehybrid", "energy", "entropy", "maxlogit", "msp", "neg_logit_sum", "raml", "rba",
                  "unknown_probability"]
CLASS_SCORE_SCORES = ["energy", "entropy", "maxlogit", "msp", "neg_logit_sum", "rba"]


def m2f_cfg(name="maskformer2_R18_1dl.yaml", *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(M2F / name))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", *opts])
    return cfg


def pixel_cfg(method):
    cfg = tiny_pixel_cfg(method.split("-")[0])
    if method == "RAML-mca":
        cfg.MODEL.RAML.STAGE = "mca"
    return cfg


# Every model kind of the plugin: (name, config builder).
MODELS = {
    "MaskFormer": lambda: m2f_cfg(),
    "MaskFormer+DenseHybrid": lambda: m2f_cfg("maskformer2_R18_1dl_densehybrid_finetune.yaml"),
    "ClosedSet": lambda: pixel_cfg("ClosedSet"),
    "RPL": lambda: pixel_cfg("RPL"),
    "PEBAL": lambda: pixel_cfg("PEBAL"),
    "RAML": lambda: pixel_cfg("RAML"),
    "VCA": lambda: pixel_cfg("VCA"),
}


def _with_scores(cfg, names, kernel=0):
    cfg.MODEL.OOD.SCORES = list(names)
    cfg.MODEL.MASK_FORMER.OOD_SCORES = []
    cfg.MODEL.OOD.SMOOTHING_KERNEL = kernel
    return cfg


def _infer(model, h=64, w=64):
    torch.manual_seed(3)
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    with torch.no_grad():
        return model.eval()([{"image": image}])[0]


@pytest.fixture(scope="module")
def supported():
    """{model kind: the scores its outputs allow}."""
    out = {}
    for kind, make in MODELS.items():
        model = build_model(make())
        out[kind] = scores_for_inputs(model.scorer.available_inputs)
    return out


def test_every_registered_score_is_reachable_and_class_scores_from_both_branches(supported):
    builtin = [s for s in available_scores() if s in BUILTIN_SCORES]
    assert builtin == BUILTIN_SCORES
    reachable = set().union(*supported.values())
    assert set(BUILTIN_SCORES) <= reachable
    for kind, names in supported.items():
        assert set(CLASS_SCORE_SCORES) <= set(names), kind  # both meta-architectures
    assert "densehybrid" in supported["MaskFormer+DenseHybrid"] and "densehybrid" not in supported["MaskFormer"]
    assert "unknown_probability" in supported["VCA"] and "raml" in supported["RAML"]


@pytest.mark.parametrize("kind", list(MODELS))
def test_each_model_outputs_each_score_it_supports(kind, supported):
    names = supported[kind]
    torch.manual_seed(0)
    model = build_model(_with_scores(MODELS[kind](), names))
    out = _infer(model)
    assert list(out["ood_scores"]) == names and torch.equal(out["ood_score"], out["ood_scores"][names[0]])
    for name in names:
        assert out["ood_scores"][name].shape == (64, 64) and torch.isfinite(out["ood_scores"][name]).all(), name
    if kind != "RPL":  # RPL's class scores are its residual-path logits, not its sem_seg
        for name in CLASS_SCORE_SCORES:
            torch.testing.assert_close(out["ood_scores"][name], get_score(name)({"class_scores": out["sem_seg"]}))


def test_scores_a_model_cannot_produce_are_refused_at_build_naming_everything():
    with pytest.raises(ValueError, match=r"MODEL.OOD.SCORES: score 'densehybrid' needs the model output\(s\) outlier_logits"
                                         r".*DENSE_HYBRID_LOSS.*produces class_scores"):
        build_model(_with_scores(m2f_cfg(), ["rba", "densehybrid"]))
    with pytest.raises(ValueError, match=r"MODEL.OOD.SCORES: score 'unknown_probability' needs the model output\(s\) "
                                         r"open_set_logits, which the per-pixel method ClosedSet does not produce"):
        build_model(_with_scores(pixel_cfg("ClosedSet"), ["unknown_probability"]))
    with pytest.raises(ValueError, match=r"MODEL.OOD.SCORES: unknown anomaly score 'rbaa'"):
        build_model(_with_scores(pixel_cfg("VCA"), ["rbaa"]))


def test_default_scores_and_smoothing_are_each_models_own():
    defaults = {kind: (build_model(make()).scorer.names, build_model(make()).scorer.smoothing_kernel)
                for kind, make in MODELS.items() if kind != "MaskFormer+DenseHybrid"}
    assert defaults == {"MaskFormer": (["rba"], 0), "ClosedSet": (["maxlogit"], 0), "RPL": (["energy"], 7),
                        "PEBAL": (["energy"], 7), "RAML": (["raml"], 0), "VCA": (["unknown_probability"], 0)}


def test_smoothing_is_one_key_for_both_branches():
    torch.manual_seed(0)
    plain = build_model(_with_scores(pixel_cfg("ClosedSet"), ["maxlogit"]))
    smoothed = build_model(_with_scores(pixel_cfg("ClosedSet"), ["maxlogit"], kernel=5))
    smoothed.load_state_dict(plain.state_dict())
    a, b = _infer(plain), _infer(smoothed)
    torch.testing.assert_close(b["ood_score"], gaussian_smooth(a["ood_score"], 5, 1.0))


def test_rbas_key_is_an_alias():
    cfg = m2f_cfg("maskformer2_R18_1dl.yaml", "MODEL.MASK_FORMER.OOD_SCORES", "['msp', 'rba']",
                  "MODEL.MASK_FORMER.OOD_SCORE_SMOOTHING", "True")
    scorer = build_model(cfg).scorer
    assert scorer.names == ["msp", "rba"] and scorer.smoothing_kernel == 7
    cfg = m2f_cfg("maskformer2_R18_1dl.yaml", "MODEL.MASK_FORMER.OOD_SCORES", "['msp']", "MODEL.OOD.SCORES", "['rba']")
    with pytest.raises(ValueError, match=r"MODEL.OOD.SCORES=\['rba'\] and its alias MODEL.MASK_FORMER.OOD_SCORES=\['msp'\]"):
        build_model(cfg)
    cfg = m2f_cfg("maskformer2_R18_1dl.yaml", "MODEL.OOD.SMOOTHING_KERNEL", "4")
    with pytest.raises(ValueError, match="MODEL.OOD.SMOOTHING_KERNEL = 4: must be .* an odd size"):
        build_model(cfg)


# --- tools/demo.py --score ------------------------------------------------------------------------


def _demo():
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config_file(cfg, path):
    path.write_text(cfg.dump())
    return str(path)


@pytest.mark.parametrize("kind,test_size", [("MaskFormer+DenseHybrid", ("64", "128")), ("VCA", ("64", "64"))])
def test_demo_shows_every_score_the_model_produces(kind, test_size, supported, tmp_path):
    cfg = MODELS[kind]()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", test_size[0], "INPUT.MAX_SIZE_TEST", test_size[1]])
    torch.manual_seed(0)
    model = build_model(cfg)
    SafeCheckpointer(model, str(tmp_path)).save("model_final")
    config_file = _config_file(cfg, tmp_path / "config.yaml")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "street.png")
    demo = _demo()
    for name in supported[kind]:
        out = tmp_path / f"out_{name}"
        assert demo.main(["--config-file", config_file, "--input", str(tmp_path / "street.png"), "--output", str(out),
                          "--score", name, "--opts", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]) == 0
        score = np.load(out / "street_score.npy")
        assert score.shape == (64, 64) and np.isfinite(score).all(), name
    with pytest.raises(ValueError, match="needs the model output"):
        missing = "raml" if kind != "RAML" else "densehybrid"
        demo.main(["--config-file", config_file, "--input", str(tmp_path / "street.png"), "--output",
                   str(tmp_path / "bad"), "--score", missing, "--opts", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")])
