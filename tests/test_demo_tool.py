"""tools/demo.py on a randomly initialised tiny Mask2Former: files per image, values against
Detectron2's DefaultPredictor, grayscale / RGBA / 16-bit inputs, bad inputs."""

import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from PIL import Image

from rba_plugin.config import get_cfg
from rba_plugin.data import CITYSCAPES_STUFF_COLORS
from rba_plugin.utils.prediction_files import read_score_png16

from .conftest import REPO_ROOT
from .pixel_e2e_utils import load_tool, random_checkpoint

CONFIG = str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl.yaml")
TEST_SIZE = ("INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128")



@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("model"), CONFIG)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """name -> (file, what the image is as RGB uint8, converted independently here)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (50, 30), dtype=np.uint8)
    rgba = rng.integers(0, 256, (33, 45, 4), dtype=np.uint8)
    gray16 = (rng.integers(0, 256, (36, 36)).astype(np.uint16) * 257)  # 8-bit values spread over 16 bits
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(gray16).save(folder / "gray16.png")
    return folder, {
        "rgb": rgb,
        "gray": np.repeat(gray[:, :, None], 3, axis=2),
        "rgba": rgba[:, :, :3],
        "gray16": np.repeat((gray16 // 257).astype(np.uint8)[:, :, None], 3, axis=2),
    }


def _reference_outputs(weights, images):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["MODEL.WEIGHTS", weights, *TEST_SIZE])
    predictor = DefaultPredictor(cfg)  # Detectron2's own: BGR input, resize, original-size output
    return {name: predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["sem_seg"] for name, rgb in images.items()}


def test_demo_writes_every_file_with_the_model_values(weights, inputs, tmp_path):
    folder, images = inputs
    out = tmp_path / "out"
    assert load_tool("demo").main(["--config-file", CONFIG, "--input", str(folder), "--output", str(out),
                         "--opts", "MODEL.WEIGHTS", weights, *TEST_SIZE]) == 0
    reference = _reference_outputs(weights, images)
    palette = np.array(CITYSCAPES_STUFF_COLORS, np.uint8)
    for name, rgb in images.items():
        h, w = rgb.shape[:2]
        sem = reference[name]
        expected_score = -torch.tanh(sem).sum(0).numpy()  # RbA (the model has no ood_score here)
        score = np.load(out / f"{name}_score.npy")
        assert score.dtype == np.float32 and score.shape == (h, w)
        np.testing.assert_allclose(score, expected_score, atol=1e-4, err_msg=name)
        decoded = read_score_png16(str(out / f"{name}_score.png"))
        span = float(expected_score.max() - expected_score.min())
        assert np.abs(decoded - score).max() <= span / 65535 + 1e-6
        colours = np.asarray(Image.open(out / f"{name}_sem_seg.png"))
        np.testing.assert_array_equal(colours, palette[sem.argmax(0).numpy()], err_msg=name)
        overlay = np.asarray(Image.open(out / f"{name}_anomaly.png"))
        assert overlay.shape == (h, w, 3) and not np.array_equal(overlay, rgb)
        assert np.asarray(Image.open(out / f"{name}_panel.png")).shape[0] == h
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_named_score_is_computed_from_class_scores(weights, inputs, tmp_path):
    folder, images = inputs
    assert load_tool("demo").main(["--config-file", CONFIG, "--input", str(folder / "rgb.png"), "--output", str(tmp_path),
                         "--score", "msp", "--score-format", "npy", "--opts", "MODEL.WEIGHTS", weights, *TEST_SIZE]) == 0
    sem = _reference_outputs(weights, {"rgb": images["rgb"]})["rgb"]
    expected = -torch.softmax(sem, 0).max(0).values.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "rgb_score.npy"), expected, atol=1e-5)
    assert not (tmp_path / "rgb_score.png").exists()


def test_unknown_score_fails_before_writing_anything(weights, inputs, tmp_path):
    folder, _ = inputs
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"unknown anomaly score 'nope'; known scores: .*rba"):
        load_tool("demo").main(["--config-file", CONFIG, "--input", str(folder), "--output", str(out), "--score", "nope",
                      "--opts", "MODEL.WEIGHTS", weights])
    assert not out.exists()


def test_corrupt_image_is_named_and_the_others_are_written_whole(weights, inputs, tmp_path):
    folder, _ = inputs
    bad = tmp_path / "broken.png"
    bad.write_bytes((folder / "rgb.png").read_bytes()[:60])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"1 of 3 images could not be read .*\n  cannot read image {bad}"):
        load_tool("demo").main(["--config-file", CONFIG, "--input", str(folder / "rgb.png"), str(bad), str(folder / "gray.png"),
                      "--output", str(out), "--opts", "MODEL.WEIGHTS", weights, *TEST_SIZE])
    files = ["anomaly.png", "panel.png", "score.npy", "score.png", "sem_seg.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_{f}" for s in ("rgb", "gray") for f in files)
    assert np.load(out / "rgb_score.npy").shape == (40, 70)
