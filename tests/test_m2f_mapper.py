"""The semantic mapper's per-class masks and classes match the label map; bad input is named."""
import cv2
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T

from rba_plugin.config import get_cfg
from rba_plugin.data.dataset_mappers import ColorAugSSD, ColorAugSSDTransform, MaskFormerSemanticDatasetMapper

from .conftest import REPO_ROOT
from .m2f_scenes import CLASS_COLOURS, write_scenes


def _write(tmp_path, image, label, name="img"):
    image_file, label_file = tmp_path / f"{name}.png", tmp_path / f"{name}_label.png"
    cv2.imwrite(str(image_file), image[:, :, ::-1])
    cv2.imwrite(str(label_file), label)
    return {"file_name": str(image_file), "sem_seg_file_name": str(label_file),
            "height": image.shape[0], "width": image.shape[1]}


def _mapper(augmentations, **kwargs):
    args = dict(augmentations=augmentations, image_format="RGB", ignore_label=255, size_divisibility=-1,
                num_classes=19, ood_label=254)
    args.update(kwargs)
    return MaskFormerSemanticDatasetMapper(is_train=True, **args)


def _label_and_image(rng, h=24, w=40):
    label = rng.choice(np.array([0, 3, 7, 18], np.uint8), size=(h, w))
    label[:4, :5] = 255
    label[-3:, -6:] = 254
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, label


def test_masks_and_classes_match_label_map(tmp_path):
    image, label = _label_and_image(np.random.default_rng(0))
    out = _mapper([])(_write(tmp_path, image, label))
    assert out["image"].dtype == torch.uint8 and torch.equal(out["image"], torch.from_numpy(image).permute(2, 0, 1))
    assert out["sem_seg"].dtype == torch.int64 and torch.equal(out["sem_seg"], torch.from_numpy(label).long())
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 3, 7, 18]
    for k, cls in enumerate(inst.gt_classes.tolist()):
        assert np.array_equal(inst.gt_masks[k].numpy(), label == cls)
    covered = inst.gt_masks.any(0).numpy()
    assert not covered[label == 255].any() and not covered[label == 254].any()
    assert covered[(label != 255) & (label != 254)].all()


def test_flip_moves_image_label_and_masks_together(tmp_path):
    image, label = _label_and_image(np.random.default_rng(1))
    out = _mapper([T.RandomFlip(prob=1.0)])(_write(tmp_path, image, label))
    flipped = label[:, ::-1]
    assert torch.equal(out["image"], torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1))
    assert torch.equal(out["sem_seg"], torch.from_numpy(flipped.copy()).long())
    for k, cls in enumerate(out["instances"].gt_classes.tolist()):
        assert np.array_equal(out["instances"].gt_masks[k].numpy(), flipped == cls)


def test_config_pipeline_keeps_image_and_label_aligned(tmp_path):
    # Scenes whose colour encodes the class: after resize + crop + flip, each class mask still
    # sits on that class's colour.
    dicts = write_scenes(tmp_path, 3, 64, 128, seed=3)
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"))
    cfg.DATASETS.TRAIN = ()
    cfg.INPUT.MIN_SIZE_TRAIN = (48, 64, 96)
    cfg.INPUT.CROP.SIZE = (40, 56)
    cfg.INPUT.COLOR_AUG_SSD = False
    mapper = MaskFormerSemanticDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    checked = 0
    for d in dicts * 3:
        out = mapper(d)
        assert tuple(out["image"].shape[1:]) == (40, 56) == tuple(out["sem_seg"].shape)
        image = out["image"].permute(1, 2, 0).numpy().astype(float)
        for k, cls in enumerate(out["instances"].gt_classes.tolist()):
            mask = out["instances"].gt_masks[k].numpy()
            assert np.array_equal(mask, out["sem_seg"].numpy() == cls)
            # Away from class borders, where bilinear image resizing mixes colours.
            inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if inner.sum() < 5:
                continue
            checked += 1
            median = np.median(image[inner], axis=0)
            assert np.abs(median - CLASS_COLOURS[cls]).max() < 20, (cls, median)
    assert checked >= 9


def test_size_divisibility_pads_image_and_label(tmp_path):
    image, label = _label_and_image(np.random.default_rng(2), 24, 40)
    out = _mapper([], size_divisibility=32)(_write(tmp_path, image, label))
    assert tuple(out["image"].shape) == (3, 32, 64)
    assert (out["sem_seg"][24:] == 255).all() and (out["sem_seg"][:, 40:] == 255).all()
    assert (out["image"][:, 24:] == 128).all()
    assert not out["instances"].gt_masks[:, 24:].any()


def test_image_size_not_as_in_dataset_dict_names_the_file(tmp_path):
    image, label = _label_and_image(np.random.default_rng(3))
    d = _write(tmp_path, image, label, name="wrong_size")
    d["height"] = 30
    with pytest.raises(ValueError, match=r"wrong_size\.png.*24x40.*30x40"):
        _mapper([])(d)


def test_label_size_not_as_image_names_both_files(tmp_path):
    image, label = _label_and_image(np.random.default_rng(4))
    d = _write(tmp_path, image, label, name="pair")
    cv2.imwrite(d["sem_seg_file_name"], label[:-1])
    with pytest.raises(ValueError, match=r"pair_label\.png.*pair\.png"):
        _mapper([])(d)


def test_label_value_out_of_range_names_the_file(tmp_path):
    image, label = _label_and_image(np.random.default_rng(5))
    label[10, 10] = 40
    with pytest.raises(ValueError, match=r"bad_label_label\.png.*\[40\]"):
        _mapper([])(_write(tmp_path, image, label, name="bad_label"))


def test_outlier_paster_hook(tmp_path):
    image, label = _label_and_image(np.random.default_rng(6))
    seen = {}

    def paster(img, sem_seg, rng):
        seen.update(image=img.shape, dtype=img.dtype, label=sem_seg.shape, rng=type(rng))
        img, sem_seg = img.copy(), sem_seg.copy()
        img[8:14, 10:20] = 255
        sem_seg[8:14, 10:20] = 254
        return img, sem_seg

    out = _mapper([T.RandomFlip(prob=1.0)], outlier_paster=paster)(_write(tmp_path, image, label))
    assert seen == {"image": (24, 40, 3), "dtype": np.uint8, "label": (24, 40), "rng": np.random.Generator}
    assert (out["sem_seg"][8:14, 10:20] == 254).all()
    assert (out["image"][:, 8:14, 10:20] == 255).all()
    assert not out["instances"].gt_masks[:, 8:14, 10:20].any()


def test_color_aug_ssd_by_hand():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    brightness = ColorAugSSDTransform("RGB", 20.0, None, None, None, True).apply_image(image)
    assert np.array_equal(brightness, np.clip(image.astype(np.float32) + 20.0, 0, 255).astype(np.uint8))
    contrast = ColorAugSSDTransform("RGB", None, 1.3, None, None, False).apply_image(image)
    assert np.array_equal(contrast, np.clip(image.astype(np.float32) * 1.3, 0, 255).astype(np.uint8))
    label = rng.integers(0, 19, (6, 7))
    assert np.array_equal(ColorAugSSDTransform("BGR", 5.0, 1.1, 0.8, 3, True).apply_segmentation(label), label)
    # A hue shift of 180 degrees (90 in OpenCV units) changes colours; a full turn (180) does not.
    grey_free = np.array([[[200, 30, 30]]], np.uint8)
    full_turn = ColorAugSSDTransform("RGB", None, None, None, 180, True).apply_image(grey_free)
    half_turn = ColorAugSSDTransform("RGB", None, None, None, 90, True).apply_image(grey_free)
    assert np.abs(full_turn.astype(int) - grey_free).max() <= 2
    assert np.abs(half_turn.astype(int) - grey_free).max() > 100


def test_color_aug_ssd_draws_parameters_in_range():
    aug = ColorAugSSD("RGB")
    np.random.seed(0)
    image = np.zeros((4, 4, 3), np.uint8)
    tfms = [aug.get_transform(image) for _ in range(200)]
    betas = [t.brightness_beta for t in tfms if t.brightness_beta is not None]
    alphas = [t.contrast_alpha for t in tfms if t.contrast_alpha is not None]
    hues = [t.hue_shift for t in tfms if t.hue_shift is not None]
    assert 60 < len(betas) < 140  # each step happens with probability 1/2
    assert all(-32 <= b <= 32 for b in betas) and all(0.5 <= a <= 1.5 for a in alphas)
    assert all(-18 <= h <= 18 for h in hues) and {t.contrast_first for t in tfms} == {True, False}
