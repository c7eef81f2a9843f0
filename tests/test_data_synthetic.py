"""The synthetic benchmark: determinism, label sanity, caching, atomic writes and registration."""
import filecmp
import os
import uuid

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from rba_plugin.data import load_anomaly_label
from rba_plugin.data.synthetic import (
    SynthCityParams,
    ensure_synthcity,
    make_anomaly_sample,
    make_inlier_sample,
    register_synthcity,
)
from rba_plugin.data.synthetic import writer as synth_writer

SMALL = SynthCityParams(num_train=3, num_val=2, num_anomaly=3, num_outliers=4, seed=7)
REQUIRED_CLASSES = {0, 1, 2, 5, 7, 8, 9, 10, 11, 13, 15}  # road ... car, bus


def read(path, color=False):
    array = cv2.imread(path, cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_scenes_cover_the_required_classes_and_nothing_else():
    seen = set()
    for i in range(16):
        image, sem = make_inlier_sample(np.random.default_rng([3, i]))
        assert image.shape == (256, 512, 3) and image.dtype == np.uint8 and sem.shape == (256, 512)
        seen |= set(np.unique(sem).tolist())
        assert image.std() > 10  # not a blank frame
    assert REQUIRED_CLASSES <= seen
    assert seen <= REQUIRED_CLASSES | {255}


def test_anomaly_samples_are_consistent():
    for i in range(6):
        image, label, sem = make_anomaly_sample(np.random.default_rng([4, i]))
        assert set(np.unique(label).tolist()) <= {0, 1, 255}
        assert (label == 1).sum() >= 20
        assert (sem[label == 1] == 255).all()  # anomalies are not an inlier class
        assert (sem[label == 0] != 255).all()  # every in-distribution pixel has a class
        assert (label[sem == 255] != 0).all()


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = ensure_synthcity(str(tmp_path / "a"), SMALL)
    b = ensure_synthcity(str(tmp_path / "b"), SMALL)
    files = all_files(a)
    assert files == all_files(b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    c = ensure_synthcity(str(tmp_path / "c"), SynthCityParams(**{**SMALL.__dict__, "seed": 8}))
    image = "leftImg8bit/train/synth_train_00000_leftImg8bit.png"
    assert not np.array_equal(read(os.path.join(a, image)), read(os.path.join(c, image)))


def test_layout_and_label_values(tmp_path):
    root = ensure_synthcity(str(tmp_path / "synthcity"), SMALL)
    for split, count in (("train", 3), ("val", 2)):
        labels = sorted(os.listdir(os.path.join(root, "gtFine", split)))
        assert len(labels) == count
        for name in labels:
            sem = read(os.path.join(root, "gtFine", split, name))
            assert sem.dtype == np.uint8 and sem.ndim == 2
            assert set(np.unique(sem).tolist()) <= REQUIRED_CLASSES | {255}
    masks = sorted(os.listdir(os.path.join(root, "anomaly", "labels_masks")))
    assert len(masks) == 3
    for name in masks:
        label = read(os.path.join(root, "anomaly", "labels_masks", name))
        assert set(np.unique(label).tolist()) <= {0, 1, 255} and (label == 1).any()
    for name in os.listdir(os.path.join(root, "outliers", "masks")):
        mask = read(os.path.join(root, "outliers", "masks", name))
        assert set(np.unique(mask).tolist()) == {0, 254}
        assert read(os.path.join(root, "outliers", "images", name), color=True).shape[:2] == mask.shape


def test_cache_is_reused_and_regenerated_when_params_change(tmp_path, monkeypatch):
    root = ensure_synthcity(str(tmp_path / "synthcity"), SMALL)
    meta = os.path.join(root, synth_writer.META_FILE)
    stamp = os.stat(meta).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the cache is up to date")

    monkeypatch.setattr(synth_writer, "write_synthcity", fail)
    ensure_synthcity(root, SMALL)
    assert os.stat(meta).st_mtime_ns == stamp
    monkeypatch.undo()
    bigger = SynthCityParams(**{**SMALL.__dict__, "num_val": 3})
    ensure_synthcity(root, bigger)
    assert len(os.listdir(os.path.join(root, "gtFine", "val"))) == 3
    assert sorted(os.listdir(tmp_path)) == ["synthcity"]  # no temporary folder left behind


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def broken(rng, size=128):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth_writer, "make_outlier_sample", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_synthcity(str(tmp_path / "synthcity"), SMALL)
    assert os.listdir(tmp_path) == []


def test_registration_generates_on_first_use(tmp_path):
    prefix = f"synth_{uuid.uuid4().hex[:8]}"
    root = str(tmp_path / "synthcity")
    register_synthcity(root, SMALL, prefix=prefix)
    assert not os.path.exists(root)  # lazy
    train = DatasetCatalog.get(f"{prefix}_train")
    assert len(train) == 3 and os.path.exists(root)
    record = train[0]
    assert {"file_name", "sem_seg_file_name", "height", "width"} <= set(record)
    assert (record["height"], record["width"]) == (256, 512)
    assert MetadataCatalog.get(f"{prefix}_val").evaluator_type == "sem_seg"
    assert len(MetadataCatalog.get(f"{prefix}_val").stuff_classes) == 19
    anomaly = DatasetCatalog.get(f"{prefix}_anomaly")
    assert len(anomaly) == 3 and MetadataCatalog.get(f"{prefix}_anomaly").evaluator_type == "ood"
    label = load_anomaly_label(anomaly[0])
    assert label.shape == (256, 512) and (label == 1).any()
    assert "sem_seg_file_name" in anomaly[0]
    pool = DatasetCatalog.get(f"{prefix}_outliers")
    assert len(pool) == 4 and all(os.path.exists(r["outlier_mask_file"]) for r in pool)


def test_registering_only_an_anomaly_split_generates_only_that_split(tmp_path):
    prefix = f"synth_{uuid.uuid4().hex[:8]}"
    other = SynthCityParams(num_train=0, num_val=0, num_anomaly=2, num_outliers=0, seed=8)
    register_synthcity(str(tmp_path / "second"), other, prefix=prefix, splits=("anomaly",))
    assert f"{prefix}_anomaly" in DatasetCatalog.list()
    assert not {f"{prefix}_train", f"{prefix}_val", f"{prefix}_outliers"} & set(DatasetCatalog.list())
    records = DatasetCatalog.get(f"{prefix}_anomaly")
    assert len(records) == 2
    assert all_files(str(tmp_path / "second" / "leftImg8bit")) == []  # no scenes rendered for other splits
    # Another seed draws other anomalies: image 0 of seed 8 is not image 0 of seed 7 (SMALL).
    first_seed = make_anomaly_sample(synth_writer._rng(SMALL, "anomaly", 0))[0]
    image = read(records[0]["file_name"], color=True)[:, :, ::-1]
    assert image.shape == first_seed.shape and not np.array_equal(image, first_seed)
    second_seed = make_anomaly_sample(synth_writer._rng(other, "anomaly", 0))[0]
    np.testing.assert_array_equal(image, second_seed)


def test_unknown_split_names_are_refused():
    with pytest.raises(ValueError, match=r"unknown splits \['test'\]"):
        register_synthcity("unused", SMALL, prefix="never_registered", splits=("anomaly", "test"))
    assert "never_registered_anomaly" not in DatasetCatalog.list()


def test_the_second_builtin_anomaly_split_uses_another_seed():
    import rba_plugin.data.builtin  # noqa: F401  (registers the built-in datasets)

    assert MetadataCatalog.get("synthcity_seed1_anomaly").evaluator_type == "ood"
    assert "synthcity_seed1_train" not in DatasetCatalog.list()


def test_anomalies_vary_in_size_and_placement():
    from scipy import ndimage

    areas, rows = [], []
    for i in range(30):
        _, label, _ = make_anomaly_sample(np.random.default_rng([5, i]))
        components, count = ndimage.label(label == 1, structure=np.ones((3, 3)))
        for c in range(1, count + 1):
            ys, _ = np.nonzero(components == c)
            areas.append(len(ys))
            rows.append(ys.max())
    areas = np.array(areas)
    assert len(areas) >= 30
    assert areas.min() < 150 and areas.max() > 4000  # tiny debris to large objects
    assert np.ptp(rows) > 100  # near and far


def test_outlier_pool_objects_are_mostly_in_everyday_colours():
    # A pool of saturated sprites only looks like the inlier signs and shirts; most objects must
    # be dull (mean chroma max(rgb) - min(rgb) of the object pixels at most 0.4; a saturated
    # colour has one channel >= 0.7 and the others <= 0.3).
    from rba_plugin.data.synthetic.objects import OUTLIER_FAMILY

    names = sorted(OUTLIER_FAMILY)
    chroma = []
    for i in range(200):
        mask, rgb = OUTLIER_FAMILY[names[i % len(names)]](np.random.default_rng([5, i]), 48)
        pixels = np.clip(rgb[mask], 0, 1)
        chroma.append(float((pixels.max(1) - pixels.min(1)).mean()))
    chroma = np.array(chroma)
    assert (chroma > 0.4).mean() < 0.5
    assert (chroma > 0.4).any()  # a share of saturated objects stays, as COCO has colourful things
