"""tools/run_demo.py's schedule options and the configs it builds (the full run is `make demo`)."""
import importlib.util

import pytest

from rba_plugin.config import get_cfg

from .conftest import REPO_ROOT


def _run_demo():
    spec = importlib.util.spec_from_file_location("run_demo", REPO_ROOT / "tools" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_iteration_options_override_the_preset():
    demo = _run_demo()
    args = demo.parse_args([])
    assert (args.closed_iters, args.finetune_iters) == (1600, 1000)
    args = demo.parse_args(["--preset", "quick", "--finetune-iters", "5"])
    assert (args.closed_iters, args.finetune_iters) == (30, 5)
    args = demo.parse_args(["--closed-iters", "7", "MODEL.DEVICE", "cpu"])
    assert (args.closed_iters, args.finetune_iters, args.opts) == (7, 1000, ["MODEL.DEVICE", "cpu"])


@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_iterations_are_refused(value, capsys):
    with pytest.raises(SystemExit):
        _run_demo().parse_args(["--closed-iters", value])
    assert f"must be at least 1, got {value}" in capsys.readouterr().err


def test_stage_configs_train_without_trainer_side_evaluation(tmp_path):
    demo = _run_demo()
    cfg = demo.build_cfg(demo.FINETUNE_CONFIG, tmp_path / "ft", 12, ["MODEL.WEIGHTS", "closed.pth"])
    assert cfg.DATASETS.TEST == () and cfg.TEST.EVAL_PERIOD == 0  # the demo evaluates both models itself
    assert cfg.SOLVER.MAX_ITER == 12 and cfg.SOLVER.CHECKPOINT_PERIOD == 4
    assert cfg.OUTPUT_DIR == str(tmp_path / "ft") and cfg.MODEL.WEIGHTS == "closed.pth"
    assert list(cfg.MODEL.OOD.SCORES) == demo.SCORES and cfg.SEED == 0


def test_synthetic_finetune_pastes_as_many_objects_per_step_as_the_released_recipe(reference_dir):
    released = get_cfg()
    released.merge_from_file(str(reference_dir / "rba_release_configs/swin_b_1dl_rba_ood_coco.yaml"))
    synthetic = get_cfg()
    synthetic.merge_from_file(str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl_rba_finetune.yaml"))
    assert synthetic.SOLVER.IMS_PER_BATCH < released.SOLVER.IMS_PER_BATCH
    assert synthetic.SOLVER.IMS_PER_BATCH * synthetic.INPUT.OOD_PROB == pytest.approx(
        released.SOLVER.IMS_PER_BATCH * released.INPUT.OOD_PROB)


def _table(closed_rba, closed_msp, tuned_rba, closed_miou, tuned_miou):
    def row(ap, miou):
        return {"AP": ap, "mIoU": miou}
    return {"closed-set": {"rba": row(closed_rba, closed_miou), "msp": row(closed_msp, closed_miou)},
            "RbA fine-tuned": {"rba": row(tuned_rba, tuned_miou), "msp": row(0.0, tuned_miou)}}


def test_claims_report_what_each_run_bears_out():
    demo = _run_demo()
    held = dict(demo.demo_claims(_table(3.9, 6.9, 12.4, 78.94, 78.85)))
    assert all(held.values()) and len(held) == 3
    # Fine-tuned RbA below closed-set MSP, and mIoU down by 0.58 (a run the issue reported).
    held = dict(demo.demo_claims(_table(3.9, 9.5, 9.2, 80.32, 79.74)))
    assert held == {"fine-tuning raises RbA's AP": True,
                    "fine-tuned RbA's AP is above the closed-set model's MSP AP": False,
                    "fine-tuning moves closed-set mIoU by at most 0.5 points": False}


def test_overlay_panels_are_titled_and_carry_the_colour_scale(tmp_path):
    import numpy as np
    from PIL import Image

    from rba_plugin.utils.visualization import labelled_panels, save_figure

    panels = {"image": np.zeros((32, 64, 3), np.uint8), "ground truth": np.full((32, 64, 3), 255, np.uint8),
              "RbA score, closed-set model": np.zeros((32, 64, 3), np.uint8)}
    figure = labelled_panels(panels, (-1.5, 2.0), "RbA score (bright = more anomalous)")
    image_axes = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in image_axes] == list(panels)
    colorbars = [ax for ax in figure.axes if ax.get_xlabel() == "RbA score (bright = more anomalous)"]
    assert len(colorbars) == 1 and colorbars[0].get_xlim() == (-1.5, 2.0)
    path = tmp_path / "panel.png"
    save_figure(figure, str(path))
    assert Image.open(path).size[0] > 3 * 64 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
