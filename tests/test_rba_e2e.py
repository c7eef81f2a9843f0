"""End to end through tools/train_net.py on a few synthetic images: closed-set training,
RbA fine-tuning with pasted outliers, and OOD evaluation of every configured score."""
import importlib.util
import uuid

import pytest
import torch
from detectron2.engine import default_argument_parser

from rba_plugin.data import SynthCityParams
from rba_plugin.data.synthetic import register_synthcity

from .conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs" / "synthcity" / "mask2former"


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", REPO_ROOT / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_closed_set_then_rba_finetune_then_ood_evaluation(tmp_path):
    prefix = f"e2e_{uuid.uuid4().hex[:8]}"
    register_synthcity(str(tmp_path / "synthcity"), SynthCityParams(num_train=4, num_val=2, num_anomaly=3, num_outliers=4, seed=3), prefix=prefix)
    common = [
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
        "INPUT.CROP.SIZE", "(96, 96)", "SEED", "5",
    ]
    train_net = _train_net()
    closed_dir = tmp_path / "closed"
    args = default_argument_parser().parse_args([
        "--config-file", str(CONFIGS / "maskformer2_R18_1dl.yaml"), "OUTPUT_DIR", str(closed_dir),
        "DATASETS.TRAIN", f"('{prefix}_train',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "3", *common,
    ])
    train_net.main(args)
    closed_weights = closed_dir / "model_final.pth"
    assert closed_weights.exists()

    finetune_dir = tmp_path / "finetune"
    args = default_argument_parser().parse_args([
        "--config-file", str(CONFIGS / "maskformer2_R18_1dl_rba_finetune.yaml"), "OUTPUT_DIR", str(finetune_dir),
        "MODEL.WEIGHTS", str(closed_weights), "DATASETS.TRAIN", f"('{prefix}_train',)",
        "DATASETS.TEST", "()", "INPUT.OUTLIER_POOL", f"{prefix}_outliers",
        "INPUT.OOD_PROB", "1.0", "SOLVER.MAX_ITER", "2", *common,
    ])
    train_net.main(args)
    finetuned_weights = finetune_dir / "model_final.pth"

    args = default_argument_parser().parse_args([
        "--config-file", str(CONFIGS / "maskformer2_R18_1dl_rba_finetune.yaml"), "--eval-only",
        "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", str(finetuned_weights),
        "DATASETS.TEST", f"('{prefix}_anomaly', '{prefix}_val')", *common,
    ])
    results = train_net.main(args)
    ood = results[f"{prefix}_anomaly"][f"{prefix}_anomaly"]
    for key in ("AP", "FPR95", "AUROC", "sIoU", "PPV", "mean_F1"):
        assert key in ood
        for score in ("msp", "maxlogit", "energy", "entropy"):  # RbA, the first, is "ood_score"
            assert f"{score}/{key}" in ood
    assert 0.0 <= ood["AP"] <= 100.0 and 0.0 <= ood["msp/AP"] <= 100.0
    assert "mIoU" in ood  # the anomaly split carries semantic labels too
    assert "mIoU" in results[f"{prefix}_val"]["sem_seg"]

    # Only the class head and the mask MLP moved during fine-tuning.
    before = torch.load(closed_weights, map_location="cpu", weights_only=False)["model"]
    after = torch.load(finetuned_weights, map_location="cpu", weights_only=False)["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".class_embed." in k or ".mask_embed." in k for k in changed), sorted(changed)
