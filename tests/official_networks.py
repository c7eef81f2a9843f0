"""The weight recipe of the official-network fixtures (../shared/reference/pixel_official/README.md,
section 3), rebuilt from a state-dict key table (TSV: key, shape, dtype, module_type)."""
from __future__ import annotations

import csv
import json
import math
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Tuple

import torch

PIXEL_OFFICIAL = "pixel_official"


def read_key_table(path: Path) -> List[Tuple[str, Tuple[int, ...], str]]:
    """(key, shape, module_type) of each TSV row, in order."""
    with open(path, newline="") as f:
        return [(r["key"], tuple(json.loads(r["shape"])), r["module_type"]) for r in csv.DictReader(f, delimiter="\t")]


def recipe_tensor(key: str, shape: Tuple[int, ...], module_type: str, seed: int) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.tensor(0, dtype=torch.int64)
    g = torch.Generator().manual_seed((seed * 1000003 + zlib.crc32(key.encode())) % 2**63)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    if len(shape) >= 2:  # conv weights at gain 1
        return x * math.sqrt(1.0 / math.prod(shape[1:]))
    if key.endswith("running_var"):
        return 1 + 0.1 * x.abs()
    if key.endswith("running_mean"):
        return 0.1 * x
    if len(shape) == 1 and key.endswith("weight") and module_type.startswith("BatchNorm"):
        return 1 + 0.1 * x
    return 0.1 * x


def recipe_state_dict(tsv: Path, seed: int) -> "OrderedDict[str, torch.Tensor]":
    """The official state dict the fixtures were made with (official key names)."""
    return OrderedDict((k, recipe_tensor(k, s, t, seed)) for k, s, t in read_key_table(tsv))


def checksums(state_dict: Dict[str, torch.Tensor]) -> Dict[str, Tuple[float, float]]:
    """(float64 sum, float64 sum of |.|) per tensor, as the fixtures store them.

    Summed on one thread, as the fixtures were made: a multi-threaded float64 reduction adds in
    another order and can move the last bit of the large sums.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {k: (v.double().sum().item(), v.double().abs().sum().item()) for k, v in state_dict.items()}
    finally:
        torch.set_num_threads(threads)
