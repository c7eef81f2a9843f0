"""The interface of a per-pixel OOD method, and the registry that builds them.

A method is a registered module (``MODEL.PIXEL_OOD.METHOD``) that owns its extra modules and
declares, as data, everything the rest of the plugin needs of it:

* what it outputs: ``forward`` returns named maps; at inference ``"sem_seg"`` plus the score
  inputs ``score_inputs`` (see :data:`rba_plugin.modeling.ood.SCORE_INPUTS`) and any other maps;
* its anomaly scores by default (``default_scores``, ``default_smoothing_kernel``), used when
  ``MODEL.OOD.SCORES`` / ``SMOOTHING_KERNEL`` leave the choice to the model;
* its loss terms (``loss_term_names(cfg)``, registered in
  :data:`rba_plugin.modeling.loss_terms.LOSS_TERM_REGISTRY`), which read its training outputs
  (``training_outputs``, checked against the terms' inputs when the model is built);
* what trains (``trainable_prefixes``) and at which learning-rate factor (``lr_factors``);
* whether it initialises parameters from training data before the first step
  (``data_init_batches`` > 0, then ``initialize_from_data``; the trainer calls it through
  :meth:`PixelOODSegmentor.initialize_from_data`, e.g. VCA's class-mean prototypes);
* extra training inputs (``extra_inputs``, e.g. CoroCL's raw outlier images), which the
  training mapper provides and the segmentor runs through the backbone;
* whether its inference can be exported as a graph (``not_exportable``: None, or the reason, which
  :mod:`rba_plugin.export` reports when it refuses the model).

Data flows one way: the segmentor runs the backbone and ``head.decode``, then the method (which
uses the head's pieces, see :mod:`.heads`), then the loss terms or the scores.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.structures import ImageList
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..loss_terms import PixelTargets

__all__ = ["PIXEL_OOD_METHOD_REGISTRY", "PixelOODMethod", "build_pixel_ood_method", "ExtraImages"]

PIXEL_OOD_METHOD_REGISTRY = Registry("PIXEL_OOD_METHOD")
PIXEL_OOD_METHOD_REGISTRY.__doc__ = """
Registry of per-pixel OOD methods (RPL, PEBAL, RAML, VCA, the closed-set baseline) used by
:class:`PixelOODSegmentor`. A method is built with ``cls(cfg, sem_seg_head)`` (``from_config``).
"""


class ExtraImages:
    """Extra images of a training batch (one per input), run through the backbone.

    Attributes:
        images: the normalised, padded ImageList.
        features: the backbone's features of them.
    """

    def __init__(self, images: ImageList, features: Dict[str, Tensor]):
        self.images = images
        self.features = features


class PixelOODMethod(nn.Module):
    """Base class. The segmentor owns backbone and head; a method owns its extra modules and
    receives the head as an argument (never as a submodule), so each parameter has exactly one
    name in the segmentor (``backbone.*``, ``sem_seg_head.*``, ``ood_method.*``)."""

    score_inputs: Tuple[str, ...] = ("class_scores",)
    default_scores: Tuple[str, ...] = ("maxlogit",)
    default_smoothing_kernel: int = 0
    training_outputs: Tuple[str, ...] = ()
    # Why the inference cannot be traced into an ONNX / TorchScript graph (None: it can).
    not_exportable: Optional[str] = None

    def __init__(self):
        super().__init__()
        # Training-input keys of extra images ("<name>_image", labelled by "<name>_sem_seg").
        self.extra_inputs: Tuple[str, ...] = ()

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        """Registered loss terms the method trains with (under ``cfg``)."""
        return []

    def trainable_prefixes(self) -> Optional[List[str]]:
        """Parameter-name prefixes (segmentor-relative) that train; ``None`` = everything trains."""
        return None

    def lr_factors(self) -> Dict[str, float]:
        """Parameter-name prefix -> learning-rate factor (first match wins; default 1)."""
        return {}

    def data_init_batches(self) -> int:
        """Training batches the method wants to see in :meth:`initialize_from_data` before the
        first training step (0: none, the default)."""
        return 0

    def initialize_from_data(self, head: nn.Module, batches: Iterable[Tuple[Tensor, PixelTargets]]) -> None:
        """Initialises parameters from ``data_init_batches()`` training batches, each given as
        (``head.decode(features)`` computed without gradients in eval mode, its PixelTargets);
        ``batches`` may be iterated more than once."""

    def forward(
        self,
        head: nn.Module,
        features: Dict[str, Tensor],
        dec_in: Tensor,
        images: ImageList,
        targets: Optional[PixelTargets] = None,
        extras: Optional[Dict[str, ExtraImages]] = None,
    ) -> Dict[str, Tensor]:
        """Named outputs.

        Args:
            head: the segmentor's head (its pieces, see :mod:`.heads`).
            features: backbone features; dec_in: ``head.decode(features)``.
            images: the normalised, padded input batch.
            targets: the labels (training only).
            extras: the extra images of ``extra_inputs`` by key (training only).

        Returns:
            training: the maps the loss terms read. Inference: ``"sem_seg"`` (N x C x H x W
            logits at the padded input size ``images.tensor.shape[-2:]``, which every map is
            upsampled to with ``head.upsample(x, size)``), every name of ``score_inputs`` (N x K x H x W),
            and optional further N x H x W maps (e.g. VCA's boolean ``"unknown_mask"``).
        """
        raise NotImplementedError

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> Optional[List[str]]:
        """Hook called before loading a state dict; may add (or widen) entries a base checkpoint
        lacks, in place. ``prefix`` / ``head_prefix``: where the method's and the head's keys
        are. Returns notes on what it changed (for the loading log), or None."""
        return None


def build_pixel_ood_method(cfg, sem_seg_head: nn.Module) -> PixelOODMethod:
    """The method named by ``MODEL.PIXEL_OOD.METHOD``; a ValueError lists the registered ones."""
    name = cfg.MODEL.PIXEL_OOD.METHOD
    if name not in PIXEL_OOD_METHOD_REGISTRY:
        raise ValueError(
            f"MODEL.PIXEL_OOD.METHOD={name!r} is not registered; known: {sorted(k for k, _ in PIXEL_OOD_METHOD_REGISTRY)}"
        )
    return PIXEL_OOD_METHOD_REGISTRY.get(name)(cfg, sem_seg_head)
