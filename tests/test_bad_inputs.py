"""Bad input, everywhere: one table of bad inputs and the error each must give.

Every row builds its bad input under tmp_path and returns (action, expected exception, regex the
message must match); the regex names the file, key or value at fault. Rows whose input is odd but
legitimate (grayscale / RGBA images for the demo) expect a conversion, not an error.

Then the inputs real users bring, each kind with the right value: their image and label files
(one reader everywhere), checkpoints (covering the model for evaluation, named when unreadable),
config values (named at build time), non-finite values in training (stopped before any loss),
batches of mixed sizes (outputs as for single images) and image sizes (any, in both branches).
"""
import importlib.util
import logging
import pickle
import re
import uuid
from pathlib import Path
from typing import Callable, Optional, Tuple

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
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
    config_bool_given_a_word, unknown_score_name, unknown_score_name_in_config,
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


# ============================================================================ users' files
# One reader for images and one for labels (rba_plugin.data.image_io) behind registration, both
# training mappers, the evaluation loader and the demo. Every expected array below is decoded
# here independently with PIL / numpy.


def _independent_rgb(path: Path) -> np.ndarray:
    """The upright 8-bit RGB of ``path`` computed here: EXIF rotation by hand, 16-bit samples / 257."""
    with Image.open(path) as image:
        orientation = image.getexif().get(0x0112, 1)
        if image.mode.startswith("I"):
            array = np.asarray(image).astype(np.float64)
            rgb = np.repeat(np.rint(array * 255.0 / 65535.0).astype(np.uint8)[:, :, None], 3, axis=2)
        else:
            rgb = np.asarray(image.convert("RGB"))
    # Orientation 6: the stored pixels are to be rotated 90 degrees clockwise to be upright.
    return np.ascontiguousarray(np.rot90(rgb, k=-1)) if orientation == 6 else rgb


def _odd_image(folder: Path, kind: str) -> Path:
    """One image file of the kinds users feed (camera JPEGs with EXIF rotation, 16-bit PNGs, ...)."""
    rng = np.random.default_rng(3)
    path = folder / f"{kind}.png"
    if kind == "gray16":  # a 16-bit gradient: saturated by convert("RGB"), mean 127.4 when scaled
        Image.fromarray(np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (20, 1))).save(path)
    elif kind == "gray8":
        Image.fromarray(rng.integers(0, 256, (20, 48), dtype=np.uint8)).save(path)
    elif kind == "palette":
        image = Image.fromarray(rng.integers(0, 4, (20, 48), dtype=np.uint8), mode="P")
        image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 250, 170, 30] + [0] * 756)
        image.save(path)
    elif kind == "rgba":
        Image.fromarray(rng.integers(0, 256, (20, 48, 4), dtype=np.uint8)).save(path)
    elif kind == "exif_rotated_jpeg":
        path = folder / "camera.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # stored landscape 20x48, shown portrait 48x20
        Image.fromarray(rng.integers(0, 256, (20, 48, 3), dtype=np.uint8)).save(path, quality=95, exif=exif)
    elif kind == "cmyk_jpeg":
        path = folder / "print.jpg"
        Image.fromarray(rng.integers(0, 256, (20, 48, 3), dtype=np.uint8)).convert("CMYK").save(path, quality=95)
    return path


ODD_IMAGES = ["gray16", "gray8", "palette", "rgba", "exif_rotated_jpeg", "cmyk_jpeg"]


@pytest.mark.parametrize("kind", ODD_IMAGES)
def test_every_path_reads_an_image_the_same_way(kind, tmp_path):
    from rba_plugin.data.anomaly_datasets import list_anomaly_frames
    from rba_plugin.data.dataset_mappers import (MaskFormerSemanticDatasetMapper, PixelSemanticOutlierMapper,
                                                 build_test_mapper)

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image_file = _odd_image(tmp_path / "images", kind)
    expected = _independent_rgb(image_file)
    h, w = expected.shape[:2]
    Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / "labels" / f"{image_file.stem}_label.png")

    # Registration records the size the reader returns (EXIF rotation included).
    record = list_anomaly_frames("odd", tmp_path / "images", tmp_path / "labels", image_file.suffix, "_label.png",
                                 {0: 0, 1: 1, 255: 255})[0]
    assert (record["height"], record["width"]) == (h, w)
    record["sem_seg_file_name"] = record["anomaly_label_file"]

    # The demo's reader.
    np.testing.assert_array_equal(read_rgb_image(str(image_file)), expected)
    # The evaluation loader (no resize: MIN_SIZE_TEST 0), in RGB and BGR.
    name = f"odd_{uuid.uuid4().hex[:8]}"
    register_anomaly_dataset(name, tmp_path / "images", tmp_path / "labels", image_suffix=image_file.suffix,
                             label_suffix="_label.png", label_map={0: 0, 1: 1, 255: 255})
    for fmt, array in (("RGB", expected), ("BGR", expected[:, :, ::-1])):
        cfg = get_cfg()
        cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "0", "INPUT.FORMAT", fmt, "DATALOADER.NUM_WORKERS", "0"])
        mapped = next(iter(Trainer.build_test_loader(cfg, name)))[0]
        np.testing.assert_array_equal(mapped["image"].permute(1, 2, 0).numpy(), array)
        assert (mapped["height"], mapped["width"]) == (h, w)
        np.testing.assert_array_equal(build_test_mapper(cfg)(record)["image"], mapped["image"])
    # The training mappers of both branches (no augmentation).
    common = dict(augmentations=[], image_format="RGB", ignore_label=255, num_classes=19)
    for mapper in (MaskFormerSemanticDatasetMapper(size_divisibility=-1, **common), PixelSemanticOutlierMapper(**common)):
        np.testing.assert_array_equal(mapper(record)["image"].permute(1, 2, 0).numpy(), expected)


def test_sixteen_bit_image_is_scaled_not_saturated_in_evaluation(tmp_path):
    # The issue's example: the evaluation loader (Detectron2's read_image) saturated a 16-bit
    # gradient to two values (mean 253.8), the demo scaled it (mean 127.4).
    from detectron2.data.detection_utils import read_image as detectron2_read_image

    from rba_plugin.data.dataset_mappers import build_test_mapper

    path = _odd_image(tmp_path, "gray16")
    samples = np.linspace(0, 65535, 48).astype(np.uint16)
    expected_mean = float(np.rint(samples / 257.0).mean())  # 0..255 in 48 even steps: 127.5
    assert len(np.unique(detectron2_read_image(str(path), "RGB"))) == 2  # the saturation this fixes
    cfg = get_cfg()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "0"])
    image = build_test_mapper(cfg)({"file_name": str(path)})["image"]
    assert float(image.double().mean()) == pytest.approx(expected_mean, abs=1e-9)
    assert len(torch.unique(image)) == 48
    assert float(read_rgb_image(str(path)).mean()) == pytest.approx(expected_mean, abs=1e-9)


def _palette_label(path: Path, indices: np.ndarray, palette=(0, 0, 0, 128, 0, 0)) -> None:
    """A "P"-mode PNG holding ``indices`` (what labelme and VOC tools save; VOC colours by default)."""
    label = Image.fromarray(indices.astype(np.uint8), mode="P")
    label.putpalette(list(palette) + [0] * (768 - len(palette)))
    label.save(path)


@pytest.mark.parametrize("palette", [(0, 0, 0, 128, 0, 0), (0, 0, 0, 255, 255, 255), (255, 255, 255, 0, 0, 0)],
                         ids=["voc_colours", "white_anomaly", "inverted"])
def test_palette_anomaly_label_is_read_as_indices(palette, tmp_path):
    # The example: a perfect detector scored AP = NaN (every anomaly pixel read as the
    # colour 0 = in-distribution); other palettes gave "values outside the mapping" or void pixels.
    from rba_plugin.evaluation import OODEvaluator

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    indices = []
    for i in range(3):
        label = np.zeros((16, 24), np.uint8)
        label[4 + i: 9 + i, 5: 12 + i] = 1
        indices.append(label)
        _palette_label(tmp_path / "labels" / f"f{i}_label.png", label, palette)
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "images" / f"f{i}.png")
    name = _register(tmp_path / "images", tmp_path / "labels")
    records = DatasetCatalog.get(name)
    for record, label in zip(records, indices):
        np.testing.assert_array_equal(load_anomaly_label(record), label)
    evaluator = OODEvaluator(name, distributed=False, write_curves=False, component_sizes=(1, 1))
    evaluator.reset()
    for record, label in zip(records, indices):
        evaluator.process([record], [{"ood_score": torch.as_tensor(label, dtype=torch.float32)}])
    results = evaluator.evaluate()[name]
    assert results["AP"] == pytest.approx(100.0) and results["FPR95"] == pytest.approx(0.0)

    # Training reads the same file as the same indices.
    record = dict(records[0], sem_seg_file_name=records[0]["anomaly_label_file"])
    mapped = _plain_semantic_mapper()(record)
    np.testing.assert_array_equal(mapped["sem_seg"].numpy(), indices[0])


def _plain_semantic_mapper():
    from rba_plugin.data.dataset_mappers import MaskFormerSemanticDatasetMapper

    return MaskFormerSemanticDatasetMapper(augmentations=[], image_format="RGB", ignore_label=255,
                                           size_divisibility=-1, num_classes=19)


@pytest.mark.parametrize("kind", ["gray16", "gray_as_rgb", "la", "one_bit", "palette_with_transparency"])
def test_label_formats_give_their_indices(kind, tmp_path):
    from rba_plugin.data.image_io import read_label

    rng = np.random.default_rng(1)
    indices = rng.choice(np.array([0, 1, 255], np.uint8), size=(10, 14))
    path = tmp_path / "label.png"
    if kind == "gray16":  # 16-bit label maps (some tools save every label this way)
        Image.fromarray(indices.astype(np.uint16)).save(path)
    elif kind == "gray_as_rgb":
        Image.fromarray(np.repeat(indices[:, :, None], 3, axis=2)).save(path)
    elif kind == "la":
        Image.fromarray(np.stack([indices, np.full_like(indices, 255)], axis=2), mode="LA").save(path)
    elif kind == "one_bit":
        indices = (indices == 1).astype(np.uint8)
        Image.fromarray(indices.astype(bool)).save(path)
    else:  # index 0 transparent (a tRNS chunk), as drawing tools save masks over photos
        label = Image.fromarray(indices, mode="P")
        label.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
        label.save(path, transparency=0)
    label = read_label(path)
    assert label.shape == indices.shape
    np.testing.assert_array_equal(label, indices)
    assert label.dtype == (np.uint16 if kind == "gray16" else np.uint8)
    # The training mapper agrees (labels are read once, the same way).
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(image)
    mapped = _plain_semantic_mapper()({"file_name": str(image), "sem_seg_file_name": str(path)})
    np.testing.assert_array_equal(mapped["sem_seg"].numpy(), indices)


def test_colour_label_is_refused_naming_the_file(tmp_path):
    from rba_plugin.data.image_io import read_label

    path = tmp_path / "colour_label.png"
    colours = np.zeros((6, 8, 3), np.uint8)
    colours[2:4, 2:5] = (128, 64, 128)  # Cityscapes' road colour: a colour-coded label, not indices
    Image.fromarray(colours).save(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*colour .* not colours"):
        read_label(path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(colours).save(tmp_path / "labels" / "f0_label.png")
    Image.fromarray(colours).save(tmp_path / "images" / "f0.png")
    record = DatasetCatalog.get(_register(tmp_path / "images", tmp_path / "labels"))[0]
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "labels" / "f0_label.png"))):
        load_anomaly_label(record)


# ============================================================================ users' checkpoints


def _backbone_only_pkl(tmp_path: Path, cfg) -> Tuple[Path, torch.nn.Module]:
    """An ImageNet-style backbone .pkl of ``cfg``'s model in Detectron2's model-zoo format (loaded
    by name-matching heuristics, as R-50.pkl or Mask2Former's converted Swin weights)."""
    torch.manual_seed(5)
    source = build_model(cfg)
    weights = {k[len("backbone."):]: v.numpy() for k, v in source.state_dict().items() if k.startswith("backbone.")}
    path = tmp_path / "R-18-imagenet.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "torchvision", "matching_heuristics": True}, f)
    return path, source


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO_ROOT / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_tool():
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backbone_only_checkpoint_is_refused_by_evaluation_and_demo(tmp_path):
    # The example: --eval-only and tools/demo.py ran with 88 random head tensors.
    from detectron2.engine import default_argument_parser

    cfg = _m2f_cfg()
    pkl, source = _backbone_only_pkl(tmp_path, cfg)
    heads = [k for k in source.state_dict() if not k.startswith("backbone.") and "num_batches_tracked" not in k]
    assert len(heads) > 50
    expected = (re.escape(str(pkl)) + r" does not match the model:\s+missing in the checkpoint \(" + str(len(heads))
                + r"\).*sem_seg_head.*backbone-only checkpoint")

    args = default_argument_parser().parse_args([
        "--config-file", str(M2F_CONFIG), "--eval-only", "MODEL.WEIGHTS", str(pkl), "OUTPUT_DIR", str(tmp_path / "eval")])
    with pytest.raises(CheckpointMismatchError, match=f"(?s){expected}"):
        _train_net().main(args)
    assert not (tmp_path / "eval" / "inference").exists()

    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(image)
    with pytest.raises(CheckpointMismatchError, match=f"(?s){expected}"):
        _demo_tool().main(["--config-file", str(M2F_CONFIG), "--input", str(image), "--output", str(tmp_path / "demo"),
                           "--opts", "MODEL.WEIGHTS", str(pkl)])
    assert not (tmp_path / "demo").exists()

    # Training initialises from it (the heads start untrained, by design).
    model = build_model(cfg)
    SafeCheckpointer(cfg, model).resume_or_load(str(pkl), resume=False)
    for key, value in source.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(model.state_dict()[key], value), key


def test_backbone_only_checkpoint_is_refused_for_the_per_pixel_branch(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(str(PIXEL_CONFIG))
    pkl, source = _backbone_only_pkl(tmp_path, cfg)
    # fvcore does not report BatchNorm's num_batches_tracked counters as missing.
    heads = len([k for k in source.state_dict() if not k.startswith("backbone.") and "num_batches_tracked" not in k])
    with pytest.raises(CheckpointMismatchError,
                       match=f"(?s){re.escape(str(pkl))}.*missing in the checkpoint \\({heads}\\).*sem_seg_head.decoder"):
        SafeCheckpointer(cfg, build_model(cfg), allow_new_modules=False).load(str(pkl))
    SafeCheckpointer(cfg, build_model(cfg)).load(str(pkl))  # training: accepted


def _checkpoint_file(tmp_path: Path, kind: str) -> Path:
    """A checkpoint file of a kind users pass by mistake; returns its path."""
    state = torch.nn.Linear(2, 2).state_dict()
    path = tmp_path / ("weights.pkl" if kind.startswith("pkl") else "weights.pyth" if kind == "pyth" else "weights.pth")
    if kind == "legacy_truncated":  # torch's pre-1.6 (non-zip) serialisation, cut short
        torch.save({"model": state}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:150])
    elif kind == "text_file":  # not a pickle at all: torch's weights-only reader says "Unsupported operand"
        path.write_text("not a checkpoint\n")
    elif kind == "whole_model":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "unknown_nesting":  # weights under an entry no official code base uses ('state_dict',
        torch.save({"net": state, "epoch": 3}, path)  # 'model_state' and 'model' load: test_pixel_official_checkpoints)
    elif kind == "empty_state_dict":
        torch.save({"model": {}}, path)
    elif kind == "pkl_list":
        with open(path, "wb") as f:
            pickle.dump([np.zeros(3)], f)
    elif kind == "pkl_whole_model":
        with open(path, "wb") as f:
            pickle.dump(torch.nn.Linear(2, 2), f)
    elif kind == "pyth":  # pycls format without its 'model_state'
        torch.save({"weights": state}, path)
    elif kind == "folder":
        path = tmp_path / "run_output"
        path.mkdir()
    return path


CHECKPOINT_CASES = {
    "legacy_truncated": r"cannot read checkpoint {}: it is truncated, corrupt or not a checkpoint",
    "text_file": r"cannot read checkpoint {}: it is truncated, corrupt or not a checkpoint",
    "whole_model": r"cannot read checkpoint {}: it holds Python objects .* torch.save\(model\)",
    "unknown_nesting": r"checkpoint {}: 2 entries of its state dict are not tensors: 'net' \(OrderedDict\), 'epoch' "
                       r"\(int\); the weights may be nested under 'net'",
    "empty_state_dict": r"checkpoint {} holds no weights",
    "pkl_list": r"checkpoint {}: it holds a list, not a dict of weights",
    "pkl_whole_model": r"checkpoint {}: it holds a whole Linear model",
    "pyth": r"cannot read checkpoint {}: .*model_state",
    "folder": r"checkpoint {} is a folder",
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_CASES))
def test_checkpoint_errors_name_the_file_and_the_problem(kind, tmp_path):
    path = _checkpoint_file(tmp_path, kind)
    with pytest.raises(CheckpointReadError, match=CHECKPOINT_CASES[kind].format(re.escape(str(path)))):
        SafeCheckpointer(torch.nn.Linear(2, 2), allow_new_modules=False).load(str(path))


# ============================================================================ users' config values


def test_test_time_augmentation_is_refused_in_every_mode(tmp_path):
    # The example: TEST.AUG.ENABLED True was ignored by --eval-only (training refused it).
    from detectron2.engine import default_argument_parser

    message = r"TEST.AUG.ENABLED = True: test-time augmentation is not implemented"
    args = default_argument_parser().parse_args(["--config-file", str(M2F_CONFIG), "--eval-only", "TEST.AUG.ENABLED",
                                                 "True", "OUTPUT_DIR", str(tmp_path / "eval")])
    with pytest.raises(ValueError, match=message):
        _train_net().main(args)
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(image)
    with pytest.raises(ValueError, match=message):
        _demo_tool().main(["--config-file", str(PIXEL_CONFIG), "--input", str(image), "--output", str(tmp_path / "demo"),
                           "--opts", "MODEL.WEIGHTS", "unused.pth", "TEST.AUG.ENABLED", "True"])
    for config in (M2F_CONFIG, PIXEL_CONFIG):  # the models refuse it too (configs not read by load_config)
        cfg = get_cfg()
        cfg.merge_from_file(str(config))
        cfg.TEST.AUG.ENABLED = True
        with pytest.raises(ValueError, match=message):
            build_model(cfg)
        with pytest.raises(ValueError, match=message):
            Trainer(cfg)


BAD_VALUES = {
    # The examples: one value raised a bare IndexError, a third value was dropped.
    "component_sizes_one": (["TEST.OOD.COMPONENT_SIZES", "[100]"],
                            r"TEST.OOD.COMPONENT_SIZES = \[100\]: must hold 0 or 2 values \(\[min predicted, min "
                            r"ground-truth\] .*\), got 1"),
    "component_sizes_three": (["TEST.OOD.COMPONENT_SIZES", "[100, 20, 5]"],
                              r"TEST.OOD.COMPONENT_SIZES = \[100, 20, 5\]: must hold 0 or 2 values"),
    "component_sizes_negative": (["TEST.OOD.COMPONENT_SIZES", "[-1, 20]"],
                                 r"TEST.OOD.COMPONENT_SIZES = \[-1, 20\]: every value must be a non-negative integer"),
    "crop_size_three": (["INPUT.CROP.SIZE", "(128, 256, 3)"], r"INPUT.CROP.SIZE = [\[(]128, 256, 3[\])]: must hold 2 values \(height, width\), got 3"),
    "pixel_std_one": (["MODEL.PIXEL_STD", "[58.0]"], r"MODEL.PIXEL_STD = \[58.0\]: must hold 3 values \(one per colour"),
    "pixel_std_zero": (["MODEL.PIXEL_STD", "[0.0, 0.0, 0.0]"],
                       r"MODEL.PIXEL_STD = \[0.0, 0.0, 0.0\]: every value must be a positive finite number"),
    "scale_range_one": (["INPUT.OOD_SCALE_RANGE", "(0.2,)"], r"INPUT.OOD_SCALE_RANGE = \(0.2,\): must hold 2 values"),
    "embed_dims_three": (["MODEL.RAML.EMBED_DIMS", "[64, 32, 16]"], r"MODEL.RAML.EMBED_DIMS = \[64, 32, 16\]: must hold 2"),
    "swin_heads": (["MODEL.SWIN.NUM_HEADS", "[3, 6]"],
                   r"MODEL.SWIN.NUM_HEADS = \[3, 6\]: must hold as many values as MODEL.SWIN.DEPTHS \(4"),
    "min_size_range": (["INPUT.MIN_SIZE_TRAIN_SAMPLING", "range", "INPUT.MIN_SIZE_TRAIN", "(96, 128, 160)"],
                       r"INPUT.MIN_SIZE_TRAIN = \(96, 128, 160\): must hold 2 values \(min, max\)"),
    "random_flip": (["INPUT.RANDOM_FLIP", "horizontally"],
                    r"INPUT.RANDOM_FLIP = 'horizontally': must be one of 'none', 'horizontal', 'vertical'"),
    "protocol": (["TEST.OOD.PROTOCOL", "SMIYC"], r"TEST.OOD.PROTOCOL = 'SMIYC': must be one of 'exact', 'smiyc'"),
    "optimizer": (["SOLVER.OPTIMIZER", "ADAM_W"], r"SOLVER.OPTIMIZER = 'ADAM_W': must be one of 'SGD', 'ADAM', 'ADAMW'"),
    "input_format": (["INPUT.FORMAT", "L"], r"INPUT.FORMAT = 'L': must be one of 'RGB', 'BGR'"),
    # A key of another branch's method is still checked (a typo there is not "ignored").
    "test_resize": (["INPUT.MIN_SIZE_TEST", -5], r"INPUT.MIN_SIZE_TEST = -5: must be >= 0"),
    "mca_activation": (["MODEL.MCA.ACTIVATION", "relu"], r"MODEL.MCA.ACTIVATION = 'relu': must be one of None, 'sigmoid', 'softmax'"),
    "mapper_name": (["INPUT.DATASET_MAPPER_NAME", "mask_former_semantic_coco"],
                    r"INPUT.DATASET_MAPPER_NAME = 'mask_former_semantic_coco': no training mapper of that name"),
    "smoothing_kernel": (["MODEL.OOD.SMOOTHING_KERNEL", "4"], r"MODEL.OOD.SMOOTHING_KERNEL = 4: must be -1 .* or an odd size"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_config_values_are_named_at_build_time(case):
    from rba_plugin.config import load_config

    opts, message = BAD_VALUES[case]
    with pytest.raises(ValueError, match=message):  # every tool's config set-up
        load_config(str(M2F_CONFIG), opts)
    cfg = get_cfg()  # a script's own config: the model refuses it when built
    cfg.merge_from_file(str(PIXEL_CONFIG))
    cfg.merge_from_list(opts)
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_component_sizes_are_checked_by_the_evaluator_itself(tmp_path):
    from rba_plugin.evaluation import OODEvaluator

    name = _anomaly_frames(tmp_path)
    cfg = get_cfg()
    cfg.TEST.OOD.COMPONENT_SIZES = [100]
    with pytest.raises(ValueError, match=r"TEST.OOD.COMPONENT_SIZES = \[100\]: must hold 0 or 2 values"):
        OODEvaluator(cfg, name)
    with pytest.raises(ValueError, match=r"component_sizes \(TEST.OOD.COMPONENT_SIZES\) must hold 2 values .* \[100, 20, 5\]"):
        OODEvaluator(name, component_sizes=(100, 20, 5))
    cfg.TEST.OOD.COMPONENT_SIZES = [7, 3]
    assert OODEvaluator(cfg, name).component_sizes == (7, 3)


def test_every_bad_value_is_listed_at_once_and_case_is_forgiven_where_configs_vary():
    from rba_plugin.config import load_config

    with pytest.raises(ValueError) as error:
        load_config(str(M2F_CONFIG), ["INPUT.RANDOM_FLIP", "both", "TEST.OOD.COMPONENT_SIZES", "[1]"])
    assert "INPUT.RANDOM_FLIP = 'both'" in str(error.value) and "TEST.OOD.COMPONENT_SIZES = [1]" in str(error.value)
    assert load_config(str(M2F_CONFIG), ["SOLVER.OPTIMIZER", "adamw"]).SOLVER.OPTIMIZER == "adamw"


def test_keys_kept_for_compatibility_warn_when_set(caplog):
    from rba_plugin.config import check_config

    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.USE_WANDB", "True", "MODEL.MVIT.DEPTH", "12"])
    logger = logging.getLogger("rba_plugin.config")  # rba_plugin's loggers may not propagate (setup_logger)
    logger.addHandler(caplog.handler)
    try:
        check_config(cfg)
    finally:
        logger.removeHandler(caplog.handler)
    assert "not acted on: MODEL.MVIT.DEPTH = 12, SOLVER.USE_WANDB = True" in caplog.text


# ============================================================================ non-finite values in training


def _training_cfg(tmp_path: Path, config: Path, *opts) -> object:
    from .m2f_scenes import register_scenes

    cfg = get_cfg()
    cfg.merge_from_file(str(config))
    cfg.merge_from_list([
        "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.CROP.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "5", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
        "DATASETS.TRAIN", f"('{register_scenes(tmp_path / 'scenes', count=2, height=64, width=128)}',)", *opts,
    ])
    return cfg


class WeightTurnsNaN(HookBase):
    """After iteration ``at``, one weight of the model is NaN (a run that diverges mid-way)."""

    def __init__(self, parameter_name: str, at: int):
        self.parameter_name, self.at = parameter_name, at

    def after_step(self) -> None:
        if self.trainer.iter == self.at:
            model = getattr(self.trainer.model, "module", self.trainer.model)
            with torch.no_grad():
                dict(model.named_parameters())[self.parameter_name].view(-1)[0] = float("nan")


def _train_until_error(cfg, hooks=()):
    from rba_plugin.engine import NonFiniteLossError

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks(list(hooks))
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    return str(error.value)


def test_non_finite_activations_stop_training_before_matching(tmp_path):
    # The example kind: activations turned non-finite before the loss (there through
    # MODEL.PIXEL_STD 0, now refused when the config is checked) died inside scipy's Hungarian
    # solver ("matrix contains invalid numeric entries"). A std that is positive but tiny
    # (a denormal float32) overflows the normalised image to infinity in the same way.
    cfg = _training_cfg(tmp_path, M2F_CONFIG, "MODEL.PIXEL_STD", "[1e-39, 1e-39, 1e-39]")
    message = _train_until_error(cfg)
    queries, outputs = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES + 1
    masks = queries * (64 // 4) * (128 // 4)  # one 64x128 scene, masks at stride 4
    # Every value that depends on the image is NaN; the first (query-only) class prediction is not.
    expected = (f"non-finite model output at iteration 0 (process 0): non-finite training outputs of Mask2Former, "
                f"before any loss or matching: pred_logits ({queries * outputs} NaN and 0 infinite of "
                f"{queries * outputs} values), pred_masks ({masks} NaN and 0 infinite of {masks} values), "
                f"aux_outputs[0].pred_masks ({masks} NaN and 0 infinite of {masks} values).")
    assert message.startswith(expected), message
    assert "invalid numeric entries" not in message


def test_weights_turning_nan_mid_run_name_the_iteration_and_outputs(tmp_path):
    cfg = _training_cfg(tmp_path, M2F_CONFIG)
    message = _train_until_error(cfg, [WeightTurnsNaN("sem_seg_head.predictor.class_embed.weight", at=1)])
    # One NaN weight of the class head (class 0's row): class 0's logit of every query, in every
    # prediction, is NaN; the masks are untouched. The step that made it NaN is iteration 1, the
    # first forward pass that sees it iteration 2.
    queries, outputs = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES + 1
    counts = f"({queries} NaN and 0 infinite of {queries * outputs} values)"
    assert message.startswith(
        f"non-finite model output at iteration 2 (process 0): non-finite training outputs of Mask2Former, before "
        f"any loss or matching: pred_logits {counts}, aux_outputs[0].pred_logits {counts}."), message


def test_per_pixel_branch_names_its_non_finite_outputs(tmp_path):
    cfg = _training_cfg(tmp_path, PIXEL_CONFIG, "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "512")
    message = _train_until_error(cfg, [WeightTurnsNaN("backbone.stem.conv1.weight", at=0)])
    assert re.search(r"non-finite model output at iteration 1 \(process 0\): non-finite training outputs of the "
                     r"per-pixel method ClosedSet, before any loss or matching: logits \(\d+ NaN", message), message


# ============================================================================ batches of users' images


def _random_inputs(sizes, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8), "height": h, "width": w}
            for h, w in sizes]


def _batched_minus_single(model, inputs):
    """max |batched - alone| over each image's sem_seg and ood_score, and the batched outputs."""
    with torch.no_grad():
        alone = [model([x])[0] for x in inputs]
        batched = model(inputs)
    worst = 0.0
    for a, b in zip(alone, batched):
        for key in ("sem_seg", "ood_score"):
            assert a[key].shape == b[key].shape
            worst = max(worst, float((a[key] - b[key]).abs().max()))
    return worst, batched


@pytest.mark.parametrize("sizes", [
    [(64, 96), (64, 192)],                        # the example: a wider batch-mate
    [(64, 96), (64, 192), (96, 64), (64, 96)],    # wider and taller batch-mates, a same-size one
    [(60, 90), (64, 96), (40, 200)],              # two that pad to the same size, one that does not
], ids=["wider", "mixed", "same_padded_size"])
def test_mask2former_batched_inference_equals_single_images(sizes):
    cfg = get_cfg()
    cfg.merge_from_file(str(M2F_CONFIG))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    worst, _ = _batched_minus_single(model, _random_inputs(sizes))
    assert worst <= 1e-4  # was up to 6.7 on an RbA score range of 8.2 (padding seen by attention)


def test_per_pixel_batched_inference_equals_single_images():
    cfg = get_cfg()
    cfg.merge_from_file(str(PIXEL_CONFIG))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    worst, _ = _batched_minus_single(model, _random_inputs([(256, 256), (256, 512), (200, 330)]))
    assert worst <= 1e-4  # was 0.04 on a score range of 0.1 (padding seen by the convolutions and pooling)


def test_a_batch_of_one_padded_size_runs_as_one_batch(monkeypatch):
    # Same-size batches (every loader of the plugin) are computed exactly as before: one forward
    # pass over the whole batch; mixed sizes make one pass per padded size.
    cfg = get_cfg()
    cfg.merge_from_file(str(M2F_CONFIG))
    model = build_model(cfg).eval()
    seen = []
    forward = model._forward
    def recording_forward(inputs):
        seen.append([tuple(x["image"].shape[1:]) for x in inputs])
        return forward(inputs)

    monkeypatch.setattr(model, "_forward", recording_forward)
    with torch.no_grad():
        model(_random_inputs([(64, 96), (60, 90)]))
        model(_random_inputs([(64, 96), (64, 192), (60, 90)]))
    assert seen == [[(64, 96), (60, 90)], [(64, 96), (60, 90)], [(64, 192)]]


# ============================================================================ users' image sizes


@pytest.mark.parametrize("sizes", [[(40, 60)], [(720 // 4, 1280 // 4)], [(300, 400), (400, 300), (97, 131)]],
                         ids=["tiny", "road_anomaly_16_9", "photos_4_3_portrait_odd"])
def test_per_pixel_branch_runs_on_any_image_size(sizes):
    # Was: "image of 40x60 ... smaller than the model's minimum input size 256x256", and every size
    # whose feature map the training crop's pooling window did not tile (16:9 frames, 4:3 photos).
    cfg = get_cfg()
    cfg.merge_from_file(str(PIXEL_CONFIG))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        outputs = model(_random_inputs(sizes))
    for (h, w), output in zip(sizes, outputs):
        assert output["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, h, w)
        assert output["ood_score"].shape == (h, w) and bool(torch.isfinite(output["ood_score"]).all())


def test_demo_runs_per_pixel_configs_on_photos_of_any_shape(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(str(PIXEL_CONFIG))
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(tmp_path)).save("model_final")
    rng = np.random.default_rng(0)
    shapes = {"landscape_16_9": (180, 320), "photo_4_3": (240, 320), "portrait": (320, 240)}
    for name, (h, w) in shapes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{name}.jpg")
    out = tmp_path / "demo"
    assert _demo_tool().main(["--config-file", str(PIXEL_CONFIG), "--input", *[str(tmp_path / f"{n}.jpg") for n in shapes],
                              "--output", str(out), "--opts", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]) == 0
    for name, (h, w) in shapes.items():
        assert np.load(out / f"{name}_score.npy").shape == (h, w)
