"""A tiny synthetic benchmark, config overrides, the tools as modules and random checkpoints, for
end-to-end runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from rba_plugin.config import get_cfg
from rba_plugin.data.synthetic import SynthCityParams, register_synthcity
from rba_plugin.engine import SafeCheckpointer

from .conftest import REPO_ROOT

# 128 x 256 scenes: crops of 128 x 128 keep the ASPP pooling window a divisor of the test size.
TINY_SYNTH = SynthCityParams(num_train=4, num_val=2, num_anomaly=3, num_outliers=4, height=128, width=256,
                             outlier_size=48, seed=3)


def register_tiny_synthcity(root: Path, prefix: str) -> str:
    """Registers ``<prefix>_train/_val/_anomaly/_outliers`` on a tiny set under ``root`` (once)."""
    if f"{prefix}_train" not in DatasetCatalog.list():
        register_synthcity(str(root), TINY_SYNTH, prefix=prefix)
    return prefix


def tiny_run_opts(prefix: str, output_dir: Path, iters: int) -> List[str]:
    """KEY VALUE overrides: the tiny set, small crops, ``iters`` steps of batch 2, no workers."""
    return [
        "OUTPUT_DIR", str(output_dir),
        "DATASETS.TRAIN", f"('{prefix}_train',)",
        "DATASETS.TEST", f"('{prefix}_val', '{prefix}_anomaly')",
        "INPUT.OUTLIER_POOL", f"{prefix}_outliers",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "256",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
        "INPUT.CROP.SIZE", "(128, 128)",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(iters), "SOLVER.WARMUP_ITERS", "0",
        "DATALOADER.NUM_WORKERS", "0", "TEST.OOD.WRITE_CURVES", "False",
    ]


def load_tool(name: str):
    """Imports ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_checkpoint(folder: Path, config_file: str, seed: int = 0) -> str:
    """``folder/model_final.pth`` of the model of ``config_file`` with weights drawn under ``seed``."""
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    torch.manual_seed(seed)
    SafeCheckpointer(build_model(cfg), str(folder)).save("model_final")
    return str(folder / "model_final.pth")
