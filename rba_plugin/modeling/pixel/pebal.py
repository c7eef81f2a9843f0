"""PEBAL (Pixel-wise Energy-biased Abstention Learning, Tian et al., ECCV 2022) on a per-pixel head.

The closed-set head gets an abstention class, a (C+1)-th logit on the same decoder features
(``MODEL.PEBAL.ABSTENTION``, :mod:`.pebal_abstention`: officially a 20th row of the head's last
conv, ``final.6``; on Detectron2's DeepLabV3+ a separate 1x1 conv); only the final
classification block trains (the head's ``classification_block`` and the abstention channel), as
the official trainer (``code/engine/trainer.py`` lines 80-85: ``branch1.final``). Loss (Eq. 2):
PAL (Eq. 3, penalty a = (-E)^2) + lambda * energy hinge (Eqs. 6-7) + beta1 * smoothness + beta2 *
sparsity (Eq. 8): the terms ``PEBALAbstention``,
``PEBALEnergyHinge``, ``PEBALSmoothness``, ``PEBALSparsity`` of
:mod:`rba_plugin.modeling.loss_terms.pebal`, config group ``MODEL.PEBAL``. Inference:
``sem_seg`` = the C inlier logits, default score their free energy (Eq. 4), smoothed 7x7.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from detectron2.config import CfgNode, configurable
from torch import Tensor, nn

from ...config import declare_key, register_config_group
from ..ood.losses import inlier_energy
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod
from .pebal_abstention import build_abstention

__all__ = ["PEBAL", "add_pebal_config"]


@register_config_group
def add_pebal_config(cfg: CfgNode) -> None:
    """PEBAL (Tian et al., ECCV 2022). README: "Losses: official code and papers"."""
    cfg.MODEL.PEBAL = CfgNode()
    # "official": PEBAL's code (losses.py, trainer.py); "paper": Eqs. 2-8 (per-pixel means).
    cfg.MODEL.PEBAL.FORM = "official"
    # The abstention channel's structure (PEBAL_ABSTENTION_REGISTRY): "PredictorRow" (official: one
    # more row of the head's last conv, PEBAL's 20-output final.6) or "SeparateConv" (a 1x1 conv
    # ood_method.abstain beside the head's predictor; a closed-set checkpoint loads unchanged).
    cfg.MODEL.PEBAL.ABSTENTION = "PredictorRow"
    # Weight of PAL's outlier pixels; None = the form's: 0.1 (code), 1 (paper).
    cfg.MODEL.PEBAL.PAL_OUTLIER_WEIGHT = None
    # lambda: official, the trainer's 0.1 on the whole energy loss (hinge and regularisers);
    # paper, the weight of the hinge.
    cfg.MODEL.PEBAL.ENERGY_WEIGHT = 0.1
    cfg.MODEL.PEBAL.M_IN = -12.0
    cfg.MODEL.PEBAL.M_OUT = -6.0
    # Smoothness / sparsity weights; None = the form's: official 3e-6 / 5e-4 (0.5 x squared
    # differences summed / L2 norm over outlier pixels, inside lambda: effectively 3e-7 / 5e-5);
    # paper beta1 = 5e-4 / beta2 = 3e-6 (|differences| / |E| over every pixel).
    cfg.MODEL.PEBAL.SMOOTH_WEIGHT = None
    cfg.MODEL.PEBAL.SPARSITY_WEIGHT = None


@PIXEL_OOD_METHOD_REGISTRY.register()
class PEBAL(PixelOODMethod):
    """Outputs: training ``logits`` (N x (C+1) x H x W, the last channel abstains) and ``energy``
    (N x H x W inlier free energy); inference ``sem_seg`` = ``class_scores`` = the C inlier logits."""

    default_scores = ("energy",)
    training_outputs = ("logits", "energy")
    default_smoothing_kernel = 7
    official_key_prefix = ""

    @configurable
    def __init__(self, *, abstain: nn.Module, num_classes: int, classification_block: List[str]):
        """
        Args:
            abstain: the abstention channel (:mod:`.pebal_abstention`).
            num_classes: C, the known classes.
            classification_block: segmentor-relative prefixes of the head's classification block.
        """
        super().__init__()
        self.abstain = abstain
        self.num_classes = num_classes
        self.classification_block = list(classification_block)

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        return {
            "abstain": build_abstention(cfg, sem_seg_head),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "classification_block": [f"sem_seg_head.{p}" for p in sem_seg_head.classification_block],
        }

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        return ["PEBALAbstention", "PEBALEnergyHinge", "PEBALSmoothness", "PEBALSparsity"]

    def trainable_prefixes(self) -> List[str]:
        return self.classification_block + self.abstain.trainable_prefixes("ood_method.abstain")

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> Optional[List[str]]:
        return self.abstain.fill_missing_state(state_dict, prefix, head_prefix)

    def logits(self, head, dec_in: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
        """N x (C+1) x H x W logits at the input size ``size``; the last channel abstains."""
        return head.upsample(self.abstain.logits(head, head.decoder_features(dec_in)), size)

    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        logits = self.logits(head, dec_in, images.tensor.shape[-2:])
        if self.training:
            return {"logits": logits, "energy": inlier_energy(logits, self.num_classes)}
        inlier = logits[:, : self.num_classes]
        return {"sem_seg": inlier, "class_scores": inlier}
