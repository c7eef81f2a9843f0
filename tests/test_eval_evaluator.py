"""OODEvaluator: results equal AnomalyMetrics / hand-computed mIoU, files written, distributed == single."""
import json
import logging
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog

from rba_plugin.config import get_cfg
from rba_plugin.data import register_anomaly_dataset
from rba_plugin.evaluation import AnomalyMetrics, OODEvaluator
from rba_plugin.utils.tables import format_number

H, W, NUM_FRAMES = 24, 32, 6


def make_dataset(root, with_anomalies=True):
    """Frames with 0/1/255 labels and train-id labels; returns the registered name."""
    rng = np.random.default_rng(0)
    for sub in ("images", "labels", "sem"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(NUM_FRAMES):
        label = np.zeros((H, W), np.uint8)
        if with_anomalies:
            y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
            label[y: y + int(rng.integers(3, 8)), x: x + int(rng.integers(3, 8))] = 1
        label[:2] = 255
        sem = rng.integers(0, 3, (H, W)).astype(np.uint8)
        sem[label != 0] = 255
        cv2.imwrite(os.path.join(root, "images", f"f{i}.png"), np.zeros((H, W, 3), np.uint8))
        cv2.imwrite(os.path.join(root, "labels", f"f{i}_label.png"), label)
        cv2.imwrite(os.path.join(root, "sem", f"f{i}_sem.png"), sem)
    name = f"test_ood_{uuid.uuid4().hex[:8]}"
    register_anomaly_dataset(name, os.path.join(root, "images"), os.path.join(root, "labels"), image_suffix=".png",
                             label_suffix="_label.png", label_map={0: 0, 1: 1, 255: 255},
                             sem_seg_root=os.path.join(root, "sem"), sem_seg_suffix="_sem.png",
                             component_sizes=(2, 2))
    return name


def fake_output(record, scale=1):
    """Deterministic scores correlated with the label, and a 19-class sem_seg."""
    index = int(record["image_id"][1:])
    rng = np.random.default_rng(100 + index)
    label = cv2.imread(record["anomaly_label_file"], cv2.IMREAD_UNCHANGED)
    main = rng.normal(size=(H, W)).astype(np.float32) + 2.0 * (label == 1)
    other = rng.random((H, W)).astype(np.float32)
    sem = cv2.imread(record["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    pred = np.where(rng.random((H, W)) < 0.8, np.minimum(sem, 2), rng.integers(0, 19, (H, W)))
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred.astype(np.int64)), 19).permute(2, 0, 1).float()
    main_t = torch.as_tensor(main)
    if scale != 1:
        main_t = torch.nn.functional.interpolate(main_t[None, None], scale_factor=1 / scale, mode="bilinear")[0, 0]
    return {"ood_score": main_t, "ood_scores": {"ood_score": main_t, "other": torch.as_tensor(other)}, "sem_seg": logits}


def run_evaluator(evaluator, records):
    evaluator.reset()
    for start in range(0, len(records), 2):
        batch = records[start: start + 2]
        evaluator.process(batch, [fake_output(r) for r in batch])
    return evaluator.evaluate()


def test_results_match_direct_metrics_and_files_are_written(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    records = DatasetCatalog.get(name)
    out_dir = str(tmp_path / "out")
    results = run_evaluator(OODEvaluator(name, output_dir=out_dir, distributed=False), records)[name]

    for score_name, prefix in (("ood_score", ""), ("other", "other/")):
        direct = AnomalyMetrics(min_pred_size=2, min_gt_size=2)
        for r in records:
            label = cv2.imread(r["anomaly_label_file"], cv2.IMREAD_UNCHANGED)
            out = fake_output(r)
            direct.update(out["ood_score"] if score_name == "ood_score" else out["ood_scores"]["other"], label)
        expected = direct.compute()
        for key in ("AP", "AUROC", "FPR95", "sIoU", "PPV", "mean_F1"):
            assert results[prefix + key] == pytest.approx(100 * expected[key], nan_ok=True), prefix + key
        assert results[prefix + "component_threshold"] == expected["component_threshold"]
    assert "ood_score/AP" not in results  # the primary score repeated in ood_scores is evaluated once

    confusion = np.zeros((19, 19), np.int64)
    for r in records:
        sem = cv2.imread(r["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
        pred = fake_output(r)["sem_seg"].argmax(0).numpy()
        valid = sem != 255
        np.add.at(confusion, (sem[valid], pred[valid]), 1)
    ious = [confusion[c, c] / (confusion[c].sum() + confusion[:, c].sum() - confusion[c, c]) for c in range(3)]
    # Detectron2's SemSegEvaluator: classes predicted but absent from the ground truth count with
    # IoU 0 (the fake predictions scatter 20 % of the pixels over all 19 classes).
    occurring = int(((confusion.sum(0) + confusion.sum(1)) > 0).sum())
    assert occurring == 19
    assert results["mIoU"] == pytest.approx(100 * sum(ious) / occurring)
    assert [results[f"IoU-{c}"] for c in ("road", "sidewalk", "building")] == pytest.approx([100 * v for v in ious])

    for suffix in ("_pr.png", "_roc.png", ".json"):
        assert os.path.getsize(os.path.join(out_dir, f"ood_{name}{suffix}")) > 0
    with open(os.path.join(out_dir, f"ood_{name}.json")) as f:
        assert json.load(f)["results"]["AP"] == pytest.approx(results["AP"])


def test_scores_are_upsampled_to_label_size_and_mapped_inputs_work(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    records = DatasetCatalog.get(name)
    evaluator = OODEvaluator(name, distributed=False)
    for r in records:
        # What a test mapper passes on: file keys dropped, an image tensor added.
        mapped = {"file_name": r["file_name"], "height": H, "width": W, "image": torch.zeros(3, H, W)}
        output = fake_output(r, scale=2)
        del output["ood_scores"]
        evaluator.process([mapped], [output])
    results = evaluator.evaluate()[name]
    assert 50 < results["AUROC"] <= 100 and "other/AP" not in results
    assert 0 < results["mIoU"] <= 100  # sem_seg_file_name found through the catalog


def test_no_anomaly_pixels_gives_nan_and_a_warning(tmp_path):
    name = make_dataset(str(tmp_path / "data"), with_anomalies=False)
    records = DatasetCatalog.get(name)
    with pytest.warns(RuntimeWarning, match="no anomaly pixels"):
        results = run_evaluator(OODEvaluator(name, distributed=False), records)[name]
    assert np.isnan(results["AP"]) and np.isnan(results["FPR95"]) and np.isnan(results["sIoU"])
    assert not np.isnan(results["mIoU"])


def test_config_form(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "cfg_out")
    cfg.TEST.OOD.COMPONENT_THRESHOLD = 1.5
    cfg.TEST.OOD.COMPONENT_SIZES = [3, 4]
    cfg.TEST.OOD.WRITE_CURVES = False
    evaluator = OODEvaluator(cfg, name)
    assert evaluator.component_sizes == (3, 4) and evaluator.output_dir == cfg.OUTPUT_DIR
    results = run_evaluator(evaluator, DatasetCatalog.get(name))[name]
    assert results["component_threshold"] == 1.5
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, f"ood_{name}_pr.png"))


def test_protocol_key_is_validated_and_smiyc_equals_direct_metrics(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.TEST.OOD.PROTOCOL = "official"
    with pytest.raises(ValueError, match=r"TEST\.OOD\.PROTOCOL.*'official'"):
        OODEvaluator(cfg, name)
    cfg.TEST.OOD.PROTOCOL = "smiyc"
    evaluator = OODEvaluator(cfg, name)
    records = DatasetCatalog.get(name)
    results = run_evaluator(evaluator, records)[name]
    direct = AnomalyMetrics(min_pred_size=2, min_gt_size=2, protocol="smiyc")
    for r in reversed(records):  # frames are ordered by name: arrival order does not matter
        label = cv2.imread(r["anomaly_label_file"], cv2.IMREAD_UNCHANGED)
        direct.update(fake_output(r)["ood_score"], label, frame=r["file_name"])
    expected = direct.compute()
    for key in ("AP", "AUROC", "FPR95", "sIoU", "PPV", "mean_F1"):
        assert results[key] == pytest.approx(100 * expected[key], nan_ok=True), key
    assert results["component_threshold"] == expected["component_threshold"]
    with open(os.path.join(cfg.OUTPUT_DIR, f"ood_{name}.json")) as f:
        assert json.load(f)["protocol"] == "smiyc"


def test_float64_scores_reach_the_metrics_unrounded(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    evaluator = OODEvaluator(name, distributed=False, with_components=False)
    record = DatasetCatalog.get(name)[0]
    score = np.full((H, W), 0.5, np.float64)
    score[5, 5] += 1e-12  # (a valid pixel) merges with 0.5 in float32: the accumulator must say so
    with pytest.warns(RuntimeWarning, match="merged 1 distinct values"):
        evaluator.process([record], [{"ood_score": torch.as_tensor(score)}])


# ----------------------------------------------------------------------------- distributed


def _distributed_main(data_root, name, result_file, protocol="exact"):
    from detectron2.utils import comm

    if name not in DatasetCatalog.list():
        register_anomaly_dataset(name, os.path.join(data_root, "images"), os.path.join(data_root, "labels"),
                                 image_suffix=".png", label_suffix="_label.png", label_map={0: 0, 1: 1, 255: 255},
                                 sem_seg_root=os.path.join(data_root, "sem"), sem_seg_suffix="_sem.png",
                                 component_sizes=(2, 2))
    records = DatasetCatalog.get(name)
    mine = records[comm.get_rank():: comm.get_world_size()]  # interleaved shards
    evaluator = OODEvaluator(name, distributed=True, protocol=protocol)
    evaluator.reset()
    for r in mine:
        evaluator.process([r], [fake_output(r)])
    results = evaluator.evaluate()
    if comm.is_main_process():
        with open(result_file, "w") as f:
            json.dump(results[name], f)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["exact", "smiyc"])
def test_two_processes_equal_one(tmp_path, protocol):
    from rba_plugin.engine import launch

    data_root = str(tmp_path / "data")
    name = make_dataset(data_root)
    single = run_evaluator(OODEvaluator(name, distributed=False, protocol=protocol), DatasetCatalog.get(name))[name]
    result_file = str(tmp_path / "dist.json")
    # A rendezvous file of this test's own: no port to choose (and race for) on a shared machine.
    launch(_distributed_main, 2, dist_url=f"file://{tmp_path / 'rendezvous'}", args=(data_root, name, result_file, protocol))
    with open(result_file) as f:
        dist = json.load(f)
    assert dist.keys() == single.keys()
    for key in single:
        assert dist[key] == pytest.approx(single[key], nan_ok=True, rel=1e-12), key


def test_the_log_shows_one_table_row_per_score_with_the_results(tmp_path):
    name = make_dataset(str(tmp_path / "data"))
    evaluator = OODEvaluator(name, output_dir=str(tmp_path / "out"), distributed=False)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    evaluator._logger.addHandler(handler)
    level = evaluator._logger.level
    evaluator._logger.setLevel(logging.INFO)
    try:
        results = run_evaluator(evaluator, DatasetCatalog.get(name))[name]
    finally:
        evaluator._logger.removeHandler(handler)
        evaluator._logger.setLevel(level)
    table = [m for m in messages if m.startswith(f"OOD results on {name} (percent, protocol exact; closed-set mIoU")]
    assert len(table) == 1
    lines = table[0].splitlines()
    assert lines[1] == "| score | AP | FPR95 | AUROC | sIoU | PPV | mean_F1 |"
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[3:])}
    for score, prefix in (("ood_score", ""), ("other", "other/")):
        expected = [format_number(results[prefix + k]) for k in ("AP", "FPR95", "AUROC", "sIoU", "PPV", "mean_F1")]
        assert rows[score] == expected
