"""RAML's loss terms (config groups ``MODEL.RAML``, ``MODEL.MCA``).

Anomaly (metric) stage: the circle loss on region embeddings and the region classifier's
cross-entropy. MCA stage: the segmentation cross-entropy and the MCA losses (paper Eqs. 6-9).
They read the outputs of :class:`rba_plugin.modeling.pixel.RAML`; the math is in
:mod:`rba_plugin.modeling.pixel.raml_losses`.

Each stage has a ``FORM`` key that picks a coherent bundle of options: ``"official"`` (the
default) reproduces the official training code (czifan/RAML ``incremental/``, commit 670be907),
``"paper"`` the paper's equations (IJCAI 2022, Eqs. 6-9 and appendix C). Every option of a bundle
is also a key of its own, ``None`` by default (= what ``FORM`` says); setting it overrides the
bundle. The bundles are :data:`MCA_FORMS` and :data:`RAML_FORMS`.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from torch.nn import functional as F

from ..pixel.raml_losses import (
    circle_loss,
    mca_inter_loss,
    mca_known_loss,
    mca_reconstruction_loss,
    mca_split_loss,
    plain_circle_loss,
)
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, check_choice, resolve_form
from .sem_seg import SemSegLoss

__all__ = [
    "MCA_FORMS",
    "MCA_OPTION_CHOICES",
    "RAML_FORMS",
    "RAML_OPTION_CHOICES",
    "OFFICIAL_MCA_CHANNELS",
    "known_class_ids",
    "compact_labels",
    "mca_options",
    "mca_num_meta",
    "raml_options",
    "RAMLSegLoss",
    "RAMLCircleLoss",
    "RAMLClassifierLoss",
    "MCAKnownLoss",
    "MCAInterLoss",
    "MCASplitLoss",
    "MCAReconstructionLoss",
]

# MCA stage (MODEL.MCA.FORM). Official: main.py:148-184 (CDiceLoss, BinaryDiceLoss 107-131),
# main.py:404-412 (composition), network/utils.py:58-59 + 193-195 (sigmoid, then upsampling),
# utils/loss.py:25-41 (CE / batch size). Paper: Eqs. 6-9, appendix C.1.
MCA_FORMS: Dict[str, Dict[str, object]] = {
    "official": {
        "ACTIVATION": "sigmoid",
        "ACTIVATE_BEFORE_UPSAMPLE": True,
        "DICE": "official",  # no factor 2, per image, averaged over images
        "KNOWN_LOSS": "dice_bce",  # void / unknown pixels are negatives
        "KNOWN_WEIGHT": 0.1,  # 0.1 x (known + split + inter)
        "INTER_REDUCTION": "mean",  # over the ordered pairs i != j of all channels
        "SPLIT_MASS": "batch_mean",  # 50 x the batch mean of the channel
        "SPLIT_REDUCTION": "mean",  # over the meta channels
        "SEG_LOSS_REDUCTION": "batch",  # CE mean / per-process batch size
    },
    "paper": {
        "ACTIVATION": "softmax",
        "ACTIVATE_BEFORE_UPSAMPLE": False,  # unspecified in the paper; the plugin's former order
        "DICE": "standard",  # 2 sum(ab), pooled over the batch
        "KNOWN_LOSS": "nll",  # the first N channels are the segmentation
        "KNOWN_WEIGHT": 1.0,
        "INTER_REDUCTION": "sum",  # over i < j (Eq. 7)
        "SPLIT_MASS": "sum",  # eta x sum over the pixels of each image (Eq. 8)
        "SPLIT_REDUCTION": "sum",  # over the meta channels (Eq. 8)
        "SEG_LOSS_REDUCTION": "mean",  # L_seg of Eq. 1
    },
}
MCA_OPTION_CHOICES = {
    "ACTIVATION": ("sigmoid", "softmax"),
    "ACTIVATE_BEFORE_UPSAMPLE": (True, False),
    "DICE": ("official", "standard"),
    "KNOWN_LOSS": ("dice_bce", "nll"),
    "INTER_REDUCTION": ("mean", "sum"),
    "SPLIT_MASS": ("batch_mean", "sum", "mean"),
    "SPLIT_REDUCTION": ("mean", "sum"),
    "SEG_LOSS_REDUCTION": ("batch", "mean"),
}
# The official MCA conv has 20 output channels whatever the setting (network/utils.py:28-30):
# the known classes followed by 20 - known meta channels. The paper sets K = 4 (appendix C.1).
OFFICIAL_MCA_CHANNELS = 20
PAPER_NUM_META = 4

# Anomaly (metric) stage (MODEL.RAML.FORM). Official: main_metric.py:709-745 (0.1 x circle +
# classifier CE), MetricModel 780-819 (DropBlock regions, bias-free classifier), circle 28-59.
# Paper: appendix C.4 (plain circle loss), C.1.
RAML_FORMS: Dict[str, Dict[str, object]] = {
    "official": {
        "CIRCLE_FORM": "adaptive",
        "CIRCLE_WEIGHT": 0.1,
        "CLASSIFIER_WEIGHT": 1.0,
        "REGION_SAMPLING": "dropblock",
    },
    "paper": {"CIRCLE_FORM": "plain", "CIRCLE_WEIGHT": 1.0, "CLASSIFIER_WEIGHT": 0.0, "REGION_SAMPLING": "masks"},
}
RAML_OPTION_CHOICES = {"CIRCLE_FORM": ("adaptive", "plain"), "REGION_SAMPLING": ("dropblock", "masks")}


def _resolve(group, group_key: str, forms, choices) -> Dict[str, object]:
    options = resolve_form(group, group_key, forms)
    for key, allowed in choices.items():
        check_choice(f"{group_key}.{key}", options[key], allowed)
    for key, value in options.items():
        if key.endswith("_WEIGHT") and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{group_key}.{key} must be a number >= 0, got {value!r}")
    return options


def mca_options(cfg) -> Dict[str, object]:
    """The MCA stage's options: ``MODEL.MCA.FORM``'s bundle with the keys that are set.

    Raises:
        ValueError: a FORM or an option outside its allowed values (naming the key).
    """
    return _resolve(cfg.MODEL.MCA, "MODEL.MCA", MCA_FORMS, MCA_OPTION_CHOICES)


def raml_options(cfg) -> Dict[str, object]:
    """The anomaly (metric) stage's options: ``MODEL.RAML.FORM``'s bundle with the keys that are set."""
    return _resolve(cfg.MODEL.RAML, "MODEL.RAML", RAML_FORMS, RAML_OPTION_CHOICES)


def known_class_ids(cfg) -> List[int]:
    """Train ids of the known classes: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` minus
    ``MODEL.PIXEL_OOD.HELD_OUT_CLASSES``, in order. The official code re-indexes them
    consecutively (``encode_target``); :func:`compact_labels` does the same."""
    held_out = {int(c) for c in cfg.MODEL.PIXEL_OOD.HELD_OUT_CLASSES}
    return [c for c in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES) if c not in held_out]


def mca_num_meta(cfg) -> int:
    """K, the number of meta channels: ``MODEL.MCA.NUM_META``, or when it is None, 20 minus the
    number of known classes (official FORM) resp. 4 (paper FORM).

    Raises:
        ValueError: K < 1 (naming MODEL.MCA.NUM_META).
    """
    given = cfg.MODEL.MCA.NUM_META
    known = len(known_class_ids(cfg))
    if given is None:
        check_choice("MODEL.MCA.FORM", cfg.MODEL.MCA.FORM, tuple(MCA_FORMS))
        num = OFFICIAL_MCA_CHANNELS - known if cfg.MODEL.MCA.FORM == "official" else PAPER_NUM_META
        if num < 1:
            raise ValueError(
                f"MODEL.MCA.NUM_META None means {OFFICIAL_MCA_CHANNELS} - {known} known classes = {num} meta channels "
                f"under MODEL.MCA.FORM 'official'; set MODEL.MCA.NUM_META to an integer >= 1"
            )
        return num
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise ValueError(f"MODEL.MCA.NUM_META must be None or an integer >= 1, got {given!r}")
    return given


def compact_labels(labels: torch.Tensor, known_ids: Sequence[int], ignore_label: int) -> torch.Tensor:
    """Train ids -> indices into ``known_ids`` (0..len-1); every other value (held-out classes,
    pasted outliers, void) becomes ``ignore_label``. A new tensor; ``labels`` is not modified."""
    size = max(int(labels.max()) + 1 if labels.numel() else 0, ignore_label + 1, max(known_ids, default=0) + 1)
    lut = torch.full((size,), ignore_label, dtype=labels.dtype, device=labels.device)
    lut[torch.as_tensor(list(known_ids), dtype=torch.long, device=labels.device)] = torch.arange(
        len(known_ids), dtype=labels.dtype, device=labels.device
    )
    return lut[labels]


# ------------------------------------------------------------------------------------------------
# segmentation loss of the MCA stage


@LOSS_TERM_REGISTRY.register()
class RAMLSegLoss(SemSegLoss):
    """``SemSegLoss`` as RAML's trainer computes it: with ``reduction`` "batch" the cross-entropy
    mean is divided by the per-process batch size N (official ``utils/loss.py:25-41``
    ``CrossEntropyLoss`` returns ``CE / n``); "mean" is the plain mean. ``loss_sem_seg``."""

    @configurable
    def __init__(self, *, reduction: str = "batch", **kwargs):
        super().__init__(**kwargs)
        check_choice("MODEL.MCA.SEG_LOSS_REDUCTION", reduction, ("batch", "mean"))
        self.reduction = reduction

    @classmethod
    def from_config(cls, cfg) -> Dict:
        args = SemSegLoss.from_config(cfg)
        args["reduction"] = mca_options(cfg)["SEG_LOSS_REDUCTION"]
        return args

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        loss = super().forward(outputs, targets)["loss_sem_seg"]
        if self.reduction == "batch":
            loss = loss / outputs["logits"].shape[0]
        return {"loss_sem_seg": loss}


# ------------------------------------------------------------------------------------------------
# anomaly (metric) stage


@LOSS_TERM_REGISTRY.register()
class RAMLCircleLoss(LossTerm):
    """``weight`` x the circle loss (margin m, gamma) over the batch's region embeddings,
    L2-normalised: ``form`` "adaptive" (official, :func:`circle_loss`) or "plain" (paper C.4,
    :func:`plain_circle_loss`): ``loss_raml_circle``."""

    inputs = ("region_embeddings", "region_labels")

    @configurable
    def __init__(self, *, margin: float = 0.25, gamma: float = 8.0, weight: float = 0.1, form: str = "adaptive"):
        super().__init__()
        check_choice("MODEL.RAML.CIRCLE_FORM", form, ("adaptive", "plain"))
        self.margin = margin
        self.gamma = gamma
        self.weight = weight
        self.loss = circle_loss if form == "adaptive" else plain_circle_loss
        self.weights = {"loss_raml_circle": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        opts = raml_options(cfg)
        return {"margin": cfg.MODEL.RAML.CIRCLE_MARGIN, "gamma": cfg.MODEL.RAML.CIRCLE_GAMMA,
                "weight": opts["CIRCLE_WEIGHT"], "form": opts["CIRCLE_FORM"]}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        value = self.loss(outputs["region_embeddings"], outputs["region_labels"], self.margin, self.gamma)
        return {"loss_raml_circle": self.weight * value}


@LOSS_TERM_REGISTRY.register()
class RAMLClassifierLoss(LossTerm):
    """``weight`` x the cross-entropy (mean over regions) of the region classifier's
    ``region_logits`` (bias-free linear layer on the unnormalised embeddings) against the
    ``region_labels`` (official ``main_metric.py:733``): ``loss_raml_ce``. 0 without regions."""

    inputs = ("region_logits", "region_labels")

    @configurable
    def __init__(self, *, weight: float = 1.0):
        super().__init__()
        self.weight = weight
        self.weights = {"loss_raml_ce": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"weight": raml_options(cfg)["CLASSIFIER_WEIGHT"]}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        logits = outputs["region_logits"]
        if logits.shape[0] == 0:  # the official code fails on an empty batch of regions
            return {"loss_raml_ce": logits.sum() * 0.0}
        return {"loss_raml_ce": self.weight * F.cross_entropy(logits, outputs["region_labels"])}


# ------------------------------------------------------------------------------------------------
# MCA stage


class _MCATerm(LossTerm):
    inputs = ("meta_channels",)


@LOSS_TERM_REGISTRY.register()
class MCAKnownLoss(_MCATerm):
    """``weight`` x the supervision of the known channels of ``meta_channels`` by the labels
    (held-out classes, outliers and void are no known class): ``kind`` "dice_bce" (official) or
    "nll" (paper), Dice ``dice`` "official" or "standard": ``loss_mca_known``."""

    @configurable
    def __init__(self, *, known_ids: Sequence[int], kind: str = "dice_bce", dice: str = "official",
                 weight: float = 0.1):
        super().__init__()
        check_choice("MODEL.MCA.KNOWN_LOSS", kind, ("dice_bce", "nll"))
        check_choice("MODEL.MCA.DICE", dice, ("official", "standard"))
        self.known_ids = list(known_ids)
        self.kind = kind
        self.dice = dice
        self.weight = weight
        self.weights = {"loss_mca_known": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        opts = mca_options(cfg)
        return {"known_ids": known_class_ids(cfg), "kind": opts["KNOWN_LOSS"], "dice": opts["DICE"],
                "weight": opts["KNOWN_WEIGHT"]}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        compact = compact_labels(targets.labels, self.known_ids, targets.ignore_label)
        loss = mca_known_loss(outputs["meta_channels"], compact, len(self.known_ids), targets.ignore_label,
                              self.kind, self.dice)
        return {"loss_mca_known": self.weight * loss}


@LOSS_TERM_REGISTRY.register()
class MCAInterLoss(_MCATerm):
    """``weight`` x L_inter, the Dice overlap of every pair of MCA channels (``reduction`` "mean"
    official / "sum" paper; ``dice`` "official" / "standard"): ``loss_mca_inter``."""

    @configurable
    def __init__(self, *, weight: float = 0.1, reduction: str = "mean", dice: str = "official"):
        super().__init__()
        check_choice("MODEL.MCA.INTER_REDUCTION", reduction, ("mean", "sum"))
        check_choice("MODEL.MCA.DICE", dice, ("official", "standard"))
        self.weight = weight
        self.reduction = reduction
        self.dice = dice
        self.weights = {"loss_mca_inter": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        opts = mca_options(cfg)
        return {"weight": cfg.MODEL.MCA.INTER_WEIGHT, "reduction": opts["INTER_REDUCTION"], "dice": opts["DICE"]}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        loss = mca_inter_loss(outputs["meta_channels"], self.reduction, self.dice)
        return {"loss_mca_inter": self.weight * loss}


@LOSS_TERM_REGISTRY.register()
class MCASplitLoss(_MCATerm):
    """``weight`` x L_split on the meta channels (those after the ``num_known`` known ones):
    ``loss_mca_split``. See :func:`mca_split_loss` for ``mass``, ``bound`` and ``reduction``."""

    @configurable
    def __init__(self, *, num_known: int, weight: float = 0.1, eta: float = 0.02, mass: str = "batch_mean",
                 bound: str = "min", reduction: str = "mean"):
        super().__init__()
        check_choice("MODEL.MCA.SPLIT_MASS", mass, ("batch_mean", "sum", "mean"))
        check_choice("MODEL.MCA.SPLIT_BOUND", bound, ("min", "max"))
        check_choice("MODEL.MCA.SPLIT_REDUCTION", reduction, ("mean", "sum"))
        self.num_known = num_known
        self.weight = weight
        self.eta = eta
        self.mass = mass
        self.bound = bound
        self.reduction = reduction
        self.weights = {"loss_mca_split": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        m, opts = cfg.MODEL.MCA, mca_options(cfg)
        return {"num_known": len(known_class_ids(cfg)), "weight": m.SPLIT_WEIGHT, "eta": m.ETA,
                "mass": opts["SPLIT_MASS"], "bound": m.SPLIT_BOUND, "reduction": opts["SPLIT_REDUCTION"]}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        meta = outputs["meta_channels"][:, self.num_known:]
        loss = mca_split_loss(meta, self.eta, self.mass, self.bound, self.reduction)
        return {"loss_mca_split": self.weight * loss}


@LOSS_TERM_REGISTRY.register()
class MCAReconstructionLoss(_MCATerm):
    """``weight`` x L_rec (Eq. 9) against the normalised input ``images``: ``loss_mca_rec``."""

    inputs = ("meta_channels", "images")

    @configurable
    def __init__(self, *, weight: float = 0.01):
        super().__init__()
        self.weight = weight
        self.weights = {"loss_mca_rec": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"weight": cfg.MODEL.MCA.REC_WEIGHT}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        return {"loss_mca_rec": self.weight * mca_reconstruction_loss(outputs["meta_channels"], outputs["images"])}
