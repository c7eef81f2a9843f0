"""Run tools/train_net.py in a fresh process on generated scenes (no dataset needed).

    python tests/train_net_scenes.py SCENES_DIR [tools/train_net.py arguments ...]

Registers, in this process and in every worker ``launch`` spawns (they re-import this file):

* ``scenes_sem``: 4 street-like scenes of 32 x 64 with train-id labels (evaluator "sem_seg");
* ``scenes_ood``: the same images as an anomaly dataset (evaluator "ood"): the car is the
  "anomaly", the void strip is void, everything else in-distribution; with train-id labels.

The files are written once, by the parent, before any worker starts. Tests may also import
``write_dataset`` / ``register`` and register the same data under another prefix in-process.
"""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tools"))  # spawned workers unpickle train_net.main by module name

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402

from rba_plugin.data import register_anomaly_dataset  # noqa: E402
from rba_plugin.engine import launch  # noqa: E402
from tests.m2f_scenes import NUM_CLASSES, write_scenes  # noqa: E402

CAR = 13
COUNT, HEIGHT, WIDTH = 4, 32, 64


def write_dataset(root: Path) -> None:
    dicts = write_scenes(root / "sem", COUNT, HEIGHT, WIDTH, seed=0)
    (root / "ood").mkdir(parents=True, exist_ok=True)
    for d in dicts:
        label = cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
        anomaly = np.where(label == CAR, 1, np.where(label == 255, 255, 0)).astype(np.uint8)
        stem = Path(d["file_name"]).stem
        cv2.imwrite(str(root / "ood" / f"{stem}_anomaly.png"), anomaly)


def sem_dicts(root: Path):
    return [
        {"file_name": str(root / "sem" / f"scene_{i}.png"), "sem_seg_file_name": str(root / "sem" / f"scene_{i}_label.png"),
         "height": HEIGHT, "width": WIDTH}
        for i in range(COUNT)
    ]


def register(root: Path, prefix: str = "scenes") -> None:
    DatasetCatalog.register(f"{prefix}_sem", lambda: sem_dicts(root))
    MetadataCatalog.get(f"{prefix}_sem").set(
        stuff_classes=[str(i) for i in range(NUM_CLASSES)], ignore_label=255, evaluator_type="sem_seg"
    )
    register_anomaly_dataset(
        f"{prefix}_ood", root / "sem", root / "ood", image_suffix=".png", label_suffix="_anomaly.png",
        label_map={0: 0, 1: 1, 255: 255}, sem_seg_root=root / "sem", sem_seg_suffix="_label.png",
        component_sizes=(2, 2),
    )


if __name__ in ("__main__", "__mp_main__"):  # the script and the workers launch spawns
    SCENES_DIR = Path(sys.argv[1])
    register(SCENES_DIR)
    import train_net  # noqa: E402

if __name__ == "__main__":
    if not (SCENES_DIR / "ood").is_dir():
        write_dataset(SCENES_DIR)
    args = default_argument_parser().parse_args(sys.argv[2:])
    launch(train_net.main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
