"""PEBAL's abstention channel, one registered structure per network (``MODEL.PEBAL.ABSTENTION``).

* :class:`PredictorRow` (official): the abstention channel is one more output row of the head's
  last 1x1 conv, as PEBAL's ``Network(19 + 1)`` (``code/config/config.py`` line 31,
  ``C.num_classes = 19 + 1``): ``final.6`` has 20 rows on DeepWV3Plus, so released PEBAL
  checkpoints load 1:1. A closed-set checkpoint's C-row predictor is widened when it initialises
  the model, with a Kaiming-normal row as ``load_model(..., extra_channel=True)``
  (``code/utils/pyt_utils.py`` lines 332-335).
* :class:`SeparateConv`: a 1x1 conv ``ood_method.abstain`` on the decoder features next to the
  head's predictor (so a closed-set checkpoint loads unchanged); the plugin's structure on
  Detectron2's DeepLabV3+.

A structure is built with ``cls(cfg, head)``; it gives the N x (C+1) x h x w logits (the last
channel abstains) from the decoder features and names what trains besides the head's
classification block.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = ["PEBAL_ABSTENTION_REGISTRY", "PredictorRow", "SeparateConv", "build_abstention", "widen_predictor"]

PEBAL_ABSTENTION_REGISTRY = Registry("PEBAL_ABSTENTION")
PEBAL_ABSTENTION_REGISTRY.__doc__ = """
PEBAL's abstention channel per network (``MODEL.PEBAL.ABSTENTION``), built with ``cls(cfg, head)``.
"""


def _kaiming_rows(rows: int, like: Tensor) -> Tensor:
    """``rows`` Kaiming-normal rows shaped as the rows of conv weight ``like`` (fan-in mode,
    gain sqrt(2): ``torch.nn.init.kaiming_normal_`` on the full tensor, as the official code)."""
    fan_in = math.prod(like.shape[1:])
    return torch.randn((rows,) + tuple(like.shape[1:]), dtype=like.dtype, device=like.device) * math.sqrt(2.0 / fan_in)


def widen_predictor(head: nn.Module, extra: int) -> nn.Conv2d:
    """Replace the head's last 1x1 conv (``head.predictor_prefix``) by one with ``extra`` more
    output rows: the old rows kept, the new ones Kaiming-normal (zero bias). Returns the new conv."""
    old = head.get_submodule(head.predictor_prefix)
    new = nn.Conv2d(old.in_channels, old.out_channels + extra, old.kernel_size, padding=old.padding,
                    bias=old.bias is not None).to(old.weight.device)
    with torch.no_grad():
        new.weight[: old.out_channels] = old.weight
        new.weight[old.out_channels:] = _kaiming_rows(extra, old.weight)
        if old.bias is not None:
            new.bias[: old.out_channels] = old.bias
            new.bias[old.out_channels:] = 0
    head.set_submodule(head.predictor_prefix, new)
    return new


@PEBAL_ABSTENTION_REGISTRY.register()
class PredictorRow(nn.Module):
    """The official structure: row C of the head's predictor abstains (no module of its own).

    Args:
        head: the per-pixel head; its predictor (``head.predictor_prefix``) is widened by one row
            when this is built (the head is not kept as a submodule).
        num_classes: C, the known classes.

    Raises:
        ValueError: if the head's predictor does not have C outputs.
    """

    @configurable
    def __init__(self, *, head: nn.Module, num_classes: int):
        super().__init__()
        predictor = head.get_submodule(head.predictor_prefix)
        if predictor.out_channels != num_classes:
            raise ValueError(
                f"MODEL.PEBAL.ABSTENTION=PredictorRow: the head's {head.predictor_prefix} has {predictor.out_channels} "
                f"outputs, expected MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} (the abstention row is added to them)"
            )
        widen_predictor(head, 1)
        self.num_classes = num_classes
        self.predictor_prefix = head.predictor_prefix

    @classmethod
    def from_config(cls, cfg, head) -> Dict:
        return {"head": head, "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}

    def logits(self, head: nn.Module, feats: Tensor) -> Tensor:
        """N x (C+1) x h x w: the head's predictor."""
        return head.predict(feats)

    def trainable_prefixes(self, own_prefix: str) -> List[str]:
        return []  # the row is part of the head's classification block

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> List[str]:
        """Widen a closed-set checkpoint's C-row predictor by a Kaiming-normal abstention row."""
        notes = []
        for name in ("weight", "bias"):
            key = f"{head_prefix}{self.predictor_prefix}.{name}"
            value = state_dict.get(key)
            if value is None or value.shape[0] != self.num_classes:
                continue
            row = _kaiming_rows(1, value) if name == "weight" else value.new_zeros(1)
            state_dict[key] = torch.cat([value, row])
            notes.append(f"PEBAL: {key} widened from {self.num_classes} to {self.num_classes + 1} rows "
                         f"(a Kaiming-normal abstention row, as PEBAL's load_model)")
        return notes


@PEBAL_ABSTENTION_REGISTRY.register()
class SeparateConv(Conv2d):
    """A 1x1 conv from the decoder features to one abstention logit (``ood_method.abstain``),
    Kaiming-normal weight and zero bias as the official extra row."""

    @configurable
    def __init__(self, *, in_channels: int):
        super().__init__(in_channels, 1, kernel_size=1)
        nn.init.kaiming_normal_(self.weight)
        nn.init.zeros_(self.bias)

    @classmethod
    def from_config(cls, cfg, head) -> Dict:
        return {"in_channels": head.feature_channels}

    def logits(self, head: nn.Module, feats: Tensor) -> Tensor:
        """N x (C+1) x h x w: the head's C logits and this conv's."""
        return torch.cat([head.predict(feats), self(feats)], dim=1)

    def trainable_prefixes(self, own_prefix: str) -> List[str]:
        return [own_prefix]

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> Optional[List[str]]:
        return None  # a fresh conv: the checkpointer lets ood_method.* start untrained


def build_abstention(cfg, head: nn.Module) -> nn.Module:
    """The structure named by ``MODEL.PEBAL.ABSTENTION``; a ValueError lists the registered ones."""
    name = cfg.MODEL.PEBAL.ABSTENTION
    if name not in PEBAL_ABSTENTION_REGISTRY:
        known = sorted(k for k, _ in PEBAL_ABSTENTION_REGISTRY)
        raise ValueError(f"MODEL.PEBAL.ABSTENTION={name!r} is not registered; known: {known}")
    return PEBAL_ABSTENTION_REGISTRY.get(name)(cfg, head)
