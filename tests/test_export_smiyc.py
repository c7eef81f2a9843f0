"""tools/export_smiyc.py: a model's maps written where and how the official benchmark reads them,
resumable, for either branch and any score the model produces."""
import h5py
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model

from rba_plugin.config import load_config
from rba_plugin.engine import SafeCheckpointer

from .conftest import REPO_ROOT
from .pixel_e2e_utils import load_tool, register_tiny_synthcity

M2F_CONFIG = str(REPO_ROOT / "configs/synthcity/mask2former/maskformer2_R18_1dl.yaml")
PIXEL_CONFIG = str(REPO_ROOT / "configs/synthcity/pixel/closed_set.yaml")
SIZE = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]


@pytest.fixture(scope="module")
def anomaly_set(tmp_path_factory):
    return register_tiny_synthcity(tmp_path_factory.mktemp("synth"), "smiyc_export") + "_anomaly"


def _saved_model(config, folder, opts=()):
    cfg = load_config(config, [*SIZE, *opts])
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(folder)).save("model_final")
    return str(folder / "model_final.pth")


def _official_read(path):
    # What road_anomaly_benchmark's ChannelLoaderHDF5 + the metrics do with a file.
    with h5py.File(path, "r") as f:
        return np.squeeze(f["value"][:])


def test_frames_are_written_in_the_benchmark_layout_and_resume(anomaly_set, tmp_path):
    weights = _saved_model(M2F_CONFIG, tmp_path)
    tool = load_tool("export_smiyc")
    args = ["--config-file", M2F_CONFIG, "--dataset", anomaly_set, "--output", str(tmp_path / "out"),
            "--method-name", "ToyRbA", "--split", "AnomalyTrack-validation", "--opts", "MODEL.WEIGHTS", weights, *SIZE]
    assert tool.main(args) == {"written": 3, "skipped": 0}
    folder = tmp_path / "out" / "anomaly_p" / "ToyRbA" / "AnomalyTrack-all"  # the split's persistence name
    records = DatasetCatalog.get(anomaly_set)
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"{tool.frame_id(r)}.hdf5" for r in records)
    # Values: the model's ood_score (RbA, its default) at the image size, as float16.
    cfg = load_config(M2F_CONFIG, [*SIZE, "MODEL.WEIGHTS", weights])
    model = build_model(cfg).eval()
    SafeCheckpointer(model).load(weights)
    mapper = DatasetMapper(cfg, is_train=False)
    for record in records:
        stored = _official_read(folder / f"{tool.frame_id(record)}.hdf5")
        with torch.no_grad():
            want = model([mapper(dict(record))])[0]["ood_score"].numpy().astype(np.float16)
        assert stored.dtype == np.float16 and stored.shape == (record["height"], record["width"])
        np.testing.assert_array_equal(stored, want)
    with h5py.File(folder / files[0], "r") as f:
        assert f["value"].compression == "gzip" and f["value"].compression_opts == 9
    # A second run skips every frame; a missing frame is written again.
    assert tool.main(args) == {"written": 0, "skipped": 3}
    (folder / files[0]).unlink()
    assert tool.main(args) == {"written": 1, "skipped": 2}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_per_pixel_models_and_other_scores_export_too(anomaly_set, tmp_path):
    weights = _saved_model(PIXEL_CONFIG, tmp_path, ["MODEL.PIXEL_OOD.SIZE_DIVISIBILITY", "128",
                                                    "INPUT.CROP.SIZE", "(128, 128)"])
    tool = load_tool("export_smiyc")
    common = ["--config-file", PIXEL_CONFIG, "--dataset", anomaly_set, "--output", str(tmp_path / "out"),
              "--split", "RoadAnomaly", "--opts", "MODEL.WEIGHTS", weights, "MODEL.PIXEL_OOD.SIZE_DIVISIBILITY", "128",
              "INPUT.CROP.SIZE", "(128, 128)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256"]
    assert tool.main(["--method-name", "Energy", "--score", "energy", *common])["written"] == 3
    stored = _official_read(next((tmp_path / "out" / "anomaly_p" / "Energy" / "RoadAnomaly").iterdir()))
    assert stored.shape == (128, 256) and np.isfinite(stored).all()
    with pytest.raises(ValueError, match="score 'densehybrid' needs the model output"):
        tool.main(["--method-name", "Bad", "--score", "densehybrid", *common])


def test_split_comes_from_the_dataset_or_must_be_given(anomaly_set):
    tool = load_tool("export_smiyc")
    assert tool.resolve_split("smiyc_ra21_val") == "AnomalyTrack-validation"
    assert tool.resolve_split("lost_and_found_test_noknown") == "LostAndFound-testNoKnown"
    assert tool.resolve_split(anomaly_set, "ObstacleTrack-test") == "ObstacleTrack-test"
    with pytest.raises(ValueError, match=f"dataset '{anomaly_set}' has no 'smiyc_split' metadata: pass --split"):
        tool.resolve_split(anomaly_set)
    assert tool.frame_id({"file_name": "/x/01_Hanns/01_Hanns_000000_000100_leftImg8bit.png"}) == "01_Hanns_000000_000100"
