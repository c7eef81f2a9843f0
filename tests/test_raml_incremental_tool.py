"""tools/raml_incremental.py: shot-pool checks and a tiny 16+3 run through its three stages."""
import json
import math

import pytest
import torch

from .pixel_e2e_utils import load_tool, register_tiny_synthcity, tiny_run_opts


def test_novel_classes_need_enough_shots_of_enough_pixels():
    tool = load_tool("raml_incremental")
    pool = []
    for counts in ({13: 30, 15: 5}, {13: 12}, {15: 40}):
        sem = torch.zeros(10, 10, dtype=torch.long)
        flat = sem.view(-1)
        start = 0
        for cls, n in counts.items():
            flat[start: start + n] = cls
            start += n
        pool.append({"sem_seg": sem})
    assert tool.present_novel_classes(pool, (13, 14, 15), shots=2, min_pixels=10) == [13]
    assert tool.present_novel_classes(pool, (13, 14, 15), shots=1, min_pixels=10) == [13, 15]
    assert tool.present_novel_classes(pool, (13, 14, 15), shots=2, min_pixels=5) == [13, 15]


@pytest.mark.slow
def test_tiny_16_plus_3_run(tmp_path_factory):
    prefix = register_tiny_synthcity(tmp_path_factory.mktemp("synth"), "raml_inc_tiny_synth")
    out = tmp_path_factory.mktemp("inc")
    tool = load_tool("raml_incremental")
    records = tool.main(["--output", str(out), "--settings", "16+3", "--base-iters", "2", "--mca-iters", "1",
                         "--head-iters", "1", "--shots", "1", "--min-shot-pixels", "10",
                         "--shot-dataset", f"{prefix}_train", "--test-dataset", f"{prefix}_val",
                         "--opts", *tiny_run_opts(prefix, out / "unused", 2)])
    (record,) = records
    assert 14 in record["left_out"]  # the synthetic scenes have no truck
    assert record["novel_classes"] and set(record["novel_classes"]) <= {13, 15}
    metrics = record["metrics"]
    for key in ("mIoU_old", "mIoU_novel", "mIoU_harmonic", "mIoU_all"):
        assert math.isnan(metrics[key]) or 0.0 <= metrics[key] <= 100.0
    # each stage started from the previous one and trained what it should
    closed = torch.load(out / "16+3" / "closed_set" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    mca = torch.load(out / "16+3" / "mca" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    head = torch.load(out / "16+3" / "raml_head" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert not torch.equal(closed["sem_seg_head.predictor.weight"], mca["sem_seg_head.predictor.weight"])
    assert torch.equal(mca["sem_seg_head.predictor.weight"], head["sem_seg_head.predictor.weight"])
    assert torch.equal(mca["ood_method.mca.weight"], head["ood_method.mca.weight"])
    assert head["ood_method.prototype_valid"].any()
    payload = json.loads((out / "incremental.json").read_text())
    assert payload[0]["setting"] == "16+3" and (out / "incremental.md").is_file()
