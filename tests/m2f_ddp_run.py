"""Run tools/train_net.py's main() as 2 CPU processes (gloo) on generated scenes.

    python tests/m2f_ddp_run.py OUTPUT_DIR

Spawned workers re-import this file, so the scenes are registered at import in every process.
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tools"))  # spawned workers unpickle train_net.main by module name

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402

from rba_plugin.engine import launch  # noqa: E402

from tests.m2f_scenes import NUM_CLASSES, write_scenes  # noqa: E402

OUTPUT_DIR = Path(sys.argv[1])
DICTS = write_scenes(OUTPUT_DIR / "scenes", 4, 32, 64, seed=0)
DatasetCatalog.register("m2f_ddp_scenes", lambda: [dict(d) for d in DICTS])
MetadataCatalog.get("m2f_ddp_scenes").set(
    stuff_classes=[str(i) for i in range(NUM_CLASSES)], ignore_label=255, evaluator_type="sem_seg"
)

import train_net  # noqa: E402

if __name__ == "__main__":
    args = default_argument_parser().parse_args([
        "--config-file", str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"), "--num-gpus", "2",
        "OUTPUT_DIR", str(OUTPUT_DIR / "out"), "DATASETS.TRAIN", "('m2f_ddp_scenes',)",
        "DATASETS.TEST", "('m2f_ddp_scenes',)", "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MIN_SIZE_TEST", "32",
        "INPUT.CROP.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    ])
    # A rendezvous file in the test's folder: no port to choose (and race for) on a shared machine.
    launch(train_net.main, 2, dist_url=f"file://{OUTPUT_DIR.resolve() / 'rendezvous'}", args=(args,))
