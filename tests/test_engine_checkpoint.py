"""SafeCheckpointer: atomic saves, readable errors on bad files, strict key matching and its exceptions."""
import os
import pickle

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from rba_plugin.config import get_cfg
from rba_plugin.engine import CheckpointMismatchError, CheckpointReadError, SafeCheckpointer

from .conftest import REPO_ROOT


class Net(nn.Module):
    def __init__(self, hidden=4, extra=False, new_head=False):
        super().__init__()
        self.backbone = nn.Linear(3, hidden)
        self.head = nn.Linear(hidden, 2)
        if extra:
            self.extra = nn.Linear(2, 2)
        if new_head:
            self.ood_head = nn.Linear(2, 1)


class NetWithNewHead(Net):
    newly_initialized_prefixes = ("ood_head.",)

    def __init__(self):
        super().__init__(new_head=True)


def seeded(model_cls, seed, **kwargs):
    torch.manual_seed(seed)
    return model_cls(**kwargs)


def saved(tmp_path, model, name="model_0000001"):
    SafeCheckpointer(model, str(tmp_path)).save(name, iteration=1)
    return str(tmp_path / f"{name}.pth")


def keep_saved_weights(path, keep):
    """Rewrites the checkpoint at ``path`` with only the model weights whose name passes ``keep``."""
    state = torch.load(path, weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if keep(k)}
    torch.save(state, path)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    model = seeded(Net, 0)
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def torch_save_that_dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torch_save_that_dies_halfway)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_final")
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_0000009")
    # The previous file is intact, nothing half-written exists, last_checkpoint was not moved.
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_resume_removes_what_a_killed_save_left(tmp_path):
    source = seeded(Net, 0)
    saved(tmp_path, source)
    stale = [tmp_path / ".model_0000004.pth.k2j3h4.tmp", tmp_path / ".last_checkpoint.x8y9.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    keep = tmp_path / ".notes.tmp"  # not ours
    keep.write_text("x")
    # An evaluation reading the folder of a run that may be saving leaves its files alone ...
    SafeCheckpointer(seeded(Net, 1), str(tmp_path)).resume_or_load("", resume=True)
    assert all(p.exists() for p in stale)
    # ... the training run resuming in its own folder removes them.
    target = seeded(Net, 1)
    assert SafeCheckpointer(target, str(tmp_path), owns_save_dir=True).resume_or_load("", resume=True)["iteration"] == 1
    assert not any(p.exists() for p in stale) and keep.exists()
    assert torch.equal(target.head.weight, source.head.weight)


def test_saved_checkpoint_round_trips(tmp_path):
    source, target = seeded(Net, 0), seeded(Net, 1)
    path = saved(tmp_path, source)
    extra = SafeCheckpointer(target).load(path)
    assert extra["iteration"] == 1
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not_a_state_dict"])
def test_unreadable_checkpoint_names_the_file(tmp_path, damage):
    path = saved(tmp_path, seeded(Net, 0))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        if damage == "truncated":
            f.write(data[: len(data) // 2])
        elif damage == "garbage":
            f.write(os.urandom(256))
        elif damage == "not_a_state_dict":
            torch.save({"model": [1, 2, 3]}, f)
    with pytest.raises(CheckpointReadError) as error:
        SafeCheckpointer(seeded(Net, 1)).load(path)
    assert path in str(error.value)


def test_corrupt_pkl_and_missing_file_name_the_file(tmp_path):
    pkl = tmp_path / "backbone.pkl"
    pkl.write_bytes(pickle.dumps({"model": {}, "__author__": "x"})[:10])
    with pytest.raises(CheckpointReadError, match=str(pkl)):
        SafeCheckpointer(seeded(Net, 1)).load(str(pkl))
    missing = str(tmp_path / "nowhere" / "model_final.pth")
    with pytest.raises(FileNotFoundError, match=missing):
        SafeCheckpointer(seeded(Net, 1)).load(missing)


def test_resume_from_a_corrupt_last_checkpoint_names_it(tmp_path):
    path = saved(tmp_path, seeded(Net, 0))
    open(path, "r+b").truncate(100)
    with pytest.raises(CheckpointReadError, match="model_0000001.pth"):
        SafeCheckpointer(seeded(Net, 1), str(tmp_path)).resume_or_load("", resume=True)


def test_key_mismatch_lists_keys_and_refuses(tmp_path):
    path = saved(tmp_path, seeded(Net, 0, extra=True))  # has extra.*: unexpected for Net
    model = seeded(Net, 1, hidden=5)  # backbone / head shapes differ
    with pytest.raises(CheckpointMismatchError) as error:
        SafeCheckpointer(model).load(path)
    message = str(error.value)
    assert path in message and "MODEL.ALLOW_PARTIAL_LOAD" in message
    assert "unexpected in the checkpoint (2)" in message and "extra.weight" in message and "extra.bias" in message
    assert "different shapes (3)" in message and "backbone.weight: (4, 3) in the checkpoint, (5, 3) in the model" in message
    # Missing keys: a checkpoint without the head.
    keep_saved_weights(path, lambda name: name.startswith("backbone."))
    with pytest.raises(CheckpointMismatchError) as error:
        SafeCheckpointer(seeded(Net, 1)).load(path)
    assert "missing in the checkpoint (2)" in str(error.value) and "head.weight" in str(error.value)


def test_partial_load_when_asked_loads_what_matches(tmp_path):
    source = seeded(Net, 0)
    path = saved(tmp_path, source)
    keep_saved_weights(path, lambda name: name.startswith("backbone."))
    cfg = get_cfg()
    cfg.MODEL.ALLOW_PARTIAL_LOAD = True
    target = seeded(Net, 1)
    head_before = target.head.weight.clone()
    SafeCheckpointer(cfg, target).load(path)  # config form
    assert torch.equal(target.backbone.weight, source.backbone.weight)
    assert torch.equal(target.head.weight, head_before)  # left as initialised


def test_declared_new_modules_may_be_missing_for_training_only(tmp_path):
    base = seeded(Net, 0)
    path = saved(tmp_path, base)
    model = seeded(NetWithNewHead, 1)
    SafeCheckpointer(model).load(path)  # training initialisation: ood_head starts untrained
    assert torch.equal(model.head.weight, base.head.weight)
    with pytest.raises(CheckpointMismatchError, match="ood_head.weight"):
        SafeCheckpointer(seeded(NetWithNewHead, 1), allow_new_modules=False).load(path)  # evaluation
    # Only the declared prefix is excused: a checkpoint lacking the head as well is refused.
    keep_saved_weights(path, lambda name: name != "head.bias")
    with pytest.raises(CheckpointMismatchError) as error:
        SafeCheckpointer(seeded(NetWithNewHead, 1)).load(path)
    assert "missing in the checkpoint (1)" in str(error.value) and "head.bias" in str(error.value)


def test_backbone_pretraining_checkpoint_loads(tmp_path):
    # Detectron2's format for converted ImageNet backbones (R-50.pkl, Mask2Former's Swin .pkl).
    source = seeded(Net, 0)
    weights = {k.replace("backbone.", ""): v.numpy() for k, v in source.state_dict().items() if k.startswith("backbone.")}
    path = tmp_path / "backbone.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "torchvision", "matching_heuristics": True}, f)
    target = seeded(Net, 1)
    SafeCheckpointer(target).load(str(path))
    assert torch.equal(target.backbone.weight, source.backbone.weight)


def _pixel_cfg(name):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "synthcity" / "pixel" / f"{name}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize("method", ["rpl", "pebal", "raml", "vca"])
def test_fine_tune_configs_initialise_from_a_closed_set_checkpoint(tmp_path, method):
    # What configs/synthcity/pixel/<method>.yaml's MODEL.WEIGHTS does: a closed-set model's checkpoint
    # into a model with the method's new modules.
    closed = build_model(_pixel_cfg("closed_set"))
    path = saved(tmp_path, closed, "model_final")
    cfg = _pixel_cfg(method)
    model = build_model(cfg)
    SafeCheckpointer(cfg, model).resume_or_load(path, resume=False)
    reference = closed.state_dict()
    loaded = model.state_dict()
    shared = [k for k in reference if k in loaded]
    assert shared and all(torch.equal(loaded[k], reference[k]) for k in shared)
    # Evaluating that model without its trained method modules is refused.
    with pytest.raises(CheckpointMismatchError, match="ood_method."):
        SafeCheckpointer(cfg, build_model(cfg), allow_new_modules=False).load(path)


def test_mask2former_densehybrid_fine_tuning_initialises_from_closed_set(tmp_path):
    # RbA's DenseHybrid variant adds sem_seg_head.predictor.ood_pred to the closed-set Mask2Former.
    def m2f_cfg(*opts):
        cfg = get_cfg()
        cfg.merge_from_file(str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"))
        cfg.merge_from_list(list(opts))
        return cfg

    closed = build_model(m2f_cfg())
    path = saved(tmp_path, closed, "model_final")
    cfg = m2f_cfg("MODEL.MASK_FORMER.DENSE_HYBRID_LOSS", "True", "MODEL.OOD.SCORES", "['densehybrid']",
                  "MODEL.WEIGHTS", path)
    model = build_model(cfg)
    assert model.newly_initialized_prefixes == ("sem_seg_head.predictor.ood_pred.",)
    SafeCheckpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in closed.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing in the checkpoint \(6\).*sem_seg_head.predictor.ood_pred.conv.weight"):
        SafeCheckpointer(cfg, build_model(cfg), allow_new_modules=False).load(path)
    assert build_model(m2f_cfg()).newly_initialized_prefixes == ()  # the closed-set model adds nothing


def test_densehybrid_head_has_rbas_keys_and_earlier_checkpoints_load_renamed(tmp_path):
    # RbA's decoder holds DenseHybrid's head as ood_pred = BNReluConv(256, 2, k=1, bias=True):
    # keys norm.* (BatchNorm, momentum 0.01) and conv.weight / conv.bias.
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_swin_micro_1dl.yaml"))
    cfg.merge_from_list(["MODEL.MASK_FORMER.DENSE_HYBRID_LOSS", "True", "MODEL.OOD.SCORES", "['densehybrid']"])
    model = build_model(cfg)
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if ".ood_pred." in k}
    dim = cfg.MODEL.SEM_SEG_HEAD.MASK_DIM
    assert head == {
        "sem_seg_head.predictor.ood_pred.norm.weight": (dim,), "sem_seg_head.predictor.ood_pred.norm.bias": (dim,),
        "sem_seg_head.predictor.ood_pred.norm.running_mean": (dim,),
        "sem_seg_head.predictor.ood_pred.norm.running_var": (dim,),
        "sem_seg_head.predictor.ood_pred.norm.num_batches_tracked": (),
        "sem_seg_head.predictor.ood_pred.conv.weight": (2, dim, 1, 1), "sem_seg_head.predictor.ood_pred.conv.bias": (2,),
    }
    assert model.sem_seg_head.predictor.ood_pred.norm.momentum == 0.01
    # A checkpoint of the plugin's earlier layout (sem_seg_head.outlier_head.*) loads into it.
    trained = build_model(cfg)
    with torch.no_grad():
        trained.sem_seg_head.predictor.ood_pred.conv.weight.normal_()
    old_layout = {k.replace("sem_seg_head.predictor.ood_pred.", "sem_seg_head.outlier_head."): v
                  for k, v in trained.state_dict().items()}
    path = tmp_path / "old_layout.pth"
    torch.save({"model": old_layout}, path)
    SafeCheckpointer(cfg, model, allow_new_modules=False).load(str(path))
    assert torch.equal(model.sem_seg_head.predictor.ood_pred.conv.weight,
                       trained.sem_seg_head.predictor.ood_pred.conv.weight)


@pytest.mark.parametrize("fixture_name", ["m2f_swin_micro_rba_seed7.pt", "m2f_swin_micro_3level_seed11.pt"])
def test_official_state_dicts_pass_the_strict_load(reference_dir, tmp_path, fixture_name):
    # State dicts written by the official RbA / Mask2Former code load with nothing missing or extra,
    # also for evaluation (no newly initialised modules allowed).
    from .m2f_build import build_on, fixture_cfg, load_fixture

    fixture = load_fixture(reference_dir / fixture_name)
    path = tmp_path / "model_final.pth"
    torch.save({"model": fixture["state_dict"]}, path)
    cfg = fixture_cfg(fixture)
    model = build_on(cfg)
    SafeCheckpointer(cfg, model, allow_new_modules=False).load(str(path))
    for key, value in fixture["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
