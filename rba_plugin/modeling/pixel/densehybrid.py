"""DenseHybrid (Grcic et al., ECCV 2022) on a per-pixel head.

The network's closed-set logits give p(y|x) and, through their log-sum-exp, the unnormalised
log-density log p_hat(x); a dataset-posterior head ``logits_ood`` (BN - ReLU - 1x1 conv, 2 outputs,
on the decoder input ``dec0``) gives p(outlier|x). The official ``DeepWV3PlusTH``
(``models/deeplabv3/deeplabv3.py`` lines 211-300, matejgrcic/DenseHybrid @ 742ceab) keeps the head
as ``logits_ood``; here it is ``ood_method.logits_ood`` with the same keys (``norm.*``,
``conv.*``), so released DenseHybrid checkpoints load 1:1. The official fine-tuning trains the
whole network (``dlv3_cityscapes.py``: ``Adam(model.parameters())``, ``model.train()``).

Training: the term ``DenseHybridLoss`` (:mod:`rba_plugin.modeling.loss_terms.densehybrid`, the math
of :func:`rba_plugin.modeling.ood.losses.densehybrid_loss`), config group ``MODEL.DENSE_HYBRID``.
Inference: ``sem_seg`` = ``class_scores`` = the logits, ``outlier_logits`` = the head's; default
score ``densehybrid_official``, the official test code's formula.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from detectron2.config import CfgNode, configurable
from torch import Tensor, nn

from ...config import register_config_group
from ..transformer_decoder.outlier_head import DenseHybridOutlierHead
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod

__all__ = ["DenseHybrid", "add_dense_hybrid_config"]


@register_config_group
def add_dense_hybrid_config(cfg: CfgNode) -> None:
    """Per-pixel DenseHybrid (Grcic et al., ECCV 2022). Mask2Former's DenseHybrid keys are RbA's
    ``MODEL.MASK_FORMER.DENSE_HYBRID_*``."""
    cfg.MODEL.DENSE_HYBRID = CfgNode()
    cfg.MODEL.DENSE_HYBRID.BETA = 0.03  # beta of loss_ood (dlv3_cityscapes.py --beta)
    # Weight of the head's cross-entropy loss_th; None = 10 x BETA (the official code).
    cfg.MODEL.DENSE_HYBRID.HEAD_WEIGHT = None
    # "official": semseg_negatives_joint_th.py (head CE over every pixel, void as inlier; minus the
    # detached mean logit); "paper": head CE over non-void pixels, plus the mean logit (RbA C.3).
    cfg.MODEL.DENSE_HYBRID.FORM = "official"
    # Kernel of the head's conv: 1 (official _BNReluConv(304, 2, k=1)) or 3.
    cfg.MODEL.DENSE_HYBRID.HEAD_KERNEL = 1


@PIXEL_OOD_METHOD_REGISTRY.register()
class DenseHybrid(PixelOODMethod):
    """Outputs (training and inference): ``class_scores`` N x C x H x W and ``outlier_logits``
    N x 2 x H x W (channel 1 = outlier) at the input size; inference adds ``sem_seg`` (the
    logits). Trains the whole network, as the official fine-tuning."""

    score_inputs = ("class_scores", "outlier_logits")
    default_scores = ("densehybrid_official",)
    training_outputs = ("class_scores", "outlier_logits")
    official_key_prefix = ""

    @configurable
    def __init__(self, *, logits_ood: nn.Module):
        """
        Args:
            logits_ood: the dataset-posterior head on the decoder input (2 outputs).
        """
        super().__init__()
        self.logits_ood = logits_ood

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        return {"logits_ood": DenseHybridOutlierHead(sem_seg_head.decoder_in_channels,
                                                     kernel_size=cfg.MODEL.DENSE_HYBRID.HEAD_KERNEL)}

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        return ["DenseHybridLoss"]

    def trainable_prefixes(self) -> Optional[List[str]]:
        return None  # the whole network, as the official fine-tuning

    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        size = images.tensor.shape[-2:]
        logits = head.upsample(head.classify(dec_in), size)
        outputs = {"class_scores": logits, "outlier_logits": head.upsample(self.logits_ood(dec_in), size)}
        if not self.training:
            outputs["sem_seg"] = logits
        return outputs
