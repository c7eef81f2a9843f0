"""Training mappers by ``INPUT.DATASET_MAPPER_NAME`` (names as in Mask2Former / RbA configs).

Detectron2's ``Registry`` keys objects by their ``__name__``; the config names mappers by
Mask2Former's short names ("mask_former_semantic"), hence this small name -> class table.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

from ...config import declare_key

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


declare_key("INPUT.DATASET_MAPPER_NAME", check=lambda name, cfg: (
    None if name in _TRAIN_MAPPERS else f"no training mapper of that name (known: {', '.join(sorted(_TRAIN_MAPPERS))})"))


def registered_train_mappers() -> Dict[str, Callable]:
    return dict(_TRAIN_MAPPERS)


def build_train_mapper(cfg, extra_inputs: Sequence[str] = ()) -> Callable[[Dict], Dict]:
    """The mapper named by ``INPUT.DATASET_MAPPER_NAME``.

    Args:
        extra_inputs: keys of extra training inputs the model asks for (e.g. "outlier_image");
            the mapper class lists those it can provide in ``EXTRA_INPUTS``.

    Raises:
        KeyError: an unknown mapper name. ValueError: the mapper cannot provide an extra input.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in _TRAIN_MAPPERS:
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME: no training mapper named '{name}' (known: {sorted(_TRAIN_MAPPERS)})"
        )
    cls = _TRAIN_MAPPERS[name]
    if not extra_inputs:
        return cls(cfg, is_train=True)
    missing = [key for key in extra_inputs if key not in getattr(cls, "EXTRA_INPUTS", ())]
    if missing:
        providers = [n for n, c in _TRAIN_MAPPERS.items() if set(extra_inputs) <= set(getattr(c, "EXTRA_INPUTS", ()))]
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME '{name}' cannot provide the training input(s) {missing} the model needs "
            f"(mappers that can: {providers})"
        )
    return cls(cfg, is_train=True, extra_inputs=tuple(extra_inputs))
