"""Training end to end on the CPU through tools/train_net.py: overfitting, resuming, evaluating."""
import importlib.util
import subprocess
import sys

import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from rba_plugin.config import get_cfg
from rba_plugin.engine import SafeCheckpointer

from .conftest import REPO_ROOT
from .m2f_scenes import register_scenes

CONFIG = str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml")


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO_ROOT / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(dataset, output_dir, *extra, flags=()):
    # Tiny, deterministic inputs (no crop, no colour jitter) so a few dozen steps can overfit.
    opts = [
        "OUTPUT_DIR", str(output_dir),
        "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
        "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MIN_SIZE_TEST", "32", "INPUT.CROP.ENABLED", "False",
        "INPUT.COLOR_AUG_SSD", "False", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "TEST.EVAL_PERIOD", "0", "SEED", "7",
    ]
    return default_argument_parser().parse_args(["--config-file", CONFIG, *flags, *opts, *extra])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return register_scenes(tmp_path_factory.mktemp("scenes"), count=4, height=32, width=64, seed=0)


@pytest.mark.slow
def test_small_config_overfits_a_few_images(scenes, tmp_path):
    train_net = _train_net()
    cfg = train_net.setup(_args(scenes, tmp_path, "SOLVER.MAX_ITER", "20", "SOLVER.BASE_LR", "0.003",
                                "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.TEST", "()"))
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last <= 0.5 * first, f"total loss {first:.2f} -> {last:.2f}"


@pytest.mark.slow
def test_resume_continues_at_the_right_iteration_and_eval_only(scenes, tmp_path):
    train_net = _train_net()
    schedule = ("SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2")
    train_net.main(_args(scenes, tmp_path, *schedule))
    saved = sorted(f.name for f in tmp_path.glob("model_*.pth"))
    assert saved == ["model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth"], saved
    # Simulate a run killed after the checkpoint of iteration 3.
    (tmp_path / "model_0000005.pth").unlink()
    (tmp_path / "model_final.pth").unlink()
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    at_kill = torch.load(tmp_path / "model_0000003.pth", map_location="cpu", weights_only=False)
    assert at_kill["iteration"] == 3
    untouched = (tmp_path / "model_0000001.pth").stat().st_mtime_ns

    train_net.main(_args(scenes, tmp_path, *schedule, flags=("--resume",)))
    log = (tmp_path / "log.txt").read_text()
    assert "Starting training from iteration 4" in log
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 5
    assert (tmp_path / "model_0000001.pth").stat().st_mtime_ns == untouched  # iterations 0-3 not redone
    assert (tmp_path / "model_0000005.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    changed = [k for k in at_kill["model"] if not torch.equal(at_kill["model"][k], final["model"][k])]
    assert changed, "resumed training did not update the weights"
    # The LR schedule was restored (7 steps in all), not restarted (which would give 3).
    schedule_state = final["trainer"]["hooks"]["LRScheduler"]
    assert schedule_state["last_epoch"] == 6 and schedule_state["_step_count"] == 7

    # --eval-only on the result: mIoU through detectron2's SemSegEvaluator.
    results = train_net.main(_args(scenes, tmp_path / "eval", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"),
                                   flags=("--eval-only",)))
    metrics = results["sem_seg"]
    assert 0.0 <= metrics["mIoU"] <= 100.0 and "pACC" in metrics


@pytest.mark.slow
def test_two_cpu_processes_train_and_evaluate(tmp_path):
    # Detectron2's launch with the gloo backend: DDP without device ids, distributed evaluation.
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "m2f_ddp_run.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "World size: 2" in log
    final = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 2
    assert "mIoU" in log
    # The 2-process checkpoint loads strictly (every key, no DDP "module." prefix) into a plain model.
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    model = build_model(cfg)
    SafeCheckpointer(model).load(str(tmp_path / "out" / "model_final.pth"))
    assert all(torch.equal(value, final["model"][key]) for key, value in model.state_dict().items())
