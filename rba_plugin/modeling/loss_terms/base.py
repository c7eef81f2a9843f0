"""Loss terms: the parts of a training objective, one registered class each.

A term reads named outputs of the model (its ``inputs``) and the per-pixel labels, and returns a
dict of ``loss_*`` tensors; ``weights`` gives the factor the meta-architecture multiplies each
with (Mask2Former's ``weight_dict`` convention). Terms are built from the config by name with
:func:`build_loss_terms` (``@configurable`` / ``from_config`` like every Detectron2 component), so
adding a term means writing its class, registering it, and naming it in a config:

* Mask2Former (:class:`rba_plugin.modeling.criterion.SetCriterion`): the terms RbA's keys ask for
  (see :func:`register_term_alias`) plus ``MODEL.LOSS_TERMS``; they are applied to the final
  prediction and, with ``deep_supervision``, to every auxiliary one.
* per-pixel methods (:class:`rba_plugin.modeling.pixel.PixelOODMethod`): the terms the method
  lists plus ``MODEL.LOSS_TERMS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from detectron2.utils.registry import Registry
from torch import nn

__all__ = [
    "LOSS_TERM_REGISTRY",
    "LossTerm",
    "PixelTargets",
    "build_loss_terms",
    "register_term_alias",
    "aliased_term_names",
    "check_term_inputs",
    "check_choice",
    "resolve_form",
]

LOSS_TERM_REGISTRY = Registry("LOSS_TERM")
LOSS_TERM_REGISTRY.__doc__ = """
Loss terms (:class:`LossTerm` subclasses), built with ``cls(cfg)`` from their ``from_config``.
"""

# Functions cfg -> [term names]: config keys of official code bases (e.g. RbA's
# MODEL.MASK_FORMER.OUTLIER_SUPERVISION) that stand for loss terms; see register_term_alias.
_TERM_ALIASES: List[Callable] = []


@dataclass
class PixelTargets:
    """Per-pixel training labels of a batch.

    Attributes:
        labels: N x H x W int64: class ids in [0, C), ``ood_label`` on pasted outliers,
            ``ignore_label`` on void (and on padding).
        ood_label / ignore_label: the two special values.
        extra: further labelled tensors a method asked for, by input key (e.g. the labels of
            CoroCL's raw outlier images under "outlier_sem_seg").
    """

    labels: torch.Tensor
    ood_label: int = 254
    ignore_label: int = 255
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def outlier(self) -> torch.Tensor:
        """N x H x W bool: pasted outlier pixels."""
        return self.labels == self.ood_label

    @property
    def inlier(self) -> torch.Tensor:
        """N x H x W bool: labelled pixels that are neither void nor outlier."""
        return (self.labels != self.ignore_label) & (self.labels != self.ood_label)

    def without_outliers(self) -> torch.Tensor:
        """The labels with pasted outliers turned void (what closed-set losses train on)."""
        return self.labels.masked_fill(self.outlier, self.ignore_label)


class LossTerm(nn.Module):
    """Base class of loss terms.

    Class attributes a term sets:
        inputs: names of the model outputs it reads (checked when the model is built).
        deep_supervision: on Mask2Former, also applied to every auxiliary decoder prediction.
        replaces_mask_losses: on Mask2Former, the term replaces the class and mask losses
            (RbA's PEBAL and DenseHybrid variants do).

    Instances set ``self.weights``: {output key: factor}, one entry per key ``forward`` returns.
    """

    inputs: Tuple[str, ...] = ()
    deep_supervision: bool = True
    replaces_mask_losses: bool = False

    def __init__(self):
        super().__init__()
        self.weights: Dict[str, float] = {}

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: PixelTargets) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


def register_term_alias(fn: Callable) -> Callable:
    """Decorator: ``fn(cfg) -> [term names]`` turns the keys of an official code base into terms
    (e.g. RbA's OUTLIER_SUPERVISION + OUTLIER_LOSS_FUNC); it validates those keys itself."""
    _TERM_ALIASES.append(fn)
    return fn


def aliased_term_names(cfg) -> List[str]:
    """Term names the config asks for through official keys, in registration order."""
    return [name for alias in _TERM_ALIASES for name in alias(cfg)]


def build_loss_terms(cfg, names: Sequence[str], key: str = "MODEL.LOSS_TERMS") -> List[LossTerm]:
    """The terms ``names`` built from ``cfg``.

    Raises:
        ValueError: an unregistered name (naming ``key``, the name and the known terms), or a
            name listed twice.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"{key}: a loss term is listed twice: {list(names)}")
    terms = []
    for name in names:
        if name not in LOSS_TERM_REGISTRY:
            known = ", ".join(sorted(n for n, _ in LOSS_TERM_REGISTRY))
            raise ValueError(f"{key}: unknown loss term '{name}'; registered terms: {known}")
        terms.append(LOSS_TERM_REGISTRY.get(name)(cfg))
    return terms


def check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    """Raise a ValueError naming the config ``key`` when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{key} must be one of {tuple(allowed)}, got {value!r}")


def resolve_form(group, group_key: str, forms: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """The options of a config group whose ``FORM`` key picks a coherent bundle ("official",
    "paper", ...): every key of the bundle left ``None`` in the group takes the bundle's value,
    a key that is set overrides it.

    Args:
        group: the config node (e.g. ``cfg.MODEL.MCA``) with a ``FORM`` key and every bundle key.
        group_key: its full name, for messages (e.g. "MODEL.MCA").
        forms: form name -> {key: value}.
    Returns:
        {key: resolved value} for every key of the bundles.
    Raises:
        ValueError: ``FORM`` is not one of ``forms`` (naming the key and the allowed forms).
    """
    check_choice(f"{group_key}.FORM", group.FORM, tuple(forms))
    bundle = forms[group.FORM]
    return {key: default if group.get(key) is None else group.get(key) for key, default in bundle.items()}


def check_term_inputs(terms: Sequence[LossTerm], available: Sequence[str], model_name: str) -> None:
    """Raise a ValueError naming the term and the missing outputs if a term reads an output the
    model does not produce in training."""
    for term in terms:
        missing = [i for i in term.inputs if i not in available]
        if missing:
            raise ValueError(
                f"loss term {type(term).__name__} needs the training output(s) {', '.join(missing)}, which "
                f"{model_name} does not produce (it produces {', '.join(available)})"
            )
