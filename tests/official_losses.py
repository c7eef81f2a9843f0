"""Cases of tests/fixtures/official_losses: official loss values and gradients on seeded inputs."""
from __future__ import annotations

import functools
import gzip
import json
import math
import os
from typing import Dict, Tuple

import torch

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "official_losses", "official_values.json.gz")


@functools.lru_cache(maxsize=1)
def _cases() -> dict:
    with gzip.open(FIXTURE, "rt") as f:
        return json.load(f)["cases"]


def case_names(prefix: str = ""):
    return sorted(name for name in _cases() if name.startswith(prefix))


def _tensor(value, dtype):
    if isinstance(value, list):
        flat = value
        while isinstance(flat, list) and flat and isinstance(flat[0], list):
            flat = flat[0]
        is_int = bool(flat) and isinstance(flat[0], int) and not isinstance(flat[0], bool)
        return torch.tensor(value, dtype=torch.int64 if is_int else dtype)
    return value


def official_case(name: str, dtype=torch.float64) -> Tuple[float, Dict[str, torch.Tensor], Dict[str, object]]:
    """(official value (nan if non-finite), gradients by input name, inputs) of one case; float
    inputs are created with ``requires_grad`` when the case records a gradient for them."""
    cases = _cases()
    case = cases[name]
    inputs = dict(case["inputs"])
    while "see" in inputs:  # shared inputs live in another case; own keys add to them
        own = {k: v for k, v in inputs.items() if k != "see"}
        inputs = {**cases[inputs["see"]]["inputs"], **own}
    grads = {k: torch.tensor(v, dtype=dtype) for k, v in case["grads"].items() if isinstance(v, list)}
    tensors = {}
    for key, value in inputs.items():
        t = _tensor(value, dtype)
        if torch.is_tensor(t) and t.is_floating_point() and key in grads:
            t.requires_grad_(True)
        tensors[key] = t
    value = case["value"]
    value = float("nan") if isinstance(value, str) else float(value)
    return value, grads, tensors


def description(name: str) -> str:
    return _cases()[name]["description"]


def is_nan(value: float) -> bool:
    return math.isnan(value)
