"""Checkpoint compatibility with RbA's released Swin-B single-decoder-layer model."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from rba_plugin.config import get_cfg

from .conftest import REPO_ROOT
from .m2f_build import build_on, fixture_cfg, load_fixture, read_keys_tsv

RELEASE_CFG = "rba_release_configs/swin_b_1dl.yaml"
OUR_CFG = REPO_ROOT / "configs/cityscapes/mask2former/swin/maskformer2_swin_base_IN21k_384_bs16_90k_1dl.yaml"


def _state_dict_shapes(cfg):
    model = build_on(cfg, "meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, model


@pytest.mark.parametrize("source", ["release_dump", "our_config"])
def test_swin_b_1dl_state_dict_matches_release(reference_dir, source):
    expected = read_keys_tsv(reference_dir / "m2f_swin_b_1dl_state_dict_keys.tsv")
    assert len(expected) == 510
    cfg = get_cfg()
    cfg.merge_from_file(str(reference_dir / RELEASE_CFG if source == "release_dump" else OUR_CFG))
    ours, model = _state_dict_shapes(cfg)
    assert sorted(set(expected) - set(ours)) == [], "keys of the release missing from our model"
    assert sorted(set(ours) - set(expected)) == [], "keys of our model absent from the release"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 1) == 95.1


def test_detection_checkpointer_loads_official_state_dict(reference_dir, tmp_path):
    # The way a released model_final.pth is loaded: DetectionCheckpointer, {"model": state_dict}.
    fixture = load_fixture(reference_dir / "m2f_swin_micro_rba_seed7.pt")
    path = tmp_path / "model_final.pth"
    torch.save({"model": fixture["state_dict"]}, path)
    model = build_on(fixture_cfg(fixture))
    result = DetectionCheckpointer(model).load(str(path))
    assert result == {}  # no unused checkpoint content left over
    for key, value in fixture["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
