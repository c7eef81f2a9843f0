"""SMIYC submission files: layout, float16 HDF5 content read back as the official loader does,
atomic writes and the resume check."""
import os

import h5py
import numpy as np
import pytest
import torch

from rba_plugin.evaluation.smiyc_files import (anomaly_map_path, is_written, read_anomaly_map, smiyc_folder_name,
                                               write_anomaly_map)


def official_read(path):
    """What road-anomaly-benchmark does: ChannelLoaderHDF5.read_file, then np.squeeze."""
    with h5py.File(path, "r") as f:
        return np.squeeze(f["value"][:])


def test_frames_written_and_read_back_like_the_official_loader(tmp_path):
    rng = np.random.default_rng(0)
    maps = {
        "airplane0000": rng.random((12, 20)).astype(np.float32),  # rounded to float16 on writing
        "04_Maurener_Weg_8_000000_000030": (rng.normal(size=(12, 20)) * 100).astype(np.float64),
        "validation_1": torch.linspace(-3, 3, 240).reshape(12, 20),  # a tensor
    }
    folder = smiyc_folder_name("AnomalyTrack-test")
    assert folder == "AnomalyTrack-all" and smiyc_folder_name("LostAndFound-testNoKnown") == "LostAndFound-test"
    for fid, value in maps.items():
        assert not is_written(tmp_path, "MyMethod", folder, fid)
        path = write_anomaly_map(tmp_path, "MyMethod", folder, fid, value)
        assert path == str(tmp_path / "anomaly_p" / "MyMethod" / folder / f"{fid}.hdf5")
        assert is_written(tmp_path, "MyMethod", folder, fid)
    assert sorted(os.listdir(tmp_path / "anomaly_p" / "MyMethod" / folder)) == sorted(f"{fid}.hdf5" for fid in maps)
    for fid, value in maps.items():
        path = anomaly_map_path(tmp_path, "MyMethod", folder, fid)
        expected = np.asarray(value).astype(np.float16)
        got = official_read(path)
        assert got.dtype == np.float16 and got.shape == (12, 20)
        assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))
        assert np.array_equal(read_anomaly_map(path), got)
        with h5py.File(path, "r") as f:
            assert list(f.keys()) == ["value"]
            assert f["value"].compression == "gzip" and f["value"].compression_opts == 9


def test_bad_maps_and_names_leave_nothing_behind(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="frame 'f'.*not finite as float16"):
        write_anomaly_map(tmp_path, "M", "D", "f", np.full((4, 4), 7e4, np.float32))
    with pytest.raises(ValueError, match="H x W"):
        write_anomaly_map(tmp_path, "M", "D", "f", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="frame_id"):
        write_anomaly_map(tmp_path, "M", "D", "../f", np.zeros((4, 4), np.float32))
    assert not is_written(tmp_path, "M", "D", "f")
    write_anomaly_map(tmp_path, "M", "D", "f", np.zeros((4, 4), np.float32))

    # A write failing after its temporary file was opened keeps the previous file, and no temporary.
    import rba_plugin.evaluation.smiyc_files as files

    original = files.h5py.File

    def failing(*args, **kwargs):
        original(*args, **kwargs).close()
        raise OSError("disk full")

    monkeypatch.setattr(files.h5py, "File", failing)
    with pytest.raises(OSError, match="disk full"):
        write_anomaly_map(tmp_path, "M", "D", "f", np.ones((4, 4), np.float32))
    monkeypatch.undo()
    assert os.listdir(tmp_path / "anomaly_p" / "M" / "D") == ["f.hdf5"]
    assert np.array_equal(read_anomaly_map(anomaly_map_path(tmp_path, "M", "D", "f")), np.zeros((4, 4), np.float16))
