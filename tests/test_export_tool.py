"""tools/export_model.py and the predictor of an exported file: ``ExportedPredictor`` (and
``tools/demo.py --onnx`` / ``--torchscript``) give ``AnomalyPredictor``'s outputs, test-time resize
included, from the file alone."""

import numpy as np
import pytest

from rba_plugin.config import load_config, set_anomaly_scores
from rba_plugin.engine.predictor import AnomalyPredictor
from rba_plugin.export import ExportedPredictor

from .conftest import REPO_ROOT
from .pixel_e2e_utils import load_tool, random_checkpoint

CONFIG = str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl.yaml")
TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]
ATOL = 1e-4



@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("model"), CONFIG)


@pytest.fixture(scope="module", params=["onnx", pytest.param("torchscript", marks=pytest.mark.slow)])
def exported(request, weights, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / f"model.{request.param}")
    # Overrides after --score, as in the tool's usage line: they must not be taken for scores.
    argv = ["--config-file", CONFIG, "--format", request.param, "--output", path, "--sample-size", "64", "96",
            "--score", "rba", "msp", "MODEL.WEIGHTS", weights, *TEST_SIZE]
    assert load_tool("export_model").main(argv) == 0
    return request.param, path


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)  # resized to 64 x 112


def test_tool_splits_trailing_overrides_from_scores():
    args = load_tool("export_model").parse_args(
        ["--config-file", "c.yaml", "--format", "onnx", "--output", "m.onnx", "--score", "rba", "msp",
         "MODEL.WEIGHTS", "w.pth", "INPUT.FORMAT", "BGR"])
    assert args.score == ["rba", "msp"] and args.opts == ["MODEL.WEIGHTS", "w.pth", "INPUT.FORMAT", "BGR"]
    args = load_tool("export_model").parse_args(["--config-file", "c", "--format", "torchscript", "--output", "m",
                                             "MODEL.WEIGHTS", "w"])
    assert args.score is None and args.opts == ["MODEL.WEIGHTS", "w"]


@pytest.mark.parametrize("score", ["rba", "msp"])
def test_exported_predictor_gives_the_pytorch_predictors_outputs(exported, weights, image, score):
    _, path = exported
    cfg = load_config(CONFIG, ["MODEL.WEIGHTS", weights, *TEST_SIZE])
    expected = AnomalyPredictor(cfg, score_name=score)(image)
    predictor = ExportedPredictor(path, score_name=score)
    got = predictor(image)
    assert got["sem_seg"].shape == expected["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 40, 70)
    assert (got["sem_seg"] - expected["sem_seg"]).abs().max().item() <= ATOL
    assert got["anomaly_name"] == expected["anomaly_name"] == score
    assert got["anomaly"].dtype == np.float32 and np.abs(got["anomaly"] - expected["anomaly"]).max() <= ATOL
    assert set(got["ood_scores"]) == {"rba", "msp"}
    # The RbA map through the exported graph is the PyTorch model's with that score configured.
    rba = AnomalyPredictor(set_anomaly_scores(cfg, ["rba"]))(image)["anomaly"]
    assert np.abs(got["ood_scores"]["rba"].numpy() - rba).max() <= ATOL


def test_exported_predictor_refuses_a_score_it_does_not_hold(exported):
    _, path = exported
    with pytest.raises(ValueError, match=r"exported with the score\(s\) rba, msp, not 'energy'"):
        ExportedPredictor(path, score_name="energy")


def test_demo_runs_the_exported_file_like_the_model(exported, weights, image, tmp_path):
    from PIL import Image

    fmt, path = exported
    Image.fromarray(image).save(tmp_path / "img.png")
    demo = load_tool("demo")
    assert demo.main([f"--{fmt}", path, "--input", str(tmp_path / "img.png"), "--output", str(tmp_path / "x"),
                      "--score", "msp", "--score-format", "npy"]) == 0
    assert demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "img.png"), "--output", str(tmp_path / "p"),
                      "--score", "msp", "--score-format", "npy", "--opts", "MODEL.WEIGHTS", weights, *TEST_SIZE]) == 0
    ours, theirs = np.load(tmp_path / "x" / "img_score.npy"), np.load(tmp_path / "p" / "img_score.npy")
    assert ours.shape == (40, 70) and np.abs(ours - theirs).max() <= ATOL
    assert (np.asarray(Image.open(tmp_path / "x" / "img_sem_seg.png")).shape == (40, 70, 3))
    with pytest.raises(SystemExit):
        demo.parse_args([f"--{fmt}", path, "--config-file", CONFIG, "--input", "a", "--output", "b"])


def test_tool_refuses_a_model_without_weights(tmp_path):
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        load_tool("export_model").main(["--config-file", CONFIG, "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_tool_refuses_a_negative_tolerance_before_exporting(value, capsys):
    with pytest.raises(SystemExit):
        load_tool("export_model").parse_args(["--config-file", "c.yaml", "--output", "m.onnx", "--tolerance", value])
    assert "--tolerance: must be a number >= 0" in capsys.readouterr().err
