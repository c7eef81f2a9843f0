"""Training mappers by ``INPUT.DATASET_MAPPER_NAME`` (names as in Mask2Former / RbA configs).

Detectron2's ``Registry`` keys objects by their ``__name__``; the config names mappers by
Mask2Former's short names ("mask_former_semantic"), hence this small name -> class table.
"""
from __future__ import annotations

from typing import Callable, Dict

__all__ = ["register_train_mapper", "build_train_mapper", "registered_train_mappers"]

_TRAIN_MAPPERS: Dict[str, Callable] = {}


def register_train_mapper(name: str) -> Callable:
    """Class decorator: ``cls(cfg, is_train=True)`` builds the mapper named ``name``."""

    def deco(cls):
        if name in _TRAIN_MAPPERS:
            raise KeyError(f"a training mapper named '{name}' is already registered ({_TRAIN_MAPPERS[name]})")
        _TRAIN_MAPPERS[name] = cls
        return cls

    return deco


def registered_train_mappers() -> Dict[str, Callable]:
    return dict(_TRAIN_MAPPERS)


def build_train_mapper(cfg) -> Callable[[Dict], Dict]:
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in _TRAIN_MAPPERS:
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME: no training mapper named '{name}' (known: {sorted(_TRAIN_MAPPERS)})"
        )
    return _TRAIN_MAPPERS[name](cfg, is_train=True)
