"""Map official checkpoint keys onto a model composed as backbone / sem_seg_head / OOD method.

The composed models hold the official modules under three attributes, as ``PixelOODSegmentor``
does: ``backbone.<trunk keys>``, ``sem_seg_head.<decoder keys>`` and ``<method_prefix><the
method's own module keys>`` (``method_prefix`` defaults to ``"ood_method."``). The official
checkpoints instead use one flat module, possibly wrapped:

============  ======================  ==========================================================
layout        official wrapper        routes (official key after unwrapping -> composed key)
============  ======================  ==========================================================
pebal         ``branch1.``            ``mod*`` -> ``backbone.mod*``; ``aspp.``, ``bot_fine.``,
                                      ``bot_aspp.``, ``final.`` -> ``sem_seg_head.`` + same
rpl           ``branch1.``            as pebal, plus ``residual_block.`` -> ``<method_prefix>residual_block.``
densehybrid   none                    as pebal, plus ``logits_ood.`` -> ``<method_prefix>logits_ood.``
wrn38         none                    as pebal (NVIDIA's DeepWV3Plus checkpoints, e.g. ``cityscapes_best.pth``)
raml          none                    ``backbone.`` -> ``backbone.``; ``classifier.`` -> ``sem_seg_head.``
============  ======================  ==========================================================

Leading ``module.`` prefixes (``DataParallel`` / DDP checkpoints, e.g. PEBAL's
``module.branch1.`` or NVIDIA's ``module.mod1.``) and the layout's wrapper are stripped, in any
order, before routing. All functions are pure: they return new dicts and never touch a model.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple, TypeVar

__all__ = [
    "OfficialLayout",
    "OFFICIAL_LAYOUTS",
    "METHOD_PREFIX",
    "split_official_state_dict",
    "official_to_model_state_dict",
    "model_to_official_state_dict",
]

T = TypeVar("T")
METHOD_PREFIX = "ood_method."
_METHOD = "{method}"  # placeholder for the method prefix inside a route


@dataclass(frozen=True)
class OfficialLayout:
    """How one official network's keys are laid out.

    Attributes:
        name: layout name.
        wrapper: prefix of every key in the official model (``"branch1."``) or ``""``.
        routes: ``(official prefix, composed prefix)`` pairs; a key starting with the official
            prefix has it replaced by the composed prefix (``{method}`` stands for the method
            prefix). The first matching route wins.
    """

    name: str
    wrapper: str
    routes: Tuple[Tuple[str, str], ...]


_WRN_ROUTES: Tuple[Tuple[str, str], ...] = tuple(
    [(f"mod{i}.", f"backbone.mod{i}.") for i in range(1, 8)]
    + [(p, "sem_seg_head." + p) for p in ("aspp.", "bot_fine.", "bot_aspp.", "final.")]
)

OFFICIAL_LAYOUTS: Dict[str, OfficialLayout] = {
    "pebal": OfficialLayout("pebal", "branch1.", _WRN_ROUTES),
    "rpl": OfficialLayout("rpl", "branch1.", _WRN_ROUTES + (("residual_block.", _METHOD + "residual_block."),)),
    "densehybrid": OfficialLayout("densehybrid", "", _WRN_ROUTES + (("logits_ood.", _METHOD + "logits_ood."),)),
    "wrn38": OfficialLayout("wrn38", "", _WRN_ROUTES),
    "raml": OfficialLayout("raml", "", (("backbone.", "backbone."), ("classifier.", "sem_seg_head."))),
}


def _layout(layout) -> OfficialLayout:
    if isinstance(layout, OfficialLayout):
        return layout
    if layout not in OFFICIAL_LAYOUTS:
        raise ValueError(f"unknown official layout {layout!r}; known: {sorted(OFFICIAL_LAYOUTS)}")
    return OFFICIAL_LAYOUTS[layout]


def _unwrap(key: str, wrapper: str) -> str:
    prefixes = ("module.",) + ((wrapper,) if wrapper else ())
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def split_official_state_dict(
    state_dict: Mapping[str, T], layout, method_prefix: str = METHOD_PREFIX
) -> Tuple["OrderedDict[str, T]", List[str]]:
    """Route every official key to its composed name.

    Args:
        state_dict: an official state dict (or checkpoint ``state_dict`` entry).
        layout: a name of :data:`OFFICIAL_LAYOUTS` or an :class:`OfficialLayout`.
        method_prefix: where the method's own modules sit in the composed model.

    Returns:
        ``(mapped, unmapped)``: the composed-name state dict (same values, same order) and the
        official keys no route covers (e.g. an ImageNet trunk's ``bn_out`` / ``classifier``).

    Raises:
        ValueError: for an unknown layout name, or if two official keys map onto one name.
    """
    spec = _layout(layout)
    mapped: "OrderedDict[str, T]" = OrderedDict()
    unmapped: List[str] = []
    for key, value in state_dict.items():
        inner = _unwrap(key, spec.wrapper)
        for official, composed in spec.routes:
            if inner.startswith(official):
                new_key = composed.replace(_METHOD, method_prefix) + inner[len(official):]
                if new_key in mapped:
                    raise ValueError(f"official keys collide on {new_key!r} (layout {spec.name})")
                mapped[new_key] = value
                break
        else:
            unmapped.append(key)
    return mapped, unmapped


def official_to_model_state_dict(
    state_dict: Mapping[str, T], layout, method_prefix: str = METHOD_PREFIX
) -> "OrderedDict[str, T]":
    """Official state dict -> composed-model state dict; every key must be routed.

    Raises:
        KeyError: listing the official keys that have no place in the composed model.
        ValueError: see :func:`split_official_state_dict`.
    """
    mapped, unmapped = split_official_state_dict(state_dict, layout, method_prefix)
    if unmapped:
        shown = ", ".join(unmapped[:8]) + (" ..." if len(unmapped) > 8 else "")
        raise KeyError(f"{len(unmapped)} official keys have no route in layout {_layout(layout).name!r}: {shown}")
    return mapped


def model_to_official_state_dict(
    state_dict: Mapping[str, T], layout, method_prefix: str = METHOD_PREFIX, wrapper: bool = True
) -> "OrderedDict[str, T]":
    """Composed-model state dict -> official key names (the inverse of the above).

    Args:
        wrapper: prepend the layout's official wrapper (``branch1.`` for PEBAL / RPL).

    Raises:
        KeyError: listing the composed keys no route produces (modules the official model lacks).
    """
    spec = _layout(layout)
    prefix = spec.wrapper if wrapper else ""
    out: "OrderedDict[str, T]" = OrderedDict()
    missing: List[str] = []
    for key, value in state_dict.items():
        for official, composed in spec.routes:
            composed = composed.replace(_METHOD, method_prefix)
            if key.startswith(composed):
                out[prefix + official + key[len(composed):]] = value
                break
        else:
            missing.append(key)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise KeyError(f"{len(missing)} model keys have no official name in layout {spec.name!r}: {shown}")
    return out
