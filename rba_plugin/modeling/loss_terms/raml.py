"""RAML's loss terms (config groups ``MODEL.RAML``, ``MODEL.MCA``): the circle loss on region
embeddings (anomaly stage) and the MCA losses of paper Eqs. 6-9 (MCA stage). They read the
outputs of :class:`rba_plugin.modeling.pixel.RAML`; the math is in
:mod:`rba_plugin.modeling.pixel.raml_losses`.
"""
from __future__ import annotations

from typing import Dict

import torch
from detectron2.config import configurable

from ..pixel.raml_losses import circle_loss, mca_inter_loss, mca_known_loss, mca_reconstruction_loss, mca_split_loss
from .base import LOSS_TERM_REGISTRY, LossTerm, PixelTargets, check_choice

__all__ = ["RAMLCircleLoss", "MCAKnownLoss", "MCAInterLoss", "MCASplitLoss", "MCAReconstructionLoss"]


@LOSS_TERM_REGISTRY.register()
class RAMLCircleLoss(LossTerm):
    """Circle loss (margin, gamma) over the batch's region embeddings: ``loss_raml_circle``."""

    inputs = ("region_embeddings", "region_labels")

    @configurable
    def __init__(self, *, margin: float = 0.25, gamma: float = 8.0):
        super().__init__()
        self.margin = margin
        self.gamma = gamma
        self.weights = {"loss_raml_circle": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"margin": cfg.MODEL.RAML.CIRCLE_MARGIN, "gamma": cfg.MODEL.RAML.CIRCLE_GAMMA}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        return {"loss_raml_circle": circle_loss(outputs["region_embeddings"], outputs["region_labels"],
                                                self.margin, self.gamma)}


class _MCATerm(LossTerm):
    inputs = ("meta_channels",)


@LOSS_TERM_REGISTRY.register()
class MCAKnownLoss(_MCATerm):
    """Supervision of the first C meta-channel outputs by the known-class labels (outliers void):
    ``kind`` "nll" (paper) or "dice_bce" (official code): ``loss_mca_known``."""

    @configurable
    def __init__(self, *, num_known: int, kind: str = "nll"):
        super().__init__()
        check_choice("MODEL.MCA.KNOWN_LOSS", kind, ("nll", "dice_bce"))
        self.num_known = num_known
        self.kind = kind
        self.weights = {"loss_mca_known": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"num_known": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "kind": cfg.MODEL.MCA.KNOWN_LOSS}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        loss = mca_known_loss(outputs["meta_channels"], targets.without_outliers(), self.num_known,
                              targets.ignore_label, self.kind)
        return {"loss_mca_known": loss}


@LOSS_TERM_REGISTRY.register()
class MCAInterLoss(_MCATerm):
    """``weight`` x Eq. 7, the Dice overlap of every channel pair (``reduction`` "sum" paper /
    "mean" code): ``loss_mca_inter``."""

    @configurable
    def __init__(self, *, weight: float = 0.1, reduction: str = "sum"):
        super().__init__()
        check_choice("MODEL.MCA.INTER_REDUCTION", reduction, ("sum", "mean"))
        self.weight = weight
        self.reduction = reduction
        self.weights = {"loss_mca_inter": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {"weight": cfg.MODEL.MCA.INTER_WEIGHT, "reduction": cfg.MODEL.MCA.INTER_REDUCTION}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        return {"loss_mca_inter": self.weight * mca_inter_loss(outputs["meta_channels"], self.reduction)}


@LOSS_TERM_REGISTRY.register()
class MCASplitLoss(_MCATerm):
    """``weight`` x Eq. 8 on the K meta channels (after the C known ones): ``loss_mca_split``."""

    @configurable
    def __init__(self, *, num_known: int, weight: float = 0.1, eta: float = 0.02, mass: str = "sum", bound: str = "min"):
        super().__init__()
        check_choice("MODEL.MCA.SPLIT_MASS", mass, ("sum", "mean"))
        check_choice("MODEL.MCA.SPLIT_BOUND", bound, ("min", "max"))
        self.num_known = num_known
        self.weight = weight
        self.eta = eta
        self.mass = mass
        self.bound = bound
        self.weights = {"loss_mca_split": 1.0}

    @classmethod
    def from_config(cls, cfg) -> Dict:
        m = cfg.MODEL.MCA
        return {"num_known": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "weight": m.SPLIT_WEIGHT, "eta": m.ETA,
                "mass": m.SPLIT_MASS, "bound": m.SPLIT_BOUND}

    def forward(self, outputs, targets: PixelTargets) -> Dict[str, torch.Tensor]:
        meta = outputs["meta_channels"][:, self.num_known:]
        return {"loss_mca_split": self.weight * mca_split_loss(meta, self.eta, self.mass, self.bound)}


@LOSS_TERM_REGISTRY.register()
class MCAReconstructionLoss(_MCATerm):
    """``weight`` x Eq. 9 against the normalised input ``images``: ``loss_mca_rec``."""

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
