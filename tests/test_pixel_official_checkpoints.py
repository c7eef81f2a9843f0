"""Released checkpoints of the official per-pixel code bases load through ``MODEL.WEIGHTS``:
every container the official code writes or reads (PEBAL / RPL / DenseHybrid training
checkpoints with optimizer state, NVIDIA's ``state_dict`` with ``module.``, DenseHybrid's bare
state dict, RAML's ``model_state``), with the official key names and wrappers, strictly, logging
what was renamed; mismatches name the file and the keys; a closed-set NVIDIA checkpoint
initialises each method as the official code does; ``tools/demo.py`` and ``tools/train_net.py
--eval-only`` evaluate them on a tiny registered anomaly set.

The checkpoints are made here with the fixtures' weight recipe on the official key names, on a
shallower WideResNet (one block per module, ``MODEL.WIDE_RESNET.STRUCTURE``): the full-size keys
are checked against the official tables in test_pixel_official_networks.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from detectron2.engine import default_argument_parser

from rba_plugin.engine import CheckpointMismatchError, SafeCheckpointer

from .conftest import REPO_ROOT
from .pixel_e2e_utils import load_tool
from .pixel_official import CASES, WRN_CASES, plugin_log, recipe_tensor
from .train_net_scenes import register, write_dataset

SMALL = ("MODEL.WIDE_RESNET.STRUCTURE", "[1, 1, 1, 1, 1, 1]")
# The official wrapper of each network's own checkpoints (PEBAL's and RPL's Network: branch1.).
WRAPPER = {"pebal": "branch1.", "rpl": "branch1.", "densehybrid": ""}


# The container each network's released checkpoint comes in, used for the tools' runs.
CONTAINER = {"pebal": "training", "rpl": "ddp_training", "densehybrid": "bare"}


def official_state(model, wrapper: str, seed: int = 5) -> Dict[str, torch.Tensor]:
    """The recipe's weights for ``model`` under the official key names, with ``wrapper``."""
    layout = model.official_key_layout()
    modules = dict(model.named_modules())
    state = {}
    for official, key in layout.names.items():
        owner = type(modules[key.rsplit(".", 1)[0]]).__name__
        shape = tuple(model.state_dict()[key].shape)
        state[wrapper + official] = recipe_tensor(official, shape, owner, seed)
    return state


def containers(state: Dict[str, torch.Tensor], wrapper: str) -> Dict[str, object]:
    """The same weights in each container format of the official code bases."""
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0, 1]}]}
    ddp = {"module." + k: v for k, v in state.items()}
    return {
        # PEBAL / RPL Engine.save_checkpoint (module. stripped), DenseHybrid's store_checkpoint
        "training": {"model": state, "optimizer": optimizer, "epoch": 39, "iteration": 14839},
        # the same saved from a DistributedDataParallel model without stripping
        "ddp_training": {"model": ddp, "optimizer": optimizer, "epoch": 39},
        # NVIDIA's semantic-segmentation checkpoints: DataParallel keys under "state_dict"
        "state_dict": {"state_dict": ddp, "epoch": 175, "mean_iu": np.float64(0.8046)},
        # DenseHybrid's released weights (evaluate_ood.py: torch.load -> load_state_dict)
        "bare": dict(state),
        # RAML / VainF DeepLabV3+: "model_state" with optimizer and scheduler state
        "model_state": {"model_state": state, "optimizer_state": optimizer, "cur_itrs": 1000,
                        "best_score": np.float64(0.61)},
    }


def unwrapped(model, state: Dict[str, torch.Tensor], wrapper: str) -> Dict[str, torch.Tensor]:
    layout = model.official_key_layout()
    return {layout.names[k[len(wrapper):]]: v for k, v in state.items()}


@pytest.mark.parametrize("test_id", WRN_CASES)
def test_every_official_container_loads_strictly_with_a_log(test_id, tmp_path, caplog):
    model = CASES[test_id].build(*SMALL)
    wrapper = WRAPPER[test_id]
    state = official_state(model, wrapper)
    expected = unwrapped(model, state, wrapper)
    for name, container in containers(state, wrapper).items():
        path = tmp_path / f"{test_id}_{name}.pth"
        torch.save(container, path)
        fresh = CASES[test_id].build(*SMALL)
        caplog.clear()
        with plugin_log(caplog):
            SafeCheckpointer(fresh, allow_new_modules=False).load(str(path))  # as --eval-only / demo
        loaded = fresh.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items()), name
        log = caplog.text
        assert str(path) in log and "renamed" in log, (name, log)
        if name in ("ddp_training", "state_dict") or wrapper:
            assert "wrapper prefix" in log, (name, log)
        if name in ("state_dict", "model_state"):
            assert f"entry '{name}'" in log, (name, log)


RAML_SMALL = ("MODEL.TORCHVISION_RESNET.DEPTH", "50")


def test_raml_checkpoints_of_each_stage_load_strictly(tmp_path, caplog):
    """RAML's save_ckpt (main.py / main_metric.py): ``model_state`` (backbone.*, classifier.*) with
    optimizer and scheduler state; stage 3 adds the metric head as ``metric_model``."""
    raml = CASES["raml19"].build(*RAML_SMALL)
    state = official_state(raml, "")
    network = {k: v for k, v in state.items() if not k.startswith("metric_model.")}
    metric = {k[len("metric_model."):]: v for k, v in state.items() if k.startswith("metric_model.")}
    assert sorted(metric) == ["classifier.weight", "model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight"]
    common = {"optimizer_state": {"state": {}, "param_groups": []}, "scheduler_state": {"last_epoch": 3},
              "cur_itrs": 30000, "best_score": np.float64(0.7)}
    stage12, stage3 = tmp_path / "final_stage2.pth", tmp_path / "final_stage3.pth"
    torch.save({"model_state": network, **common}, stage12)
    torch.save({"model_state": network, "metric_model": metric, "batch_idx": 9999, **common}, stage3)
    # Stages 1-2: the network alone (the closed-set model / the MCA model).
    closed = CASES["raml19"].build(*RAML_SMALL, "MODEL.PIXEL_OOD.METHOD", "ClosedSet")
    SafeCheckpointer(closed, allow_new_modules=False).load(str(stage12))
    assert all(torch.equal(closed.state_dict()[k], v) for k, v in unwrapped(closed, network, "").items())
    # Stage 3: network and metric head; the prototypes start empty (logged).
    fresh = CASES["raml19"].build(*RAML_SMALL)
    with plugin_log(caplog):
        SafeCheckpointer(fresh, allow_new_modules=False).load(str(stage3))
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in unwrapped(fresh, state, "").items())
    assert torch.equal(loaded["ood_method.embed.fc1.weight"], metric["model.0.weight"])
    assert not loaded["ood_method.prototype_valid"].any()
    assert "with the entries metric_model" in caplog.text and "no known-class prototypes" in caplog.text
    # The stage-3 checkpoint in a model without a metric head: its metric_model keys are unexpected.
    with pytest.raises(CheckpointMismatchError, match=r"metric_model.model.0.weight"):
        SafeCheckpointer(CASES["raml19"].build(*RAML_SMALL, "MODEL.PIXEL_OOD.METHOD", "ClosedSet"),
                         allow_new_modules=False).load(str(stage3))


def test_a_plugin_checkpoint_of_the_same_model_loads_unchanged(tmp_path):
    model = CASES["rpl"].build(*SMALL)
    SafeCheckpointer(model, str(tmp_path)).save("model_final")
    fresh = CASES["rpl"].build(*SMALL)
    SafeCheckpointer(fresh, allow_new_modules=False).load(str(tmp_path / "model_final.pth"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_mismatches_name_the_file_and_the_keys(tmp_path):
    pebal = CASES["pebal"].build(*SMALL)
    path = tmp_path / "pebal_best_ad_ckpt.pth"
    torch.save({"model": official_state(pebal, "branch1.")}, path)
    rpl = CASES["rpl"].build(*SMALL)
    with pytest.raises(CheckpointMismatchError) as error:
        SafeCheckpointer(rpl, allow_new_modules=False).load(str(path))
    text = str(error.value)
    # RPL's residual block is missing, and PEBAL's 20-row final.6 does not fit RPL's 19 rows.
    assert str(path) in text and "ood_method.residual_block.atten_aspp_final.weight" in text
    assert "sem_seg_head.final.6.weight: (20, 256, 1, 1) in the checkpoint, (19, 256, 1, 1) in the model" in text
    # An unknown key (e.g. an ImageNet trunk's classifier) is named as it is in the file.
    state = official_state(pebal, "branch1.")
    state["branch1.bn_out.0.weight"] = torch.ones(4096)
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected in the checkpoint \(1\):\s+branch1.bn_out.0.weight"):
        SafeCheckpointer(CASES["pebal"].build(*SMALL), allow_new_modules=False).load(str(path))


def test_nvidia_closed_set_checkpoint_initialises_each_method_as_the_official_code(tmp_path, caplog):
    closed = CASES["pebal"].build(*SMALL, "MODEL.PIXEL_OOD.METHOD", "ClosedSet")
    state = official_state(closed, "")
    path = tmp_path / "cityscapes_best.pth"
    nvidia = {"module." + k: v for k, v in state.items()}
    nvidia["module.criterion.nll_loss.weight"] = torch.ones(19)  # the loss's class weights, dropped
    torch.save({"state_dict": nvidia, "epoch": 175}, path)
    final6 = state["final.6.weight"]

    # PEBAL: final.6 widened to 20 rows; the first 19 are NVIDIA's, the 20th Kaiming-normal.
    pebal = CASES["pebal"].build(*SMALL)
    with plugin_log(caplog):
        SafeCheckpointer(pebal).load(str(path))
    weight = pebal.sem_seg_head.final[6].weight
    assert weight.shape == (20, 256, 1, 1) and torch.equal(weight[:19], final6)
    assert 0.5 < weight[19].std().item() / (2 / 256) ** 0.5 < 1.5
    assert "widened from 19 to 20 rows" in caplog.text
    assert "dropped 1 keys the official loaders drop too (module.criterion.nll_loss.weight)" in caplog.text
    # ... and evaluating a method with a closed-set checkpoint is refused (nothing is widened).
    with pytest.raises(CheckpointMismatchError, match="different shapes"):
        SafeCheckpointer(CASES["pebal"].build(*SMALL), allow_new_modules=False).load(str(path))

    # RPL: atten_aspp and bot_atten_aspp start as copies of aspp and bot_aspp (load_model's
    # "aspp" in k), atten_aspp_final and the projector stay fresh.
    rpl = CASES["rpl"].build(*SMALL)
    caplog.clear()
    with plugin_log(caplog):
        SafeCheckpointer(rpl).load(str(path))
    block, head = rpl.ood_method.residual_block, rpl.sem_seg_head
    copied = zip(block.atten_aspp.state_dict().values(), head.aspp.state_dict().values())
    assert all(torch.equal(a, b) for a, b in copied)
    assert torch.equal(block.bot_atten_aspp.weight, head.bot_aspp.weight)
    assert "initialised as a copy of the head's aspp" in caplog.text
    assert "Initialised from scratch" in caplog.text and "ood_method." in caplog.text

    # DenseHybrid: the trunk and decoder from the checkpoint, logits_ood fresh.
    dense = CASES["densehybrid"].build(*SMALL)
    SafeCheckpointer(dense).load(str(path))
    assert torch.equal(dense.sem_seg_head.final[6].weight, final6)


@pytest.mark.slow
def test_released_checkpoints_evaluate_through_demo_and_train_net(tmp_path):
    scenes = tmp_path / "scenes"
    write_dataset(scenes)
    register(scenes, prefix="official_ckpt")
    demo, train_net = load_tool("demo"), load_tool("train_net")
    images = sorted((scenes / "sem").glob("scene_*[0-9].png"))[:2]
    for test_id in WRN_CASES + ("raml19",):
        small = RAML_SMALL if test_id == "raml19" else SMALL
        model = CASES[test_id].build(*small)
        weights = tmp_path / f"{test_id}.pth"
        if test_id == "raml19":  # main_metric.py's stage-3 checkpoint
            state = official_state(model, "")
            metric = {k[len("metric_model."):]: v for k, v in state.items() if k.startswith("metric_model.")}
            network = {k: v for k, v in state.items() if not k.startswith("metric_model.")}
            torch.save({"model_state": network, "metric_model": metric}, weights)
        else:  # a different official container per network
            state = official_state(model, WRAPPER[test_id])
            torch.save(containers(state, WRAPPER[test_id])[CONTAINER[test_id]], weights)
        config = str(REPO_ROOT / CASES[test_id].config)
        opts = ["MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu", *small]
        out = tmp_path / f"demo_{test_id}"
        argv = ["--config-file", config, "--input", *map(str, images), "--output", str(out), "--opts", *opts]
        assert demo.main(argv) == 0
        assert len(list(out.glob("*_score.npy"))) == 2
        eval_dir = tmp_path / f"eval_{test_id}"
        args = default_argument_parser().parse_args([
            "--config-file", config, "--eval-only", *opts, "OUTPUT_DIR", str(eval_dir),
            "DATASETS.TEST", "('official_ckpt_ood',)", "DATALOADER.NUM_WORKERS", "0", "TEST.OOD.WRITE_CURVES", "False",
        ])
        results = train_net.main(args)
        metrics = results["official_ckpt_ood"]
        assert 0.0 <= metrics["AUROC"] <= 100.0 and 0.0 <= metrics["AP"] <= 100.0, metrics
        assert (eval_dir / "inference" / "ood_official_ckpt_ood.json").is_file()


def test_torchvision_imagenet_trunk_initialises_raml_stage_one(tmp_path):
    """raml_closed_set.yaml's MODEL.WEIGHTS: torchvision's ImageNet ResNet matched by names (its fc
    has no place and is logged, not refused)."""
    import torchvision

    model = CASES["raml19"].build(*RAML_SMALL, "MODEL.PIXEL_OOD.METHOD", "ClosedSet")
    imagenet = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(imagenet, path)
    SafeCheckpointer(model).load(f"{path}?matching_heuristics=True")
    state = model.state_dict()
    assert all(torch.equal(state["backbone." + k], v) for k, v in imagenet.items() if not k.startswith("fc."))
