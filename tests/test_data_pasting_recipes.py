"""The outlier-pasting recipes of the shipped configs (RbA's COCO mix, PEBAL's AnomalyMix, RPL's
mix, the plugin's final-crop recipe), measured on their mappers: share of samples with an
outlier, object scale distribution, share of objects cut by the crop, flip probability, proxy
subset policies, and refusal of bad values.

Each expected value is derived here from the recipe's definition, not from the paster: the
before-augmentation geometry by exact enumeration of paste and crop positions, probabilities with
binomial tolerances (4 standard deviations; every draw is seeded, so the tests are deterministic).
The Cityscapes configs run at 1/16 scale: a 64 x 128 scene for a 1024 x 2048 frame.
"""
import math
import os
from fractions import Fraction

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

import rba_plugin.data.outlier_paste as outlier_paste
from rba_plugin.config import get_cfg
from rba_plugin.data import OutlierPaster, register_outlier_pool, select_proxy_subset
from rba_plugin.data.dataset_mappers import build_train_mapper

from .conftest import REPO_ROOT

H, W = 64, 128  # the scene: Cityscapes' 1024 x 2048 at 1/16
SMALL = (20, 30)  # object box of the "small" pool (h, w): native-scale recipes
LARGE = (40, 60)  # object box of the "large" pool: scaled recipes
POOL_SIZE = 12
TRAIN_IMAGES = 10  # dataset dicts of the scene (one pass = one epoch)

RBA = "configs/cityscapes/mask2former/swin/maskformer2_swin_base_IN21k_384_bs16_1dl_rba_ood_coco.yaml"
D2 = "configs/cityscapes/pixel/d2_deeplab"
PEBAL = "configs/cityscapes/pixel/pebal.yaml"
# RPL's recipe is measured with the 512 x 1024 crop of Detectron2's DeepLab config (its official
# 700 x 700 crop is 43 px at this 1/16 scale, narrower than the large pool's scaled objects).
RPL = f"{D2}/rpl_corocl_R101.yaml"
VCA = f"{D2}/vca_R101.yaml"


def pool_colour(i):
    """RGB colour of pool entry i's object: green channel encodes i."""
    return (200, 20 * i + 10, 60)


def write_pool(root, box, count=POOL_SIZE, size=(48, 72)):
    """Pool images with one solid rectangle of ``box`` (h, w) at a random spot, marked 254."""
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for i in range(count):
        image = np.full(size + (3,), 90, np.uint8)
        mask = np.zeros(size, np.uint8)
        top, left = int(rng.integers(0, size[0] - box[0] + 1)), int(rng.integers(0, size[1] - box[1] + 1))
        mask[top: top + box[0], left: left + box[1]] = 254
        image[mask == 254] = pool_colour(i)
        cv2.imwrite(os.path.join(root, "images", f"p{i:03d}.png"), image[:, :, ::-1])
        cv2.imwrite(os.path.join(root, "masks", f"p{i:03d}.png"), mask)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Registers the scene dataset (left half class 0, right half class 1) and two pools."""
    root = tmp_path_factory.mktemp("recipes")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, (H, W, 3), dtype=np.uint8)  # darker than any object colour
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2:] = 1
    cv2.imwrite(str(root / "scene.png"), image[:, :, ::-1])
    cv2.imwrite(str(root / "scene_label.png"), label)
    record = {"file_name": str(root / "scene.png"), "sem_seg_file_name": str(root / "scene_label.png"),
              "height": H, "width": W}
    names = {"train": "recipes_scene_train", "small": "recipes_pool_small", "large": "recipes_pool_large"}
    write_pool(str(root / "small"), SMALL, size=(40, 48))
    write_pool(str(root / "large"), LARGE)
    if names["train"] not in DatasetCatalog.list():
        DatasetCatalog.register(names["train"], lambda: [dict(record, image_id=i) for i in range(TRAIN_IMAGES)])
        for pool in ("small", "large"):
            register_outlier_pool(names[pool], str(root / pool / "images"), str(root / pool / "masks"),
                                  image_suffix=".png")
    return names


def recipe_cfg(config_file, data, pool="small", *opts):
    """The config at 1/16 scale (sizes divided by 16) on the test scene and pool, plus ``opts``."""
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / config_file))
    cfg.merge_from_list([
        "DATASETS.TRAIN", f"('{data['train']}',)", "INPUT.OUTLIER_POOL", data[pool],
        "INPUT.MIN_SIZE_TRAIN", str(tuple(s // 16 for s in cfg.INPUT.MIN_SIZE_TRAIN)),
        "INPUT.MAX_SIZE_TRAIN", "100000", "INPUT.CROP.SIZE", str(tuple(s // 16 for s in cfg.INPUT.CROP.SIZE)),
        "INPUT.COCO_PROXY_SIZE", "4", *opts,
    ])
    return cfg


def run(cfg, n, seed=0, extra_inputs=()):
    """n mapper outputs (numpy) from a seeded global RNG, as Detectron2 seeds a worker."""
    mapper = build_train_mapper(cfg, extra_inputs=extra_inputs)
    records = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    np.random.seed(seed)
    return [{k: v.numpy() for k, v in mapper(records[i % len(records)]).items() if hasattr(v, "numpy")}
            for i in range(n)]


def object_box(sem_seg):
    """(height, width, pixel count) of the 254 pixels, or None."""
    ys, xs = np.nonzero(sem_seg == 254)
    if len(ys) == 0:
        return None
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1, len(ys)


def within(measured, expected, n, sds=4.0):
    """|measured share - expected probability| within ``sds`` binomial standard deviations."""
    sd = math.sqrt(max(expected * (1 - expected), 1e-12) / n)
    return abs(measured - expected) <= sds * sd


# ---------------------------------------------------------------- the recipes' expected values


def axis_outcomes(length, obj, new_length, crop):
    """One image axis of "paste before augmentation": the object's first pixel t uniform in
    0..length-obj; the axis resized to new_length with nearest-neighbour labels (output pixel i
    reads input pixel floor(i * length / new_length), so the object covers the output pixels in
    [t * new_length / length, (t + obj) * new_length / length)); then a crop of
    min(crop, new_length) pixels at a uniform offset c0. Enumerates every (t, c0) exactly, in
    integers. Returns (P(some object pixel in the crop), P(every object pixel in the crop))."""
    kept = min(crop, new_length)
    t = np.arange(length - obj + 1)[:, None]
    c0 = np.arange(new_length - kept + 1)[None, :]
    first = -(-t * new_length // length)  # ceil: the first output pixel of the object
    end = -(-(t + obj) * new_length // length)  # ceil: one past its last
    inside = np.clip(np.minimum(end, c0 + kept) - np.maximum(first, c0), 0, None)
    return float(np.mean(inside > 0)), float(np.mean(inside == end - first))


def before_augmentation_expectation(short_sizes, obj, crop):
    """Per resize target (uniform choice of short side, as ResizeShortestEdge "choice"):
    (P(present), P(whole)) of a native-scale object pasted uniformly on the H x W scene."""
    out = {}
    for size in short_sizes:
        new_h, new_w = size, int(size * W / H + 0.5)  # Detectron2's get_output_shape, short side = H
        py, wy = axis_outcomes(H, obj[0], new_h, crop[0])
        px, wx = axis_outcomes(W, obj[1], new_w, crop[1])
        out[size] = (py * px, wy * wx)
    return out


# ---------------------------------------------------------------- the configs set the recipes


def test_configs_set_each_methods_recipe():
    def load(path):
        cfg = get_cfg()
        cfg.merge_from_file(str(REPO_ROOT / path))
        return cfg.INPUT

    defaults = get_cfg().INPUT  # RbA's recipe
    assert (defaults.OOD_PASTE_STAGE, defaults.OOD_SCALE_MODE, defaults.OOD_OVERSIZE, defaults.OOD_PROXY_POLICY,
            defaults.RANDOM_FLIP_PROB) == ("before_augmentation", "native", "skip", "fixed", 0.5)
    rba = load(RBA)
    assert (rba.OOD_PASTE_STAGE, rba.OOD_SCALE_MODE, rba.OOD_PROB, rba.COCO_PROXY_SIZE, rba.OOD_PROXY_POLICY,
            rba.RANDOM_FLIP_PROB) == ("before_augmentation", "native", 0.1, 300, "fixed", 0.5)
    for path in (PEBAL, f"{D2}/pebal_R101.yaml"):  # the official network and Detectron2's DeepLab
        pebal = load(path)
        assert (pebal.OOD_PASTE_STAGE, pebal.OOD_SCALE_MODE, pebal.COCO_PROXY_SIZE, pebal.OOD_PROXY_POLICY,
                pebal.RANDOM_FLIP_PROB) == ("before_augmentation", "native", 297, "per_epoch", 0.8)
        assert pebal.OOD_PROB == pytest.approx(297 / (2975 + 297), abs=5e-5)
        assert [s / 1024 for s in pebal.MIN_SIZE_TRAIN] == [0.5, 0.75, 1, 1.5, 1.75, 2.0]
    for path in (RPL, f"{D2}/rpl_R101.yaml", "configs/cityscapes/pixel/rpl_corocl.yaml", "configs/cityscapes/pixel/rpl.yaml"):
        rpl = load(path)
        assert (rpl.OOD_PASTE_STAGE, rpl.OOD_SCALE_MODE, rpl.OOD_PROB, rpl.COCO_PROXY_SIZE, rpl.OOD_PROXY_POLICY,
                rpl.RANDOM_FLIP_PROB, tuple(rpl.MIN_SIZE_TRAIN)) == ("after_crop", "factors", 1.0, 2975, "per_epoch",
                                                                     0.8, (1024,))
        assert sorted(rpl.OOD_SCALE_FACTORS) == [0.1, 0.125, 0.25, 0.5, 0.5, 0.75]
    for path in (VCA, "configs/synthcity/pixel/vca.yaml"):
        kept = load(path)  # no official recipe (VCA)
        assert (kept.OOD_PASTE_STAGE, kept.OOD_SCALE_MODE, kept.OOD_OVERSIZE) == ("final_crop", "range", "shrink")
    # The synthetic Mask2Former fine-tunes paste as RbA (its stage and native scale).
    for name in ("rba", "pebal", "densehybrid"):
        m2f = load(f"configs/synthcity/mask2former/maskformer2_R18_1dl_{name}_finetune.yaml")
        assert (m2f.OOD_PASTE_STAGE, m2f.OOD_SCALE_MODE, m2f.OOD_OVERSIZE) == ("before_augmentation", "native", "skip")


# ---------------------------------------------------------------- share of samples with an outlier


@pytest.mark.parametrize("config_file", [RBA, PEBAL])
def test_before_augmentation_share_of_samples_with_outliers(data, config_file):
    """p x P(object survives the config's resize and crop); the scene is 1/16 of a Cityscapes frame,
    the object (20 x 30) about a COCO object's 320 x 480 at that scale."""
    cfg = recipe_cfg(config_file, data, "small")
    n = 1500
    share = np.mean([(out["sem_seg"] == 254).any() for out in run(cfg, n)])
    per_size = before_augmentation_expectation(cfg.INPUT.MIN_SIZE_TRAIN, SMALL, cfg.INPUT.CROP.SIZE)
    expected = cfg.INPUT.OOD_PROB * np.mean([present for present, _ in per_size.values()])
    assert within(share, expected, n), (share, expected)


@pytest.mark.parametrize("config_file,pool", [(RPL, "large"), (VCA, "large")])
def test_inside_the_crop_share_of_samples_with_outliers_is_p(data, config_file, pool):
    cfg = recipe_cfg(config_file, data, pool)
    n = 600
    share = np.mean([(out["sem_seg"] == 254).any() for out in run(cfg, n)])
    assert within(share, cfg.INPUT.OOD_PROB, n), (share, cfg.INPUT.OOD_PROB)


# ---------------------------------------------------------------- scale distribution and cut share


@pytest.mark.parametrize("config_file", [RBA, PEBAL])
def test_before_augmentation_scales_and_cut_share(data, config_file):
    """Native-scale objects pasted before the resize (short side 32, 64 or 128: x0.5, 1, 2) and a
    crop spanning the full height, so a cut shows in the width alone and every object's height
    gives its scale. Measured: scale distribution of whole objects and share of cut objects."""
    sizes, crop = (32, 64, 128), (128, 64)
    cfg = recipe_cfg(config_file, data, "small", "INPUT.OOD_PROB", "1.0", "INPUT.MIN_SIZE_TRAIN", str(sizes),
                     "INPUT.CROP.SIZE", str(crop))
    n = 900
    boxes = [object_box(out["sem_seg"]) for out in run(cfg, n)]
    present = [b for b in boxes if b is not None]
    scales = [Fraction(int(bh), SMALL[0]) for bh, _, _ in present]
    assert set(scales) <= {Fraction(1, 2), Fraction(1), Fraction(2)}  # never cut vertically
    whole = [s for s, (bh, bw, count) in zip(scales, present) if bw == SMALL[1] * s]
    assert all(count == bh * bw for bh, bw, count in present)  # a filled rectangle, cut or not

    per_size = before_augmentation_expectation(sizes, SMALL, crop)
    p_present = np.mean([p for p, _ in per_size.values()])
    p_whole = np.mean([w for _, w in per_size.values()])
    assert within(len(present) / n, p_present, n)
    cut_share, expected_cut = 1 - len(whole) / len(present), 1 - p_whole / p_present
    assert within(cut_share, expected_cut, len(present)), (cut_share, expected_cut)
    assert expected_cut > 0.2  # the crop really cuts: a final-crop paste would give 0
    for size, (_, w) in per_size.items():
        expected = w / sum(v for _, v in per_size.values())  # P(scale | whole)
        measured = np.mean([s == Fraction(size, H) for s in whole])
        assert within(measured, expected, len(whole)), (size, measured, expected)


def test_after_crop_scales_follow_rpls_factor_set_and_objects_stay_whole(data):
    """RPL: the object scaled by a factor drawn from {.25, .5, .5, .75, .1, .125}, pasted inside the
    crop: every object whole, factor frequencies 1/6 each and 2/6 for 0.5."""
    cfg = recipe_cfg(RPL, data, "large")
    n = 600
    boxes = [object_box(out["sem_seg"]) for out in run(cfg, n)]
    assert all(b is not None for b in boxes)  # p = 1 and nothing is lost
    expected = {0.1: 1 / 6, 0.125: 1 / 6, 0.25: 1 / 6, 0.5: 2 / 6, 0.75: 1 / 6}
    heights = {round(LARGE[0] * f): f for f in expected}  # 4, 5, 10, 20, 30 px
    factors = []
    for bh, bw, count in boxes:
        f = heights[int(bh)]
        assert abs(bw - LARGE[1] * f) <= 0.5 and count == bh * bw  # whole, aspect kept
        factors.append(f)
    for f, p in expected.items():
        assert within(np.mean([g == f for g in factors]), p, n), f


def test_final_crop_scale_range_and_objects_stay_whole(data):
    """The plugin's recipe (VCA): longer side U(0.1, 0.5) x the crop's shorter side, rounded to
    whole pixels, always whole inside the final crop."""
    cfg = recipe_cfg(VCA, data, "large", "INPUT.OOD_PROB", "1.0")
    n = 500
    boxes = [object_box(out["sem_seg"]) for out in run(cfg, n)]
    for bh, bw, count in boxes:
        assert abs(bh - bw * LARGE[0] / LARGE[1]) <= 1 and count == bh * bw  # whole, aspect kept
    # The longer side is round(X), X ~ U(0.1 * 32, 0.5 * 32): P(k) = |[k - 0.5, k + 0.5) & [3.2, 16]| / 12.8.
    short = min(cfg.INPUT.CROP.SIZE)
    low, high = 0.1 * short, 0.5 * short
    ks = np.arange(int(low), int(high) + 2)
    probs = np.clip(np.minimum(ks + 0.5, high) - np.maximum(ks - 0.5, low), 0, None) / (high - low)
    mean, sd = float(ks @ probs), math.sqrt(float((ks**2) @ probs) - float(ks @ probs) ** 2)
    longer = np.array([bw for _, bw, _ in boxes])
    assert set(longer.tolist()) <= set(ks[probs > 0].tolist())
    assert abs(longer.mean() - mean) <= 4 * sd / math.sqrt(n), (longer.mean(), mean)
    assert within(np.mean(longer <= 9), float(probs[ks <= 9].sum()), n)


# ---------------------------------------------------------------- flip probability


@pytest.mark.parametrize("config_file,expected", [(RBA, 0.5), (PEBAL, 0.8), (RPL, 0.8), (VCA, 0.5)])
def test_flip_probability(data, config_file, expected):
    cfg = recipe_cfg(config_file, data, "small", "INPUT.OOD_PROB", "0.0", "INPUT.MIN_SIZE_TRAIN", f"({H},)",
                     "INPUT.CROP.SIZE", f"({H}, {W})")
    n = 500
    flipped = np.mean([out["sem_seg"][0, 0] == 1 for out in run(cfg, n)])  # class 1 moved to the left
    assert within(flipped, expected, n), (flipped, expected)


# ---------------------------------------------------------------- proxy subset policies


def drawn_pool_ids(outputs):
    """Pool entry of each sample's object, read off its colour (the green channel)."""
    ids = []
    for out in outputs:
        pixels = out["image"].transpose(1, 2, 0)[out["sem_seg"] == 254]
        ids.append(int(np.median(pixels[:, 1])) // 20 if len(pixels) else None)
    return ids


def whole_scene_cfg(data, *opts):
    """PEBAL's recipe with the crop spanning the scene, so every object stays visible."""
    return recipe_cfg(PEBAL, data, "small", "INPUT.OOD_PROB", "1.0", "INPUT.MIN_SIZE_TRAIN", f"({H},)",
                      "INPUT.CROP.SIZE", f"({H}, {W})", *opts)


def test_fixed_subset_is_the_same_every_epoch_and_rank(data, monkeypatch):
    cfg = whole_scene_cfg(data, "INPUT.OOD_PROXY_POLICY", "fixed", "INPUT.OOD_PROXY_SEED", "5")
    paster = OutlierPaster(cfg)
    files = [r["outlier_mask_file"] for r in select_proxy_subset(DatasetCatalog.get(data["small"]), 4, 5)]
    assert all([r["outlier_mask_file"] for r in paster.proxy_for_epoch(e)] == files for e in range(4))
    monkeypatch.setattr(outlier_paste.comm, "get_world_size", lambda: 8)
    np.random.seed(123)  # another rank: other global RNG state, other world size
    assert [r["outlier_mask_file"] for r in OutlierPaster(cfg).proxy] == files
    ids = drawn_pool_ids(run(cfg, 4 * TRAIN_IMAGES))
    allowed = {int(os.path.basename(f)[1:4]) for f in files}
    assert set(ids) == allowed  # three epochs' worth of samples, one subset


@pytest.mark.parametrize("world_size", [1, 2])
def test_per_epoch_subset_is_redrawn_each_epoch_deterministically(data, monkeypatch, world_size):
    monkeypatch.setattr(outlier_paste.comm, "get_world_size", lambda: world_size)
    cfg = whole_scene_cfg(data, "INPUT.OOD_PROXY_POLICY", "per_epoch", "INPUT.OOD_PROXY_SEED", "5")
    paster = OutlierPaster(cfg)
    assert paster.epoch_length == TRAIN_IMAGES  # OOD_PROXY_EPOCH_LENGTH 0: one pass over DATASETS.TRAIN
    subsets = [[r["outlier_mask_file"] for r in paster.proxy_for_epoch(e)] for e in range(4)]
    assert len({tuple(s) for s in subsets}) == 4  # a new subset every epoch ...
    again = OutlierPaster(cfg)
    assert subsets == [[r["outlier_mask_file"] for r in again.proxy_for_epoch(e)] for e in range(4)]  # ... seeded
    other = OutlierPaster(whole_scene_cfg(data, "INPUT.OOD_PROXY_POLICY", "per_epoch", "INPUT.OOD_PROXY_SEED", "6"))
    assert subsets != [[r["outlier_mask_file"] for r in other.proxy_for_epoch(e)] for e in range(4)]
    pool = DatasetCatalog.get(data["small"])
    assert subsets[0] == [r["outlier_mask_file"] for r in select_proxy_subset(pool, 4, (5, 0))]

    # One process of world_size sees 1 / world_size of an epoch's samples.
    per_epoch = TRAIN_IMAGES // world_size
    ids = drawn_pool_ids(run(cfg, 4 * per_epoch))
    for e in range(4):
        allowed = {int(os.path.basename(f)[1:4]) for f in subsets[e]}
        assert set(ids[e * per_epoch: (e + 1) * per_epoch]) <= allowed, e
    assert len(set(ids)) > 4  # more objects than one subset holds


# ---------------------------------------------------------------- RPL's raw image for CoroCL


def test_rpl_raw_outlier_image_is_the_pasted_pool_image_unscaled(data):
    """CoroCL's raw image: the pool image whose object this sample pasted (RPL draws one COCO image
    per sample for both), unscaled, centre-cropped to the crop (48 x 72 pool images, 32 x 64 crop)."""
    cfg = recipe_cfg(RPL, data, "large", "INPUT.OOD_PROXY_POLICY", "fixed", "INPUT.COCO_PROXY_SIZE", str(POOL_SIZE))
    crop_h, crop_w = cfg.INPUT.CROP.SIZE
    outputs = run(cfg, 40, extra_inputs=("outlier_image",))
    pasted = drawn_pool_ids(outputs)
    pool = {int(os.path.basename(r["file_name"])[1:4]): r for r in DatasetCatalog.get(data["large"])}
    for out, pool_id in zip(outputs, pasted):
        mask = cv2.imread(pool[pool_id]["outlier_mask_file"], cv2.IMREAD_GRAYSCALE)
        top, left = (mask.shape[0] - crop_h) // 2, (mask.shape[1] - crop_w) // 2
        centre = mask[top: top + crop_h, left: left + crop_w] == 254
        assert np.array_equal(out["outlier_sem_seg"] == 254, centre)
        assert set(np.unique(out["outlier_sem_seg"]).tolist()) <= {0, 254}  # no padding: the pool image is larger
    assert len(set(pasted)) > 3


# ---------------------------------------------------------------- oversize objects and bad values


def test_oversize_objects_are_skipped_or_shrunk(data):
    pool = DatasetCatalog.get(data["large"])  # 40 x 60 objects
    image, sem_seg = np.zeros((30, 50, 3), np.uint8), np.zeros((30, 50), np.int64)
    skip = OutlierPaster(pool, probability=1.0, proxy_size=4, scale_mode="native", oversize="skip")
    assert all(not (skip(image, sem_seg, np.random.default_rng(s))[1] == 254).any() for s in range(20))
    shrink = OutlierPaster(pool, probability=1.0, proxy_size=4, scale_mode="native", oversize="shrink")
    for s in range(20):
        bh, bw, _ = object_box(shrink(image, sem_seg, np.random.default_rng(s))[1])
        assert (bh, bw) == (30, 45)  # the largest fit with the 2:3 aspect


BAD_VALUES = [
    ("INPUT.OOD_PASTE_STAGE", "sometimes", ()),
    ("INPUT.OOD_SCALE_MODE", "huge", ()),
    ("INPUT.OOD_SCALE_FACTORS", [0.5, -1.0], ()),
    ("INPUT.OOD_SCALE_FACTORS", [], ()),
    ("INPUT.OOD_SCALE_RANGE", (0.5, 0.2), ()),
    ("INPUT.OOD_OVERSIZE", "stretch", ()),
    ("INPUT.OOD_PROXY_POLICY", "weekly", ()),
    ("INPUT.OOD_PROXY_EPOCH_LENGTH", -3, ("INPUT.OOD_PROXY_POLICY", "per_epoch")),
    ("INPUT.OOD_PROB", 1.5, ()),
    ("INPUT.COCO_PROXY_SIZE", 0, ()),
    ("INPUT.RANDOM_FLIP_PROB", 1.2, ()),
]


@pytest.mark.parametrize("config_file", [RBA, PEBAL])
@pytest.mark.parametrize("key,value,extra", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(data, config_file, key, value, extra):
    cfg = recipe_cfg(config_file, data, "small", *extra, key, str(value))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as error:
        build_train_mapper(cfg)
    assert str(value) in str(error.value)


def test_after_crop_without_a_crop_is_refused(data):
    cfg = recipe_cfg(RPL, data, "large", "INPUT.CROP.ENABLED", "False")
    with pytest.raises(ValueError, match=r"INPUT\.OOD_PASTE_STAGE 'after_crop'.*INPUT\.CROP\.ENABLED"):
        build_train_mapper(cfg)


def test_per_epoch_without_an_epoch_length_or_training_set_is_refused(data):
    cfg = recipe_cfg(PEBAL, data, "small", "INPUT.OOD_PROXY_EPOCH_LENGTH", "0", "DATASETS.TRAIN", "()")
    with pytest.raises(ValueError, match=r"INPUT\.OOD_PROXY_EPOCH_LENGTH is 0.*DATASETS\.TRAIN"):
        build_train_mapper(cfg)
