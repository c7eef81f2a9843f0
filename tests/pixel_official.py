"""The official per-pixel networks for the tests: the weight recipe of the fixtures
(../shared/reference/pixel_official/README.md, section 3) rebuilt from a state-dict key table, and
the plugin's configs that build each network as a ``PixelOODSegmentor``."""
from __future__ import annotations

import csv
import json
import logging
import math
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.modeling import build_model

from rba_plugin.config import load_config

from .conftest import REPO_ROOT

PIXEL_OFFICIAL = "pixel_official"


@dataclass(frozen=True)
class OfficialCase:
    """One official network: its fixture stem, the config that builds it here, overrides."""

    stem: str
    config: str
    opts: Tuple[str, ...] = ()

    def tsv(self, reference_dir: Path) -> Path:
        return reference_dir / PIXEL_OFFICIAL / f"{self.stem}_state_dict_keys.tsv"

    def fixture(self, reference_dir: Path) -> dict:
        return torch.load(reference_dir / PIXEL_OFFICIAL / f"{self.stem}_seed3.pt")

    def cfg(self, *opts: str):
        return load_config(str(REPO_ROOT / self.config),
                           ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *self.opts, *opts], freeze=False)

    def build(self, *opts: str):
        return build_model(self.cfg(*opts))


CASES: Dict[str, OfficialCase] = {
    "pebal": OfficialCase("pebal_deepwv3plus", "configs/cityscapes/pixel/pebal.yaml"),
    "rpl": OfficialCase("rpl_corocl_deepwv3plus", "configs/cityscapes/pixel/rpl_corocl.yaml"),
    "densehybrid": OfficialCase("densehybrid_deepwv3plusth", "configs/cityscapes/pixel/densehybrid.yaml"),
    # RAML's network with 16 known classes (the 16+3 setting's released models: conv3 16 -> 20)
    # and with the 19 Cityscapes classes (conv3 19 -> 20).
    "raml16": OfficialCase("raml_dlv3p_r101_os16_16cls", "configs/cityscapes/pixel/raml.yaml",
                           ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "16")),
    "raml19": OfficialCase("raml_dlv3p_r101_os16_19cls", "configs/cityscapes/pixel/raml.yaml"),
}
# The WideResNet-38 networks (PEBAL, RPL, DenseHybrid).
WRN_CASES = ("pebal", "rpl", "densehybrid")


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


def recipe_state_dict(tsv: Path, seed: int = 3) -> "OrderedDict[str, torch.Tensor]":
    """The official state dict the fixtures were made with (official key names)."""
    return OrderedDict((k, recipe_tensor(k, s, t, seed)) for k, s, t in read_key_table(tsv))


def load_official(model, state_dict: Dict[str, torch.Tensor], missing_ok: Sequence[str] = ()) -> None:
    """Load an official state dict strictly, through the model's own key mapping; keys under
    ``missing_ok`` may be absent (RAML's metric head, which the official code saves apart)."""
    state, _ = model.adapt_checkpoint(state_dict, fill_new_modules=False)
    result = model.load_state_dict(state, strict=not missing_ok)
    if missing_ok:
        assert not result.unexpected_keys, result.unexpected_keys
        assert all(k.startswith(tuple(missing_ok)) for k in result.missing_keys), result.missing_keys


@contextmanager
def plugin_log(caplog):
    """Capture the plugin's INFO log in ``caplog``: a tool's ``setup_logger(name="rba_plugin")``
    (run by earlier tests in the same process) stops it from propagating to the root logger."""
    logger = logging.getLogger("rba_plugin")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)


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


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref| (the fixtures' tolerance measure)."""
    assert ours.shape == ref.shape, (tuple(ours.shape), tuple(ref.shape))
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def image_input(image: torch.Tensor) -> List[dict]:
    """A batch of one 3 x H x W RGB image (0..255) for the segmentor's inference."""
    return [{"image": image, "height": image.shape[-2], "width": image.shape[-1]}]


def pixel_batch(n: int, size: Sequence[int], num_classes: int = 19, seed: int = 0, raw_outliers: bool = False):
    """A training batch of ``n`` random images with labels and a pasted outlier box (254) each."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for i in range(n):
        sem = torch.randint(0, num_classes, (h, w), generator=g)
        sem[:3] = 255
        sem[h // 4: h // 2, w // 4 + i: w // 2 + i] = 254
        item = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "sem_seg": sem}
        if raw_outliers:
            raw = torch.zeros(h, w, dtype=torch.long)
            raw[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 254
            item["outlier_image"] = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
            item["outlier_sem_seg"] = raw
        batch.append(item)
    return batch
