"""RPL (Residual Pattern Learning, Liu et al., ICCV 2023) with CoroCL, on a per-pixel head.

Architecture (paper Eq. 3 and the official code): a residual block (an ASPP on the backbone's
coarsest feature, reduced to 256 channels, upsampled to the decoder's finest stride, 1x1
expanded to the decoder input's width) is added to the decoder input; the frozen classification
block then gives the RPL logits. The whole segmentation network is frozen, so the closed-set
prediction (the frozen path without the residual) is the base model's. A 1x1 projector on the
upsampled 256-channel map gives CoroCL's pixel embeddings. The block's structure follows the
network (``MODEL.RPL.RESIDUAL_BLOCK``, :mod:`.rpl_blocks`): the official ``ResidualAnomalyBlock``
on WideResNet-38 (keys ``ood_method.residual_block.*`` = the official ``residual_block.*``), the
``ResidualPatternBlock`` on Detectron2's DeepLabV3+.

Config group ``MODEL.RPL``; loss terms ``RPLInlierLoss``, ``RPLPositiveEnergy`` and (with
COROCL_WEIGHT > 0) ``CoroCLLoss``, in :mod:`rba_plugin.modeling.loss_terms.rpl`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from detectron2.config import CfgNode, configurable
from detectron2.utils import comm
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import declare_key, register_config_group
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod
from .rpl_blocks import RPLResidualBlock, build_residual_block

__all__ = ["RPL", "add_rpl_config", "downsample_labels", "every_process_has"]


@register_config_group
def add_rpl_config(cfg: CfgNode) -> None:
    """RPL + CoroCL (Liu et al., ICCV 2023)."""
    cfg.MODEL.RPL = CfgNode()
    # "official": RPL's code (entropies clamped at 1e-7; CoroCL only when every process holds >= 2
    # images with outliers, on those images and their raw outlier images, one sample count for
    # the four pools, the residual's BatchNorm over the city and raw images together); "paper":
    # exact entropies, CoroCL on every image with each pool sampled on its own.
    # README: "Losses: official code and papers".
    cfg.MODEL.RPL.FORM = "official"
    # The residual block's structure (RPL_RESIDUAL_BLOCK_REGISTRY): "ResidualAnomalyBlock" (the
    # official block of the WideResNet-38 DeepWV3Plus, official keys) or "ResidualPatternBlock"
    # (on Detectron2's DeepLabV3+ head).
    cfg.MODEL.RPL.RESIDUAL_BLOCK = "ResidualAnomalyBlock"
    cfg.MODEL.RPL.ENERGY_WEIGHT = 0.05  # alpha of Eq. 4
    cfg.MODEL.RPL.ENTROPY_T = 1.0  # t of the dis-similarity term of Eq. 5
    # Inlier targets of Eq. 5: "pseudo" = argmax of the frozen model (paper and code), "gt".
    cfg.MODEL.RPL.INLIER_TARGET = "pseudo"
    declare_key("MODEL.RPL.INLIER_TARGET", choices=("pseudo", "gt"))
    # Initialise the residual ASPP from the head's trained ASPP when a checkpoint lacks it
    # (official code); False keeps the fresh initialisation.
    cfg.MODEL.RPL.INIT_FROM_HEAD_ASPP = True
    cfg.MODEL.RPL.COROCL_WEIGHT = 1.0  # 0 disables CoroCL (plain RPL)
    cfg.MODEL.RPL.COROCL_TAU = 0.1
    cfg.MODEL.RPL.COROCL_MAX_VIEWS = 512  # pixels sampled per set
    cfg.MODEL.RPL.EXPAND_LR_MULT = 10.0  # official code: 10x lr on the expand conv (atten_aspp_final)
    cfg.MODEL.RPL.PROJ_DIM = 304  # projector output width (official: the decoder input width)
    # CoroCL's contrastive set also uses raw outlier-pool images (training input "outlier_image",
    # labelled by "outlier_sem_seg": OOD_LABEL on the object); the official code also uses the
    # raw image's background as "inlier" context.
    cfg.MODEL.RPL.COROCL_OUTLIER_BG_AS_INLIER = True


def downsample_labels(labels: Tensor, size) -> Tensor:
    """N x H x W labels -> N x h x w by nearest-neighbour sampling."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def every_process_has(count: int, minimum: int, device) -> bool:
    """Whether ``count >= minimum`` on every process (an all-reduce of the minimum; RPL's
    ``trainer.py`` gathers the counts for its CoroCL gate)."""
    if comm.get_world_size() == 1 or not dist.is_initialized():
        return count >= minimum
    value = torch.tensor([count], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item()) >= minimum


@PIXEL_OOD_METHOD_REGISTRY.register()
class RPL(PixelOODMethod):
    """RPL + CoroCL. Trains only ``ood_method.residual_block``; everything else is frozen (eval
    mode), as the official trainer (``rpl_corocl.code/engine/trainer.py`` lines 126-135).

    Outputs: training ``closed_set_logits`` and ``rpl_logits`` (N x C x H x W) and, with CoroCL,
    ``corocl_embeddings`` / ``corocl_labels`` at the decoder's stride and, when the batch holds
    both inlier and outlier pixels there, ``corocl_outlier_embeddings`` / ``corocl_outlier_labels``
    of the raw outlier images (extra input ``outlier_image``, centre-cropped / padded to the city
    crop as the official code does).
    Inference: ``sem_seg`` = the closed-set logits, ``class_scores`` = the RPL logits (default
    score: their energy, smoothed 7x7, as the official test code).

    Official form (``MODEL.RPL.FORM``, RPL's ``trainer.py``): CoroCL runs only when every process
    holds at least 2 images with outlier pixels; then the raw outlier images go through the
    residual block together with the city images (its BatchNorm normalises over both, which
    changes the RPL logits too), and CoroCL reads only the images with outliers and the raw
    images at the same batch positions. Paper form: separate passes, every image.
    """

    default_scores = ("energy",)
    default_smoothing_kernel = 7
    training_outputs = ("closed_set_logits", "rpl_logits", "corocl_embeddings", "corocl_labels",
                        "corocl_outlier_embeddings", "corocl_outlier_labels")
    # The official checkpoints keep the block as "residual_block" at the top level.
    official_key_prefix = ""

    @configurable
    def __init__(
        self,
        *,
        residual_block: RPLResidualBlock,
        aspp_feature: str,
        ood_label: int,
        ignore_label: int,
        corocl: bool = True,
        init_from_head_aspp: bool = True,
        expand_lr_factor: float = 10.0,
        form: str = "official",
    ):
        super().__init__()
        if form not in ("official", "paper"):
            raise ValueError(f"MODEL.RPL.FORM must be one of ('official', 'paper'), got {form!r}")
        if corocl and not residual_block.has_projector:
            raise ValueError("MODEL.RPL.COROCL_WEIGHT > 0 needs MODEL.RPL.PROJ_DIM > 0")
        self.residual_block = residual_block
        self.aspp_feature = aspp_feature
        self.ood_label = ood_label
        self.ignore_label = ignore_label
        self.corocl = corocl
        self.init_from_head_aspp = init_from_head_aspp
        self.expand_lr_factor = expand_lr_factor
        self.form = form
        self.extra_inputs = ("outlier_image",) if corocl else ()

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        rpl = cfg.MODEL.RPL
        corocl = rpl.COROCL_WEIGHT > 0
        return {
            "residual_block": build_residual_block(cfg, sem_seg_head),
            "aspp_feature": sem_seg_head.coarse_feature,
            "ood_label": cfg.INPUT.OOD_LABEL,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "corocl": corocl,
            "init_from_head_aspp": rpl.INIT_FROM_HEAD_ASPP,
            "expand_lr_factor": rpl.EXPAND_LR_MULT,
            "form": rpl.FORM,
        }

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        names = ["RPLInlierLoss", "RPLPositiveEnergy"]
        if cfg.MODEL.RPL.COROCL_WEIGHT > 0:
            names.append("CoroCLLoss")
        return names

    def trainable_prefixes(self) -> List[str]:
        return ["ood_method.residual_block"]

    def lr_factors(self) -> Dict[str, float]:
        return {f"ood_method.residual_block.{self.residual_block.expand_prefix}": self.expand_lr_factor}

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> Optional[List[str]]:
        # A closed-set checkpoint has no residual block: start its ASPP (and reduction) as copies
        # of the trained head's (official code). Checkpoints of a trained RPL carry their own.
        if not self.init_from_head_aspp:
            return None
        notes = []
        for block_part, head_part in self.residual_block.head_copies().items():
            src, dst = f"{head_prefix}{head_part}.", f"{prefix}residual_block.{block_part}."
            if any(k.startswith(dst) for k in state_dict):
                continue
            copied = [k for k in state_dict if k.startswith(src)]
            for key in copied:
                state_dict[dst + key[len(src):]] = state_dict[key].clone()
            if copied:
                notes.append(f"RPL's residual block: {block_part} initialised as a copy of the head's {head_part}")
        return notes

    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        size = dec_in.shape[-2:]
        raw = self._official_raw_images(head, features, size, targets, extras)
        if raw is not None:
            # One pass over city and raw images: the residual's BatchNorm sees both (official).
            batch = dec_in.shape[0]
            both = torch.cat([features[self.aspp_feature], raw.features[self.aspp_feature]])
            residual, hidden = self.residual_block(both, size)
            residual, hidden, raw_hidden = residual[:batch], hidden[:batch], hidden[batch:]
        else:
            residual, hidden = self.residual_block(features[self.aspp_feature], size)
        with torch.no_grad():
            base = head.classify(dec_in)
        image_size = images.tensor.shape[-2:]
        rpl_logits = head.upsample(head.classify(dec_in + residual), image_size)
        if not self.training:
            return {"sem_seg": head.upsample(base, image_size), "class_scores": rpl_logits}
        outputs = {"closed_set_logits": head.upsample(base, image_size), "rpl_logits": rpl_logits}
        if not self.corocl:
            return outputs
        if self.form == "official":
            outputs.update(self._official_corocl_outputs(hidden, raw_hidden if raw is not None else None, targets))
        else:
            outputs.update(self._corocl_outputs(head, hidden, targets, extras))
        return outputs

    def _official_raw_images(self, head, features, size, targets, extras):
        """The raw outlier images when RPL's CoroCL gate passes (training, official form): every
        process holds >= 2 images with outlier pixels. None otherwise."""
        if not (self.training and self.corocl and self.form == "official") or "outlier_image" not in (extras or {}):
            return None
        has_outlier = (targets.labels == self.ood_label).flatten(1).any(1)
        if not every_process_has(int(has_outlier.sum()), 2, targets.labels.device):
            return None
        raw = extras["outlier_image"]
        raw_size = raw.features[head.finest_feature].shape[-2:]
        if raw_size != features[head.finest_feature].shape[-2:]:
            raise ValueError(
                f"RPL (MODEL.RPL.FORM official) runs the raw outlier images through the residual block "
                f"together with the crops, so they need the crops' size: features {tuple(raw_size)} vs "
                f"{tuple(features[head.finest_feature].shape[-2:])} (enable INPUT.CROP, which fits the raw "
                f"images to the crop size, or use MODEL.RPL.FORM paper)"
            )
        return raw

    def _official_corocl_outputs(self, hidden: Tensor, raw_hidden: Optional[Tensor], targets) -> Dict[str, Tensor]:
        emb = self.residual_block.embed(hidden)
        labels = downsample_labels(targets.labels, emb.shape[-2:])
        if raw_hidden is None:
            return {"corocl_embeddings": emb, "corocl_labels": labels}
        # Only the images with outliers and the raw images at the same batch positions (trainer.py).
        has_outlier = (targets.labels == self.ood_label).flatten(1).any(1)
        raw_emb = self.residual_block.embed(raw_hidden)
        raw_labels = downsample_labels(targets.extra["outlier_sem_seg"], raw_emb.shape[-2:])
        return {
            "corocl_embeddings": emb[has_outlier], "corocl_labels": labels[has_outlier],
            "corocl_outlier_embeddings": raw_emb[has_outlier], "corocl_outlier_labels": raw_labels[has_outlier],
        }

    def _corocl_outputs(self, head, hidden: Tensor, targets, extras) -> Dict[str, Tensor]:
        emb = self.residual_block.embed(hidden)
        labels = downsample_labels(targets.labels, emb.shape[-2:])
        outputs = {"corocl_embeddings": emb, "corocl_labels": labels}
        inlier = (labels != self.ood_label) & (labels != self.ignore_label)
        if "outlier_image" in extras and (labels == self.ood_label).any() and inlier.any():
            # The raw images enter the contrast only when there is one (the term's rule): their
            # pass updates the residual's BatchNorm statistics.
            raw = extras["outlier_image"]
            size = raw.features[head.finest_feature].shape[-2:]
            _, raw_hidden = self.residual_block(raw.features[self.aspp_feature], size)
            raw_emb = self.residual_block.embed(raw_hidden)
            outputs["corocl_outlier_embeddings"] = raw_emb
            outputs["corocl_outlier_labels"] = downsample_labels(targets.extra["outlier_sem_seg"], raw_emb.shape[-2:])
        return outputs
