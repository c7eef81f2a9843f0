"""Safe training: a non-finite loss term stops the run by name; a SIGKILLed run resumes exactly;
training writes TensorBoard event files."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from rba_plugin.config import get_cfg
from rba_plugin.engine import Trainer, NonFiniteLossError, check_finite_losses

from .conftest import REPO_ROOT
from .m2f_scenes import register_scenes

CONFIG = str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml")


@META_ARCH_REGISTRY.register()
class LossTurnsNaNModel(nn.Module):
    """Two loss terms; "loss_unstable" becomes NaN from the call numbered NAN_FROM on."""

    NAN_FROM = 2

    def __init__(self, cfg):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.calls = 0

    def forward(self, batched_inputs):
        self.calls += 1
        stable = (self.weight ** 2).sum()
        unstable = self.weight.sum() * (float("nan") if self.calls > self.NAN_FROM else 1.0)
        return {"loss_stable": stable, "loss_unstable": unstable}


def test_non_finite_loss_names_term_and_iteration(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "LossTurnsNaNModel", "OUTPUT_DIR", str(tmp_path),
        "DATASETS.TRAIN", f"('{register_scenes(tmp_path / 'scenes', count=2, height=32, width=64)}',)",
        "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.CROP.ENABLED", "False",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "10",
        "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
    ])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    message = str(error.value)
    # Iterations 0 and 1 are finite; the third call (iteration 2) returns NaN for one term.
    assert "iteration 2" in message and "loss_unstable = nan" in message
    assert "other terms: loss_stable = " in message  # the finite term is not blamed
    # The NaN step never reached the optimizer: the weights are finite.
    assert torch.isfinite(trainer.model.weight).all()


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_check_names_every_non_finite_term(bad):
    losses = {"loss_ce": torch.tensor(0.5), "loss_mask": torch.tensor(bad), "loss_dice": torch.tensor([bad])}
    with pytest.raises(NonFiniteLossError, match=rf"iteration 41 .*loss_dice = {bad}, loss_mask = {bad} \(other terms: loss_ce = 0.5\)"):
        check_finite_losses(losses, 41)
    check_finite_losses({"loss_ce": torch.tensor(0.5), "loss_mask": 1e30}, 41)  # large but finite passes


def _opts(out_dir, *extra):
    return [
        "--config-file", CONFIG, "OUTPUT_DIR", str(out_dir), "DATASETS.TRAIN", "('scenes_sem',)",
        "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MIN_SIZE_TEST", "32",
        "INPUT.CROP.ENABLED", "False", "INPUT.COLOR_AUG_SSD", "False", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "1", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "TEST.EVAL_PERIOD", "0",
        "SEED", "3", *extra,
    ]


def _run_scenes(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "train_net_scenes.py"), str(tmp_path / "scenes"), *args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _poly_lr(base_lr, iteration, max_iter, power=0.9):
    return base_lr * (1 - iteration / max_iter) ** power  # WarmupPolyLR without warmup


@pytest.mark.slow
def test_sigkill_then_resume_continues_with_same_iteration_and_lr(tmp_path):
    max_iter, period, base_lr = 14, 3, 3e-4
    out = tmp_path / "out"
    schedule = ("SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", str(period),
                "SOLVER.BASE_LR", str(base_lr))
    run = _run_scenes(tmp_path, *_opts(out, *schedule))
    tag = out / "last_checkpoint"
    deadline = time.time() + 240
    while not tag.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    log_of_first = run.communicate()[0]
    assert run.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{log_of_first[-3000:]}"

    # Every checkpoint on disk is whole (atomic writes) and last_checkpoint names one of them.
    last = tag.read_text().strip()
    assert last != "model_final.pth", "killed too late to test resuming; raise max_iter"
    for path in out.glob("model_*.pth"):
        assert "model" in torch.load(path, map_location="cpu", weights_only=False), path
    at_kill = torch.load(out / last, map_location="cpu", weights_only=False)
    killed_at = at_kill["iteration"]
    assert (killed_at + 1) % period == 0
    # The optimizer state saved at the kill carries the poly LR of the next iteration.
    for group in at_kill["trainer"]["_trainer"]["optimizer"]["param_groups"]:
        assert group["lr"] == pytest.approx(_poly_lr(group["initial_lr"], killed_at + 1, max_iter), rel=1e-9)
    earlier = {p.name: p.stat().st_mtime_ns for p in out.glob("model_*.pth")}

    resumed = _run_scenes(tmp_path, "--resume", *_opts(out, *schedule))
    log_of_resumed = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log_of_resumed[-3000:]
    assert f"Starting training from iteration {killed_at + 1}" in log_of_resumed
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == max_iter - 1
    scheduler = final["trainer"]["hooks"]["LRScheduler"]
    assert scheduler["last_epoch"] == max_iter  # one step per iteration over both runs
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("model_*.pth") if p.name in earlier} == earlier
    assert not list(out.glob(".*.tmp"))  # nothing half-written left, even if the kill hit a save
    # LR of the resumed run's iterations (metrics.json is written at its last iteration): the
    # poly schedule continued, not restarted at the resume point.
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    record = [r for r in records if r.get("iteration") == max_iter - 1][-1]
    initial_lrs = {g["initial_lr"] for g in final["trainer"]["_trainer"]["optimizer"]["param_groups"]}
    assert any(record["lr"] == pytest.approx(_poly_lr(lr0, max_iter - 1, max_iter), rel=1e-9) for lr0 in initial_lrs)
    restarted = [_poly_lr(lr0, max_iter - 1 - (killed_at + 1), max_iter) for lr0 in initial_lrs]
    assert not any(record["lr"] == pytest.approx(lr, rel=1e-3) for lr in restarted)

    # Detectron2's TensorBoard writer logged the losses of the run.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(str(out / "events.out.tfevents.*"))
    assert events
    steps = set()
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        if "total_loss" in accumulator.Tags()["scalars"]:
            steps |= {e.step for e in accumulator.Scalars("total_loss")}
    assert max_iter - 1 in steps
