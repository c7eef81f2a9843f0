"""Bad input, everywhere: one table of bad inputs and the error each must give.

Every row builds its bad input under tmp_path and returns (action, expected exception, regex the
message must match); the regex names the file, key or value at fault. Rows whose input is odd but
legitimate (grayscale / RGBA images for the demo) expect a conversion, not an error.
"""
import re
import uuid
from pathlib import Path
from typing import Callable, Optional, Tuple

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from rba_plugin.config import get_cfg
from rba_plugin.data import load_anomaly_label, register_anomaly_dataset
from rba_plugin.data.dataset_mappers import build_train_mapper
from rba_plugin.engine import CheckpointMismatchError, CheckpointReadError, Trainer, SafeCheckpointer
from rba_plugin.data.image_io import read_rgb_image
from rba_plugin.modeling.ood import compute_ood_score

from .conftest import REPO_ROOT

M2F_CONFIG = REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl.yaml"
PIXEL_CONFIG = REPO_ROOT / "configs/synthcity/pixel/closed_set.yaml"
Row = Tuple[Callable[[], object], Optional[type], str]


def _anomaly_frames(root: Path, values=(0, 1), label_hw=(12, 16), image_hw=(12, 16), corrupt_image=False) -> str:
    """images/f0.png + labels/f0_label.png under ``root``; registers them and returns the name."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    label = np.zeros(label_hw, np.uint8)
    label.flat[: len(values)] = values
    cv2.imwrite(str(root / "labels" / "f0_label.png"), label)
    image_file = root / "images" / "f0.png"
    if corrupt_image:
        image_file.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    else:
        cv2.imwrite(str(image_file), np.zeros((*image_hw, 3), np.uint8))
    return _register(root / "images", root / "labels")


def _register(image_root, label_root) -> str:
    name = f"bad_input_{uuid.uuid4().hex[:8]}"
    register_anomaly_dataset(name, image_root, label_root, image_suffix=".png", label_suffix="_label.png",
                             label_map={0: 0, 1: 1, 255: 255}, layout="  images/<id>.png\n  labels/<id>_label.png")
    return name


def _semantic_frame(root: Path, label_value=3, label_hw=(32, 48), corrupt=None) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    image, label = root / "scene.png", root / "scene_label.png"
    cv2.imwrite(str(image), np.full((32, 48, 3), 90, np.uint8))
    cv2.imwrite(str(label), np.full(label_hw, label_value, np.uint8))
    if corrupt == "image":
        image.write_bytes(image.read_bytes()[:70])  # truncated PNG: PIL opens it, then fails
    return {"file_name": str(image), "sem_seg_file_name": str(label), "height": 32, "width": 48}


def _m2f_cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(M2F_CONFIG))
    cfg.merge_from_list(["INPUT.CROP.ENABLED", "False", "INPUT.MIN_SIZE_TRAIN", "(32,)", *opts])
    return cfg


def _train_mapper():
    return build_train_mapper(_m2f_cfg())


# ----------------------------------------------------------------------------- the table rows


def missing_dataset_root(tmp: Path) -> Row:
    name = _register(tmp / "gone" / "images", tmp / "gone" / "labels")
    return lambda: DatasetCatalog.get(name), FileNotFoundError, re.escape(str(tmp / "gone")) + r".*does not exist.*Expected layout.*DETECTRON2_DATASETS"


def wrong_layout(tmp: Path) -> Row:
    # Labels where expected, but the images sit beside them instead of under images/.
    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    cv2.imwrite(str(tmp / "labels" / "f0_label.png"), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(tmp / "labels" / "f0.png"), np.zeros((4, 4, 3), np.uint8))
    name = _register(tmp / "images", tmp / "labels")
    return lambda: DatasetCatalog.get(name), ValueError, "cannot read image " + re.escape(str(tmp / "images" / "f0.png"))


def empty_dataset(tmp: Path) -> Row:
    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    name = _register(tmp / "images", tmp / "labels")
    return lambda: DatasetCatalog.get(name), FileNotFoundError, r"no label file matching '\*_label.png' under " + re.escape(str(tmp / "labels"))


def empty_training_dataset(tmp: Path) -> Row:
    name = f"bad_input_empty_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(ignore_label=255, evaluator_type="sem_seg")
    cfg = _m2f_cfg("DATASETS.TRAIN", f"('{name}',)", "DATALOADER.NUM_WORKERS", "0")
    return lambda: Trainer.build_train_loader(cfg), AssertionError, f"Dataset '{name}' is empty"


def anomaly_label_outside_mapping(tmp: Path) -> Row:
    name = _anomaly_frames(tmp, values=(0, 1, 7))
    label_file = str(tmp / "labels" / "f0_label.png")
    return lambda: load_anomaly_label(DatasetCatalog.get(name)[0]), ValueError, re.escape(label_file) + r" has values \[7\] outside"


def train_label_outside_classes(tmp: Path) -> Row:
    record = _semantic_frame(tmp, label_value=40)
    return lambda: _train_mapper()(record), ValueError, re.escape(record["sem_seg_file_name"]) + r": label values \[40\]"


def anomaly_label_size_mismatch(tmp: Path) -> Row:
    name = _anomaly_frames(tmp, label_hw=(10, 16))
    return (lambda: load_anomaly_label(DatasetCatalog.get(name)[0]), ValueError,
            re.escape(str(tmp / "labels" / "f0_label.png")) + r" is 10x16 but image .*f0.png is 12x16")


def train_label_size_mismatch(tmp: Path) -> Row:
    record = _semantic_frame(tmp, label_hw=(30, 48))
    return lambda: _train_mapper()(record), ValueError, re.escape(record["sem_seg_file_name"]) + r": label is 30x48 but its image .* is 32x48"


def corrupt_image_in_dataset(tmp: Path) -> Row:
    name = _anomaly_frames(tmp, corrupt_image=True)
    return lambda: DatasetCatalog.get(name), ValueError, "cannot read image " + re.escape(str(tmp / "images" / "f0.png"))


def corrupt_image_in_training(tmp: Path) -> Row:
    record = _semantic_frame(tmp, corrupt="image")
    return lambda: _train_mapper()(record), ValueError, "cannot read image " + re.escape(record["file_name"])


def config_key_typo_on_command_line(tmp: Path) -> Row:
    # yacs raises AssertionError on the command line (KeyError for files); the key is named.
    return (lambda: get_cfg().merge_from_list(["MODEL.MASK_FORMER.NUM_OBJECT_QUERY", "10"]), AssertionError,
            r"Non-existent key: MODEL.MASK_FORMER.NUM_OBJECT_QUERY")


def config_key_typo_in_file(tmp: Path) -> Row:
    path = tmp / "typo.yaml"
    path.write_text(f"_BASE_: {M2F_CONFIG}\nSOLVER:\n  BASE_LRR: 0.1\n")
    return lambda: get_cfg().merge_from_file(str(path)), KeyError, r"Non-existent config key: SOLVER.BASE_LRR"


def config_value_of_wrong_type(tmp: Path) -> Row:
    return (lambda: get_cfg().merge_from_list(["SOLVER.MAX_ITER", "'many'"]), ValueError,
            r"Type mismatch .*many.* for config key: SOLVER.MAX_ITER")


def config_bool_given_a_word(tmp: Path) -> Row:
    return (lambda: get_cfg().merge_from_list(["MODEL.ALLOW_PARTIAL_LOAD", "yes"]), ValueError,
            r"Type mismatch .*yes.* for config key: MODEL.ALLOW_PARTIAL_LOAD")


def unknown_score_name(tmp: Path) -> Row:
    return (lambda: compute_ood_score("rba_plus", torch.zeros(19, 4, 4)), ValueError,
            r"unknown anomaly score 'rba_plus'; known scores: .*energy.*rba")


def unknown_score_name_in_config(tmp: Path) -> Row:
    cfg = get_cfg()
    cfg.merge_from_file(str(PIXEL_CONFIG))
    cfg.MODEL.OOD.SCORES = ["maxlogits"]
    return lambda: build_model(cfg), ValueError, r"MODEL.OOD.SCORES: unknown anomaly score 'maxlogits'"


def image_smaller_than_model_minimum(tmp: Path) -> Row:
    cfg = get_cfg()
    cfg.merge_from_file(str(PIXEL_CONFIG))
    model = build_model(cfg).eval()
    inputs = [{"image": torch.zeros(3, 40, 60, dtype=torch.uint8), "file_name": "tiny.png"}]
    return (lambda: model(inputs), ValueError,
            r"tiny.png: image of 40x60 .* smaller than the model's minimum input size 256x256")


def missing_checkpoint(tmp: Path) -> Row:
    path = str(tmp / "model_final.pth")
    return lambda: SafeCheckpointer(torch.nn.Linear(2, 2)).load(path), FileNotFoundError, re.escape(path)


def corrupt_checkpoint(tmp: Path) -> Row:
    path = tmp / "model_final.pth"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:200])
    return lambda: SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(path)), CheckpointReadError, re.escape(str(path))


def checkpoint_of_another_model(tmp: Path) -> Row:
    path = tmp / "model_final.pth"
    torch.save({"model": torch.nn.Sequential(torch.nn.Linear(2, 2)).state_dict()}, path)
    return (lambda: SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(path)), CheckpointMismatchError,
            r"missing in the checkpoint \(2\):\s+weight\s+bias.*unexpected in the checkpoint \(2\):\s+0.weight\s+0.bias")


def _image_file(tmp: Path, array: np.ndarray) -> Callable[[], np.ndarray]:
    path = tmp / "input.png"
    Image.fromarray(array).save(path)
    return lambda: read_rgb_image(str(path))


def grayscale_image_for_demo(tmp: Path) -> Row:
    return _image_file(tmp, np.arange(12, dtype=np.uint8).reshape(3, 4) * 20), None, "converted"


def rgba_image_for_demo(tmp: Path) -> Row:
    return _image_file(tmp, np.full((3, 4, 4), 200, np.uint8)), None, "converted"


ROWS = [
    missing_dataset_root, wrong_layout, empty_dataset, empty_training_dataset, anomaly_label_outside_mapping,
    train_label_outside_classes, anomaly_label_size_mismatch, train_label_size_mismatch, corrupt_image_in_dataset,
    corrupt_image_in_training, config_key_typo_on_command_line, config_key_typo_in_file, config_value_of_wrong_type,
    config_bool_given_a_word, unknown_score_name, unknown_score_name_in_config, image_smaller_than_model_minimum,
    missing_checkpoint, corrupt_checkpoint, checkpoint_of_another_model, grayscale_image_for_demo, rgba_image_for_demo,
]


@pytest.mark.parametrize("row", ROWS, ids=[r.__name__ for r in ROWS])
def test_bad_input_gives_a_clear_error(row, tmp_path):
    action, error, pattern = row(tmp_path)
    if error is None:  # odd but legitimate: converted to 3 x 8-bit RGB of the same size
        image = action()
        assert image.dtype == np.uint8 and image.shape == (3, 4, 3)
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        return
    with pytest.raises(error) as raised:
        action()
    message = str(raised.value.args[0]) if isinstance(raised.value, KeyError) else str(raised.value)
    assert re.search(pattern, message, re.DOTALL), f"message does not match {pattern!r}:\n{message}"
