"""OODEvaluator's class-agnostic unknown IoU (VCA's open-set metric) from outputs["unknown_mask"]."""
import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog

from rba_plugin.evaluation import OODEvaluator

from .test_eval_evaluator import H, W, fake_output, make_dataset


def unknown_mask(record):
    """A deterministic prediction that overlaps the anomaly partly and adds false positives."""
    index = int(record["image_id"][1:])
    rng = np.random.default_rng(500 + index)
    label = cv2.imread(record["anomaly_label_file"], cv2.IMREAD_UNCHANGED)
    return (label == 1) & (rng.random((H, W)) < 0.7) | (rng.random((H, W)) < 0.05)


def test_unknown_iou_is_pooled_over_the_dataset_and_void_is_excluded(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    records = DatasetCatalog.get(name)
    evaluator = OODEvaluator(name, output_dir=None, distributed=False)
    evaluator.reset()
    inter = union = 0
    for record in records:
        mask = unknown_mask(record)
        mask[0, :] = True  # row 0 is void (255) in every label: must not count
        output = {**fake_output(record), "unknown_mask": torch.as_tensor(mask)}
        evaluator.process([record], [output])
        label = cv2.imread(record["anomaly_label_file"], cv2.IMREAD_UNCHANGED)
        valid = label != 255
        inter += int(((label == 1) & mask & valid).sum())
        union += int((((label == 1) | mask) & valid).sum())
    results = evaluator.evaluate()[name]
    assert 0 < inter < union
    assert results["unknown_IoU"] == 100.0 * inter / union
    assert "AP" in results and "mIoU" in results


def test_half_resolution_mask_is_resized_nearest(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    records = DatasetCatalog.get(name)
    evaluator = OODEvaluator(name, output_dir=None, distributed=False)
    evaluator.reset()
    inter = union = 0
    for record in records:
        small = np.zeros((H // 2, W // 2), bool)
        small[3:7, 4:10] = True
        full = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)  # what nearest upsampling gives
        evaluator.process([record], [{**fake_output(record), "unknown_mask": torch.as_tensor(small)}])
        label = cv2.imread(record["anomaly_label_file"], cv2.IMREAD_UNCHANGED)
        valid = label != 255
        inter += int(((label == 1) & full & valid).sum())
        union += int((((label == 1) | full) & valid).sum())
    assert evaluator.evaluate()[name]["unknown_IoU"] == 100.0 * inter / union


def test_no_unknown_mask_no_key(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    records = DatasetCatalog.get(name)
    evaluator = OODEvaluator(name, output_dir=None, distributed=False)
    evaluator.reset()
    evaluator.process(records, [fake_output(r) for r in records])
    assert "unknown_IoU" not in evaluator.evaluate()[name]
