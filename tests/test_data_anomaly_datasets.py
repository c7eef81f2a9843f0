"""Anomaly dataset registration: lazy roots, label mapping, and errors that name the file."""
import os
import uuid

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from rba_plugin.data import lost_and_found_label_map, load_anomaly_label, register_anomaly_dataset
from rba_plugin.data.builtin_anomaly import register_lost_and_found


def unique(name):
    return f"test_{name}_{uuid.uuid4().hex[:8]}"


def write_road_anomaly_like(root, labels, image_hw=(20, 30)):
    """Road Anomaly layout: frames/<name>.jpg and frames/<name>.labels/labels_semantic.png."""
    frames = os.path.join(root, "frames")
    os.makedirs(frames, exist_ok=True)
    for i, label in enumerate(labels):
        cv2.imwrite(os.path.join(frames, f"img{i}.jpg"), np.full(image_hw + (3,), 100, np.uint8))
        os.makedirs(os.path.join(frames, f"img{i}.labels"), exist_ok=True)
        cv2.imwrite(os.path.join(frames, f"img{i}.labels", "labels_semantic.png"), label)
    return frames


def register_ra(name, frames):
    register_anomaly_dataset(name, frames, frames, image_suffix=".jpg", label_suffix=".labels/labels_semantic.png",
                             label_map={0: 0, 2: 1}, layout="  frames/<name>.jpg")


def test_road_anomaly_labels_are_mapped(tmp_path):
    label = np.zeros((20, 30), np.uint8)
    label[5:10, 5:10] = 2
    frames = write_road_anomaly_like(str(tmp_path), [label, np.zeros((20, 30), np.uint8)])
    name = unique("ra")
    register_ra(name, frames)
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == ["img0", "img1"]
    assert (dicts[0]["height"], dicts[0]["width"]) == (20, 30)
    mapped = load_anomaly_label(dicts[0])
    assert mapped.dtype == np.uint8 and set(np.unique(mapped)) == {0, 1}
    assert np.array_equal(mapped == 1, label == 2)
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "ood" and meta.ignore_label == 255 and len(meta.stuff_classes) == 19


def test_registration_is_lazy_and_missing_root_is_explained(tmp_path, monkeypatch):
    missing = os.path.join(str(tmp_path), "nowhere")
    name = unique("missing")
    register_ra(name, missing)  # no error: registration touches no file
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get(name)
    message = str(info.value)
    assert missing in message and "frames/<name>.jpg" in message and "DETECTRON2_DATASETS" in message


def test_value_outside_mapping_names_the_file(tmp_path):
    label = np.zeros((20, 30), np.uint8)
    label[0, 0] = 7
    frames = write_road_anomaly_like(str(tmp_path), [label])
    name = unique("badvalue")
    register_ra(name, frames)
    with pytest.raises(ValueError, match=r"img0.labels/labels_semantic.png has values \[7\]"):
        load_anomaly_label(DatasetCatalog.get(name)[0])


def test_size_mismatch_names_both_files(tmp_path):
    frames = write_road_anomaly_like(str(tmp_path), [np.zeros((10, 30), np.uint8)])
    name = unique("size")
    register_ra(name, frames)
    with pytest.raises(ValueError, match=r"labels_semantic.png is 10x30 but image .*img0.jpg is 20x30"):
        load_anomaly_label(DatasetCatalog.get(name)[0])


def test_unreadable_image_and_empty_dataset(tmp_path):
    frames = write_road_anomaly_like(str(tmp_path), [np.zeros((20, 30), np.uint8)])
    with open(os.path.join(frames, "img0.jpg"), "wb") as f:
        f.write(b"not an image")
    name = unique("unreadable")
    register_ra(name, frames)
    with pytest.raises(ValueError, match=r"cannot read image .*img0.jpg"):
        DatasetCatalog.get(name)
    empty = os.path.join(str(tmp_path), "empty")
    os.makedirs(empty)
    name = unique("empty")
    register_ra(name, empty)
    with pytest.raises(FileNotFoundError, match="no label file"):
        DatasetCatalog.get(name)


def test_builtin_roots_resolve_at_first_use(tmp_path, monkeypatch):
    # Fishyscapes Lost&Found layout under a DETECTRON2_DATASETS chosen after registration.
    labels = tmp_path / "fishyscapes" / "fishyscapes_lostandfound"
    images = tmp_path / "fishyscapes" / "laf_images"
    labels.mkdir(parents=True)
    images.mkdir(parents=True)
    label = np.array([[0, 1, 255]], np.uint8).repeat(4, 0)
    cv2.imwrite(str(labels / "0003_04_Maurener_Weg_8_000000_000030_labels.png"), label)
    cv2.imwrite(str(images / "04_Maurener_Weg_8_000000_000030_leftImg8bit.png"), np.zeros((4, 3, 3), np.uint8))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    (record,) = DatasetCatalog.get("fs_laf_val")
    assert record["file_name"] == str(images / "04_Maurener_Weg_8_000000_000030_leftImg8bit.png")
    assert np.array_equal(load_anomaly_label(record), label)


def test_lost_and_found_mapping_and_non_hazard_option(tmp_path, monkeypatch):
    scene = "01_Hanns_Klemm_Str_45"
    for kind, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtCoarse", "_gtCoarse_labelIds.png")):
        (tmp_path / "laf" / kind / "test" / scene).mkdir(parents=True)
    label_ids = np.array([[0, 1, 5, 31]], np.uint8)
    # The second frame shows a bicycle (a known class): SMIYC's "noKnown" split drops it.
    for stem in (f"{scene}_000000_000100", f"{scene}_000006_000010"):
        cv2.imwrite(str(tmp_path / "laf" / "gtCoarse" / "test" / scene / f"{stem}_gtCoarse_labelIds.png"), label_ids)
        cv2.imwrite(str(tmp_path / "laf" / "leftImg8bit" / "test" / scene / f"{stem}_leftImg8bit.png"),
                    np.zeros((1, 4, 3), np.uint8))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    expected = {"anomaly": [255, 0, 1, 1], "inlier": [255, 0, 1, 0], "void": [255, 0, 1, 255]}
    for policy, values in expected.items():
        name = unique(f"laf_{policy}")
        register_lost_and_found(name, "laf", non_hazard=policy)
        records = DatasetCatalog.get(name)
        assert len(records) == 2
        assert load_anomaly_label(records[0]).tolist() == [values], policy
        assert MetadataCatalog.get(name).ood_track == "obstacle"
    name = unique("laf_noknown")
    register_lost_and_found(name, "laf", no_known=True)
    assert [r["image_id"] for r in DatasetCatalog.get(name)] == [f"{scene}/{scene}_000000_000100"]
    with pytest.raises(ValueError, match="non_hazard"):
        lost_and_found_label_map("sometimes")
