"""Outlier pasting (rate, determinism, labels) and the COCO outlier-pool preparation tool."""
import importlib.util
import json
import os
import random

import cv2
import numpy as np
import pytest

from rba_plugin.config import get_cfg
from rba_plugin.data import OutlierPaster, list_outlier_pool, register_outlier_pool, select_proxy_subset
from tests.conftest import REPO_ROOT


def write_pool(root, count=12, size=40):
    """Pool images with a solid coloured disc marked 254 in the mask."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for i in range(count):
        image = np.zeros((size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        radius = int(rng.integers(5, 15))
        cv2.circle(mask, (size // 2, size // 2), radius, 254, -1)
        image[mask == 254] = (200, 10 * i, 50)
        cv2.imwrite(os.path.join(root, "images", f"o{i:03d}.png"), image)
        cv2.imwrite(os.path.join(root, "masks", f"o{i:03d}.png"), mask)
    return list_outlier_pool("test_pool", os.path.join(root, "images"), os.path.join(root, "masks"), ".png")


def scene(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    sem = rng.integers(0, 19, (64, 96)).astype(np.int64)
    sem[:5] = 255
    return image, sem


def test_paste_rate_matches_probability(tmp_path):
    pool = write_pool(str(tmp_path))
    paster = OutlierPaster(pool, probability=0.1, proxy_size=5, seed=0)
    rng = np.random.default_rng(1)
    image, sem = scene()
    draws = 2000
    pasted = sum((paster(image, sem, rng)[1] == 254).any() for _ in range(draws))
    # Binomial(2000, 0.1): sd = 13.4; 5 sd either side.
    assert abs(pasted - 200) < 67


def test_labels_only_object_pixels_change(tmp_path):
    pool = write_pool(str(tmp_path))
    paster = OutlierPaster(pool, probability=1.0, proxy_size=12, seed=0, scale_mode="range", scale_range=(0.3, 0.6))
    image, sem = scene()
    for seed in range(20):
        new_image, new_sem = paster(image, sem, np.random.default_rng(seed))
        changed = new_sem != sem
        assert changed.any() and (new_sem[changed] == 254).all()
        pasted = new_sem == 254
        assert pasted.sum() == changed.sum()  # scene had no 254 before
        # Pixels outside the object are untouched; object pixels carry the object's colour.
        assert np.array_equal(new_image[~pasted], image[~pasted])
        assert (new_image[pasted][:, 2] == 200).all()  # written (200, g, 50) as BGR, pasted as RGB
        ys, xs = np.nonzero(pasted)  # stays inside the crop and within the scale range
        assert max(ys.ptp(), xs.ptp()) + 1 <= 0.6 * 64 + 1
    assert image.shape == (64, 96, 3) and sem.dtype == np.int64  # inputs not modified in place
    assert not (sem == 254).any()


def test_same_seed_same_subset_and_result_whatever_the_global_state(tmp_path):
    pool = write_pool(str(tmp_path))
    random.seed(123)
    np.random.seed(123)
    a = OutlierPaster(pool, probability=0.5, proxy_size=4, seed=3)
    random.seed(999)  # e.g. another rank seeded with seed + rank
    np.random.seed(999)
    b = OutlierPaster(list(reversed(pool)), probability=0.5, proxy_size=4, seed=3)
    assert [r["file_name"] for r in a.proxy] == [r["file_name"] for r in b.proxy]
    c = OutlierPaster(pool, probability=0.5, proxy_size=4, seed=4)
    assert [r["file_name"] for r in a.proxy] != [r["file_name"] for r in c.proxy]
    image, sem = scene()
    for seed in range(10):
        ia, sa = a(image, sem, np.random.default_rng(seed))
        ib, sb = b(image, sem, np.random.default_rng(seed))
        assert np.array_equal(ia, ib) and np.array_equal(sa, sb)
    assert len(select_proxy_subset(pool, 300, 0)) == len(pool)


def test_from_config_with_a_registered_pool(tmp_path):
    write_pool(str(tmp_path))
    register_outlier_pool("test_cfg_pool", str(tmp_path / "images"), str(tmp_path / "masks"), image_suffix=".png")
    cfg = get_cfg()
    cfg.INPUT.OUTLIER_POOL = "test_cfg_pool"
    cfg.INPUT.COCO_PROXY_SIZE = 3
    cfg.INPUT.OOD_PROB = 1.0
    cfg.INPUT.FORMAT = "RGB"
    paster = OutlierPaster(cfg)
    assert len(paster.proxy) == 3 and paster.probability == 1.0 and paster.ood_label == 254
    rgb, mask = paster.object(paster.proxy[0])
    assert (rgb[mask][:, 2] == 200).all()  # RGB order honoured (written as BGR by OpenCV)
    cfg.INPUT.FORMAT = "BGR"
    bgr_paster = OutlierPaster(cfg)
    assert (bgr_paster.object(bgr_paster.proxy[0])[0][..., 0][mask] == 200).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        OutlierPaster([], probability=0.1)
    with pytest.raises(ValueError, match="OOD_SCALE_RANGE"):
        OutlierPaster([{"outlier_mask_file": "x", "file_name": "y"}], scale_range=(0.5, 0.2))


def load_prepare_tool():
    spec = importlib.util.spec_from_file_location("prepare_coco_outliers", REPO_ROOT / "tools" / "prepare_coco_outliers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_coco_outliers(tmp_path):
    """A small COCO-format file: only image 3 qualifies (1 has a person, 2 is too small, 4 has no instance)."""
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 21, "name": "cow"},
                  {"id": 88, "name": "teddy bear"}, {"id": 2, "name": "bicycle"}, {"id": 4, "name": "motorcycle"},
                  {"id": 6, "name": "bus"}, {"id": 8, "name": "truck"}, {"id": 10, "name": "traffic light"},
                  {"id": 13, "name": "stop sign"}]
    images = [{"id": 1, "height": 500, "width": 640, "file_name": "000000000001.jpg"},
              {"id": 2, "height": 400, "width": 640, "file_name": "000000000002.jpg"},
              {"id": 3, "height": 480, "width": 600, "file_name": "000000000003.jpg"},
              {"id": 4, "height": 500, "width": 500, "file_name": "000000000004.jpg"}]

    def box(ann_id, image_id, cat, x, y, w, h):
        return {"id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": 0, "area": w * h,
                "bbox": [x, y, w, h], "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}

    annotations = [box(1, 1, 21, 10, 10, 50, 50), box(2, 1, 1, 100, 100, 20, 40), box(3, 2, 21, 0, 0, 30, 30),
                   box(4, 3, 21, 10, 20, 100, 50), box(5, 3, 88, 300, 300, 40, 40)]
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    out = tmp_path / "coco" / "annotations" / "ood_seg_train2017"
    tool = load_prepare_tool()
    assert tool.main(["--annotations", str(ann_file), "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["000000000003.png"]
    mask = cv2.imread(str(out / "000000000003.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (480, 600) and set(np.unique(mask)) == {0, 254}
    # Both instances (polygon rasterisation may add the boundary) and nothing else.
    assert (mask[21:69, 11:109] == 254).all() and (mask[301:339, 301:339] == 254).all()
    assert (mask == 254).sum() <= 101 * 51 + 41 * 41
    assert os.listdir(out.parent) == ["ood_seg_train2017"]  # no temporary folder left
    # Configurable exclusions: excluding teddy bears rejects image 3 too.
    out2 = tmp_path / "out2"
    tool.main(["--annotations", str(ann_file), "--output", str(out2), "--exclude", "person", "teddy bear"])
    assert os.listdir(out2) == []
    with pytest.raises(ValueError, match="unicorn"):
        tool.main(["--annotations", str(ann_file), "--output", str(out2), "--exclude", "unicorn"])
