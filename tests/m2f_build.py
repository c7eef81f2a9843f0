"""Building Mask2Former models from configs in the tests."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import torch
from detectron2.modeling import META_ARCH_REGISTRY

import rba_plugin  # noqa: F401  (registers the architectures)
from rba_plugin.config import get_cfg


def load_fixture(path: Path) -> Dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def fixture_cfg(fixture: Dict):
    """The fixture's dumped config merged into ours, then its recorded overrides, on the CPU."""
    cfg = get_cfg()
    cfg.merge_from_other_cfg(cfg.load_cfg(fixture["config_yaml"]))
    cfg.merge_from_list(list(fixture["overrides"]))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build_on(cfg, device: str = "cpu") -> torch.nn.Module:
    """The configured meta-architecture built directly on ``device`` ("meta": no memory)."""
    with torch.device(device):
        return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)


def read_keys_tsv(path: Path) -> Dict[str, Tuple[int, ...]]:
    keys = {}
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape"], f"{path}: unexpected header {lines[0]!r}"
    for line in lines[1:]:
        key, shape = line.split("\t")
        keys[key] = tuple(int(s) for s in shape.split("x")) if shape else ()
    return keys
