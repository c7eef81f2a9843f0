"""Distributed runs on the CPU (gloo): multi-machine evaluation equals one process; every rank
picks the same outlier proxy subset."""
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from rba_plugin.config import get_cfg
from rba_plugin.data import register_outlier_pool, select_proxy_subset
from rba_plugin.engine import SafeCheckpointer, launch

from .conftest import REPO_ROOT
from .test_data_outlier_paste import write_pool
from .train_net_scenes import register, write_dataset

PIXEL_CONFIG = str(REPO_ROOT / "configs/synthcity/pixel/closed_set.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO_ROOT / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval_opts(weights, out_dir, dataset):
    return ["--config-file", PIXEL_CONFIG, "--eval-only", "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out_dir),
            "DATASETS.TEST", f"('{dataset}',)", "TEST.OOD.WRITE_CURVES", "False"]


def _same(a, b):
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.slow
def test_ood_evaluation_on_two_machines_equals_one_process(tmp_path):
    scenes = tmp_path / "scenes"
    write_dataset(scenes)
    cfg = get_cfg()
    cfg.merge_from_file(PIXEL_CONFIG)
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(tmp_path)).save("model_final")
    weights = tmp_path / "model_final.pth"

    # Two "machines" of one process each, through train_net's --num-machines / --machine-rank / --dist-url.
    dist_url = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    machines = [
        subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "tests" / "train_net_scenes.py"), str(scenes), "--num-gpus", "1",
             "--num-machines", "2", "--machine-rank", str(rank), "--dist-url", dist_url,
             *_eval_opts(weights, tmp_path / "two", "scenes_ood")],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    logs = [m.communicate(timeout=300)[0] for m in machines]
    for machine, log in zip(machines, logs):
        assert machine.returncode == 0, log[-3000:]
    assert "World size: 2" in (tmp_path / "two" / "log.txt").read_text()
    two = json.loads((tmp_path / "two" / "inference" / "ood_scenes_ood.json").read_text())["results"]

    # One process, in this one, with one thread like each machine: the exact protocol's component
    # threshold is a score value, so outputs differing in the last float32 bit (other reduction
    # orders with more threads) would show in it.
    register(scenes, prefix="single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = default_argument_parser().parse_args(_eval_opts(weights, tmp_path / "one", "single_ood"))
        one = _train_net().main(args)
    finally:
        torch.set_num_threads(threads)
    one = one["single_ood"]
    assert {"AP", "AUROC", "FPR95", "sIoU", "PPV", "mean_F1", "mIoU"} <= set(one)
    assert one.keys() == two.keys()
    differing = {k: (one[k], two[k]) for k in one if not _same(float(one[k]), float(two[k]))}
    assert not differing  # exactly equal, not approximately


def _proxy_worker(pool_root, pool_name, out_dir):
    """Builds the training mapper's OutlierPaster the way every rank does (from the config, after
    Detectron2 seeded this rank's global RNGs differently) and writes its proxy files."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from rba_plugin.data import OutlierPaster

    if pool_name not in DatasetCatalog.list():
        register_outlier_pool(pool_name, os.path.join(pool_root, "images"), os.path.join(pool_root, "masks"),
                              image_suffix=".png")
    seed_all_rng(1000 + comm.get_rank())  # what default_setup does with SEED + rank
    np.random.rand(comm.get_rank() + 1)  # and the ranks' RNGs have moved on by different amounts
    cfg = get_cfg()
    cfg.merge_from_list(["INPUT.OUTLIER_POOL", pool_name, "INPUT.COCO_PROXY_SIZE", "5", "INPUT.OOD_PROXY_SEED", "11"])
    paster = OutlierPaster(cfg)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump([r["outlier_mask_file"] for r in paster.proxy], f)


@pytest.mark.slow
def test_outlier_proxy_subset_is_the_same_on_every_rank(tmp_path):
    pool_root = str(tmp_path / "pool")
    pool = write_pool(pool_root, count=12)
    pool_name = f"proxy_pool_{os.getpid()}"
    launch(_proxy_worker, 2, dist_url=f"file://{tmp_path / 'rendezvous'}", args=(pool_root, pool_name, str(tmp_path)))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == 5 and ranks[0] == ranks[1]
    # ... and it is the seeded subset a single process computes, not all of the pool.
    assert ranks[0] == [r["outlier_mask_file"] for r in select_proxy_subset(pool, 5, 11)]
    assert ranks[0] != [r["outlier_mask_file"] for r in select_proxy_subset(pool, 5, 12)]


def test_launched_workers_leave_their_process_group_after_a_normal_return(tmp_path):
    # Detectron2's workers exit with the group alive, and the teardown of its threads at exit
    # sometimes aborts a finished worker ("terminate called without an active exception"): the
    # flaky multi-process tests. rba_plugin.engine.launch's workers destroy it after main_func
    # returned (and then exit directly: test_launched_workers_exit_cleanly).
    import torch.distributed as dist

    from rba_plugin.engine.launch import _run_then_leave_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert _run_then_leave_group(lambda x: x + 1, 41, exit_process=False) == 42
        assert not dist.is_initialized()
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous2'}", rank=0, world_size=1)

        def fails():
            raise RuntimeError("worker failed")

        with pytest.raises(RuntimeError, match="worker failed"):  # no barrier: the others may be gone
            _run_then_leave_group(fails, exit_process=False)
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_status_worker(out_dir):
    import atexit

    from detectron2.utils import comm

    rank = comm.get_rank()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("done")
    # An exit handler of the worker still runs (finalizers, logging), before the direct exit.
    atexit.register(lambda: open(os.path.join(out_dir, f"atexit{rank}.txt"), "w").close())


@pytest.mark.slow
def test_launched_workers_exit_cleanly(tmp_path):
    # Two workers, several launches back to back: every worker runs its exit handlers and exits
    # with status 0 (launch raises otherwise).
    for attempt in range(3):
        out = tmp_path / str(attempt)
        out.mkdir()
        launch(_exit_status_worker, 2, dist_url=f"file://{out / 'rendezvous'}", args=(str(out),))
        assert sorted(p.name for p in out.glob("*.txt")) == ["atexit0.txt", "atexit1.txt", "rank0.txt", "rank1.txt"]
