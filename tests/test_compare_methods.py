"""The method comparison: planning (skips, parent order), ranking, table files, and one tiny
real run through tools/compare_methods.py."""
import json
import math

import pytest

from rba_plugin.experiments.comparison import (
    DEFAULT_METHODS,
    Budget,
    MethodEntry,
    plan_runs,
    rank_rows,
    row_from_results,
    run_comparison,
    run_overrides,
)

from .conftest import REPO_ROOT
from .pixel_e2e_utils import load_tool, register_tiny_synthcity, tiny_run_opts

OOD = "stub_anomaly"
VAL = "stub_val"


def stub_results(ap, fpr, miou, unknown=None):
    ood = {"AP": ap, "FPR95": fpr, "AUROC": 50.0 + ap / 2, "sIoU": 10.0, "PPV": 20.0, "mean_F1": 5.0,
           "mIoU": 99.0, "component_threshold": 0.3}
    if unknown is not None:
        ood["unknown_IoU"] = unknown
    return {VAL: {"sem_seg": {"mIoU": miou, "fwIoU": 1.0}}, OOD: {OOD: ood}}


def entry(name, config="configs/synthcity/pixel/closed_set.yaml", parent=None, **kw):
    return MethodEntry(name, "pixel", config, parent=parent, **kw)


def test_rows_rank_by_the_chosen_metric_in_its_direction():
    results = {"a": stub_results(30.0, 40.0, 60.0), "b": stub_results(50.0, 70.0, 55.0),
               "c": stub_results(float("nan"), 10.0, 50.0), "d": stub_results(40.0, 20.0, 70.0, unknown=12.5)}
    rows = [row_from_results(entry(n), r, OOD, VAL) for n, r in results.items()]
    assert rows[0]["metrics"]["mIoU"] == 60.0  # closed-set mIoU from the mIoU dataset, not the OOD one
    assert rows[3]["unknown_IoU"] == 12.5 and "unknown_IoU" not in rows[0]
    by_ap = rank_rows(rows, "AP")
    assert [r["name"] for r in by_ap] == ["b", "d", "a", "c"]
    assert [r["rank"] for r in by_ap] == [1, 2, 3, None]  # NaN last, unranked
    by_fpr = rank_rows(rows, "FPR95")  # lower is better
    assert [r["name"] for r in by_fpr] == ["c", "d", "a", "b"]
    with pytest.raises(ValueError, match="cannot rank by"):
        rank_rows(rows, "loss")
    # without a mIoU dataset the OOD dataset's own mIoU is used
    assert row_from_results(entry("a"), results["a"], OOD, None)["metrics"]["mIoU"] == 99.0
    with pytest.raises(KeyError, match="lack"):
        row_from_results(entry("x"), {OOD: {OOD: {"AP": 1.0}}}, OOD, None)


def test_plan_skips_missing_configs_and_their_children_and_orders_parents_first():
    entries = [
        entry("child", parent="base"),
        entry("base"),
        entry("future", config="configs/does/not/exist.yaml"),
        entry("future_child", parent="future"),
        entry("orphan", parent="nobody"),
    ]
    ordered, skipped = plan_runs(entries, str(REPO_ROOT))
    assert [e.name for e in ordered] == ["base", "child"]
    assert set(skipped) == {"future", "future_child", "orphan"}
    assert "does not exist" in skipped["future"] and "exist.yaml" in skipped["future"]
    with pytest.raises(ValueError, match="cycle"):
        plan_runs([entry("x", parent="y"), entry("y", parent="x")], str(REPO_ROOT))
    with pytest.raises(ValueError, match="twice"):
        plan_runs([entry("x"), entry("x")], str(REPO_ROOT))


def test_default_table_is_consistent():
    names = [e.name for e in DEFAULT_METHODS]
    assert len(names) == len(set(names))
    assert {e.parent for e in DEFAULT_METHODS if e.parent} <= set(names)
    ordered, skipped = plan_runs(DEFAULT_METHODS, str(REPO_ROOT))
    pixel = [e.name for e in ordered if e.branch == "pixel"]
    assert pixel == [e.name for e in DEFAULT_METHODS if e.branch == "pixel"]  # every pixel config exists
    for name, reason in skipped.items():  # Mask2Former fine-tunes may not have landed yet
        assert "does not exist" in reason or "is skipped" in reason, (name, reason)


def test_overrides_set_budget_parent_weights_and_score(tmp_path):
    budget = Budget(base_iters=7, finetune_iters=3)
    base = run_overrides(entry("base"), budget, str(tmp_path / "base"), None)
    assert base[base.index("SOLVER.MAX_ITER") + 1] == "7" and "MODEL.WEIGHTS" not in base
    child = run_overrides(entry("c", parent="base", score="msp"), budget, str(tmp_path / "c"), str(tmp_path / "base"))
    assert child[child.index("SOLVER.MAX_ITER") + 1] == "3"
    assert child[child.index("MODEL.WEIGHTS") + 1] == str(tmp_path / "base" / "model_final.pth")
    assert child[child.index("MODEL.OOD.SCORES") + 1] == "['msp']"
    assert "MODEL.OOD.SCORES" not in base  # no score named: the config's own
    assert "SOLVER.MAX_ITER" not in run_overrides(entry("f"), Budget(None, None), str(tmp_path), None)


def test_failures_are_reported_children_skipped_and_tables_written(tmp_path):
    entries = [entry("base"), entry("good", parent="base"), entry("broken"), entry("broken_child", parent="broken"),
               entry("future", config="configs/nope.yaml")]
    values = {"base": (20.0, 80.0, 40.0), "good": (35.0, 50.0, 40.0)}
    calls = []

    def runner(e, config, opts, ood, miou):
        calls.append((e.name, opts))
        if e.name == "broken":
            raise RuntimeError("diverged")
        return stub_results(*values[e.name])

    out = run_comparison(entries, runner, repo_root=str(REPO_ROOT), out_dir=str(tmp_path), budget=Budget(5, 2),
                         ood_dataset=OOD, miou_dataset=VAL, user_opts=["SEED", "1"], log=lambda s: None)
    assert [c[0] for c in calls] == ["base", "good", "broken"]
    assert calls[0][1][:2] == ["SEED", "1"]  # the user's overrides come first, the comparison's last
    assert out["failed"] == {"broken": "RuntimeError: diverged"}
    assert set(out["skipped"]) == {"broken_child", "future"}
    payload = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["name"] for r in payload["rows"]] == ["good", "base"]
    assert payload["rows"][0]["metrics"]["AP"] == 35.0 and payload["rows"][0]["rank"] == 1
    assert payload["failed"] == out["failed"] and payload["meta"]["budget"] == {"base_iters": 5, "finetune_iters": 2}
    md = (tmp_path / "comparison.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert lines[0].startswith("| 1 | good | pixel | default | 35.00 | 50.00 |")
    assert lines[1].startswith("| 2 | base |")
    assert "broken: RuntimeError: diverged" in md and "future: config configs/nope.yaml does not exist" in md
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_tool_runs_one_pixel_method_for_real(tmp_path_factory):
    prefix = register_tiny_synthcity(tmp_path_factory.mktemp("synth"), "compare_tiny_synth")
    out = tmp_path_factory.mktemp("compare")
    tool = load_tool("compare_methods")
    opts = tiny_run_opts(prefix, out / "unused", 2)
    outcome = tool.main(["--output", str(out), "--methods", "pixel_raml", "--base-iters", "2", "--iters", "1",
                         "--ood-dataset", f"{prefix}_anomaly", "--miou-dataset", f"{prefix}_val", "--opts", *opts])
    assert outcome["failed"] == {}
    payload = json.loads((out / "comparison.json").read_text())
    assert {r["name"] for r in payload["rows"]} == {"pixel_closed_set_maxlogit", "pixel_raml"}
    for row in payload["rows"]:
        assert all(v is None or 0.0 <= v <= 100.0 for v in row["metrics"].values()), row
        assert row["metrics"]["AP"] is not None and row["metrics"]["mIoU"] is not None
    # RAML's anomaly stage keeps the closed-set segmentation: equal closed-set mIoU
    by_name = {r["name"]: r for r in payload["rows"]}
    assert by_name["pixel_raml"]["metrics"]["mIoU"] == by_name["pixel_closed_set_maxlogit"]["metrics"]["mIoU"]
    ood = json.loads((out / "runs" / "pixel_raml" / "inference" / f"ood_{prefix}_anomaly.json").read_text())["results"]
    assert math.isclose(by_name["pixel_raml"]["metrics"]["AP"], ood["AP"])
    final = (out / "runs" / "pixel_raml" / "model_final.pth")
    assert final.is_file()
    assert (out / "comparison.md").read_text().count("| pixel_") == 2
    # each run logs into its own log.txt only
    raml_dir = str(out / "runs" / "pixel_raml")
    assert raml_dir in (out / "runs" / "pixel_raml" / "log.txt").read_text()
    assert raml_dir not in (out / "runs" / "pixel_closed_set_maxlogit" / "log.txt").read_text()
    # --resume evaluates finished runs again without training them: same checkpoints, same table
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model_final.pth")}
    again = tool.main(["--output", str(out), "--methods", "pixel_raml", "--base-iters", "2", "--iters", "1", "--resume",
                       "--ood-dataset", f"{prefix}_anomaly", "--miou-dataset", f"{prefix}_val", "--opts", *opts])
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model_final.pth")} == stamps
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in outcome["rows"]]
