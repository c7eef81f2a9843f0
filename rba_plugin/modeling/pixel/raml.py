"""RAML (Region-Aware Metric Learning) with MCA (Meta-Channel Aggregation).

Stages (``MODEL.RAML.STAGE``):

- ``"anomaly"``: the closed-set model is frozen; the RAML head D (two FC layers) embeds
  masked-average-pooled decoder features of regions (known-class masks and random sub-regions of
  them, the official DropBlock sampling) and trains with the circle loss; known-class prototypes
  are running means of the class embeddings. Inference: URS regions (Sobel or MSP uncertainty,
  hole filling, connected components) and Q = -max_l U_l * P(R), P(R) the region's highest cosine
  similarity to a known prototype (P = 1 outside every region, i.e. plain max-logit there).
  The same stage trains the metric head on an MCA-fine-tuned model for the few-shot stage.
- ``"mca"``: fine-tunes the whole closed-set model with the MCA head (1x1 conv from the N
  closed-set logits to N + K channels) and its losses (Eq. 6).

The paper's URS / anomaly code was never released; this is a re-derivation from the paper.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from .deeplab_parts import decoder_features, decoder_input, upsample_to_input
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod
from .raml_losses import (
    circle_loss,
    mca_inter_loss,
    mca_known_loss,
    mca_reconstruction_loss,
    mca_split_loss,
)
from .regions import grey_image, uncertainty_region_separation

__all__ = ["RAML", "masked_average", "region_dropout"]


def masked_average(features: Tensor, masks: Tensor) -> Tensor:
    """Eq. 3's pooling: sum F R / sum R for each region.

    Args:
        features: D x h x w.
        masks: T x H x W (bool or weights) at a size that is an integer multiple of h x w; it is
            area-averaged down to h x w, so a region smaller than a feature cell still counts.
    Returns:
        T x D (zeros for empty regions).
    """
    masks = masks.float()
    if masks.shape[-2:] != features.shape[-2:]:
        masks = F.adaptive_avg_pool2d(masks[None], features.shape[-2:])[0]
    weights = masks.flatten(1)
    total = weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return (weights @ features.flatten(1).t()) / total


def region_dropout(mask: Tensor, drop_prob: float, block_size: int, generator=None) -> Tensor:
    """A random sub-region of ``mask`` (H x W bool): blocks of ``block_size`` dropped with
    per-pixel seed probability ``drop_prob / block_size^2`` (DropBlock's rate)."""
    gamma = drop_prob / (block_size**2)
    seeds = (torch.rand(mask.shape, generator=generator) < gamma).float().to(mask.device)
    dropped = F.max_pool2d(seeds[None, None], block_size, stride=1, padding=block_size // 2)[0, 0]
    return mask & (dropped[: mask.shape[0], : mask.shape[1]] == 0)


class RegionEmbedding(nn.Module):
    """D of Eq. 3: two fully connected layers, in -> dims[0] -> ReLU -> dims[1]."""

    def __init__(self, in_dim: int, dims: Sequence[int]):
        super().__init__()
        if len(dims) != 2:
            raise ValueError(f"MODEL.RAML.EMBED_DIMS must hold two sizes, got {list(dims)}")
        self.fc1 = nn.Linear(in_dim, dims[0])
        self.fc2 = nn.Linear(dims[0], dims[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


@PIXEL_OOD_METHOD_REGISTRY.register()
class RAML(PixelOODMethod):
    @configurable
    def __init__(
        self,
        *,
        stage: str,
        feature_dim: int,
        num_classes: int,
        embed_dims: Sequence[int],
        num_meta: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str,
        ood_label: int,
        ignore_value: int,
        circle_margin: float = 0.25,
        circle_gamma: float = 8.0,
        region_drop_prob: float = 0.3,
        region_drop_block: int = 3,
        regions_per_class: int = 2,
        prototype_momentum: float = 0.9,
        sobel_thresh: float = 50.0,
        msp_thresh: float = 0.7,
        min_region_area: int = 1,
        mca_activation: str = "softmax",
        mca_eta: float = 0.02,
        mca_split_bound: str = "min",
        mca_split_mass: str = "sum",
        mca_inter_reduction: str = "sum",
        mca_weights: Tuple[float, float, float] = (0.1, 0.1, 0.01),
        mca_known_loss: str = "nll",
    ):
        super().__init__()
        if stage not in ("anomaly", "mca"):
            raise ValueError(f"MODEL.RAML.STAGE must be 'anomaly' or 'mca', got {stage!r}")
        for key, value, allowed in (
            ("ACTIVATION", mca_activation, ("softmax", "sigmoid")),
            ("SPLIT_BOUND", mca_split_bound, ("min", "max")),
            ("SPLIT_MASS", mca_split_mass, ("sum", "mean")),
            ("INTER_REDUCTION", mca_inter_reduction, ("sum", "mean")),
            ("KNOWN_LOSS", mca_known_loss, ("nll", "dice_bce")),
        ):
            if value not in allowed:
                raise ValueError(f"MODEL.MCA.{key} must be one of {allowed}, got {value!r}")
        self.stage = stage
        self.num_classes = num_classes
        self.num_meta = num_meta
        self.embed = RegionEmbedding(feature_dim, embed_dims)
        self.mca = Conv2d(num_classes, num_classes + num_meta, kernel_size=1)
        self.register_buffer("prototypes", torch.zeros(num_classes, embed_dims[-1]))
        self.register_buffer("prototype_valid", torch.zeros(num_classes, dtype=torch.bool))
        self.pixel_mean = list(pixel_mean)
        self.pixel_std = list(pixel_std)
        self.input_format = input_format
        self.ood_label = ood_label
        self.ignore_value = ignore_value
        self.circle_margin = circle_margin
        self.circle_gamma = circle_gamma
        self.region_drop_prob = region_drop_prob
        self.region_drop_block = region_drop_block
        self.regions_per_class = regions_per_class
        self.prototype_momentum = prototype_momentum
        self.sobel_thresh = sobel_thresh
        self.msp_thresh = msp_thresh
        self.min_region_area = min_region_area
        self.mca_activation = mca_activation
        self.mca_eta = mca_eta
        self.mca_split_bound = mca_split_bound
        self.mca_split_mass = mca_split_mass
        self.mca_inter_reduction = mca_inter_reduction
        self.mca_weights = tuple(mca_weights)
        self.mca_known_loss_kind = mca_known_loss

    @classmethod
    def from_config(cls, cfg, sem_seg_head):
        r, m = cfg.MODEL.RAML, cfg.MODEL.MCA
        return {
            "stage": r.STAGE,
            "feature_dim": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "embed_dims": r.EMBED_DIMS,
            "num_meta": m.NUM_META,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "ood_label": cfg.INPUT.OOD_LABEL,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "circle_margin": r.CIRCLE_MARGIN,
            "circle_gamma": r.CIRCLE_GAMMA,
            "region_drop_prob": r.REGION_DROP_PROB,
            "region_drop_block": r.REGION_DROP_BLOCK,
            "regions_per_class": r.REGIONS_PER_CLASS,
            "prototype_momentum": r.PROTOTYPE_MOMENTUM,
            "sobel_thresh": r.SOBEL_THRESH,
            "msp_thresh": r.MSP_THRESH,
            "min_region_area": r.MIN_REGION_AREA,
            "mca_activation": m.ACTIVATION,
            "mca_eta": m.ETA,
            "mca_split_bound": m.SPLIT_BOUND,
            "mca_split_mass": m.SPLIT_MASS,
            "mca_inter_reduction": m.INTER_REDUCTION,
            "mca_weights": (m.INTER_WEIGHT, m.SPLIT_WEIGHT, m.REC_WEIGHT),
            "mca_known_loss": m.KNOWN_LOSS,
        }

    def trainable_prefixes(self, head_prefix: str = "sem_seg_head") -> List[str]:
        if self.stage == "anomaly":
            return ["ood_method.embed"]
        return ["backbone", head_prefix, "ood_method.mca"]

    # ----------------------------------------------------------------------------------------
    # shared pieces
    def closed_set(self, head: nn.Module, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """(logits N x C x h x w at the decoder stride, decoder features N x D x h x w)."""
        feats = decoder_features(head, decoder_input(head, features))
        return head.predictor(feats), feats

    def meta_channels(self, closed_logits: Tensor, head: nn.Module) -> Tensor:
        """MCA output C at the input size: N x (C + K) x H x W activations in [0, 1]."""
        pre = upsample_to_input(self.mca(closed_logits), head)
        return pre.softmax(dim=1) if self.mca_activation == "softmax" else pre.sigmoid()

    def embed_regions(self, features: Tensor, masks: Tensor) -> Tensor:
        """Region-aware embeddings (Eq. 3): D x h x w features, T x H x W masks -> T x E."""
        return self.embed(masked_average(features, masks))

    def region_similarity(self, embeddings: Tensor) -> Tensor:
        """Eq. 4: P(R) = max_l cos(f_R, f_l) over the known prototypes seen in training: T."""
        if not self.prototype_valid.any():
            return embeddings.new_ones(embeddings.shape[0])
        protos = F.normalize(self.prototypes[self.prototype_valid], dim=1)
        return (F.normalize(embeddings, dim=1) @ protos.t()).max(dim=1).values

    def raw_images(self, images: ImageList) -> Tensor:
        """Undo the normalisation: N x 3 x H x W, 0..255."""
        mean = torch.tensor(self.pixel_mean, device=images.tensor.device).view(1, -1, 1, 1)
        std = torch.tensor(self.pixel_std, device=images.tensor.device).view(1, -1, 1, 1)
        return images.tensor * std + mean

    # ----------------------------------------------------------------------------------------
    def losses(self, head, features, images, targets, batched_inputs, segmentor) -> Dict[str, Tensor]:
        if self.stage == "mca":
            return self._mca_losses(head, features, images, targets)
        return self._metric_losses(head, features, targets)

    def _metric_losses(self, head, features, targets) -> Dict[str, Tensor]:
        with torch.no_grad():
            _, feats = self.closed_set(head, features)
        embeddings, labels = [], []
        for n in range(targets.shape[0]):
            for cls in targets[n].unique().tolist():
                if cls >= self.num_classes or cls < 0:
                    continue  # void, pasted outliers
                mask = targets[n] == cls
                regions = [mask] + [
                    region_dropout(mask, self.region_drop_prob, self.region_drop_block)
                    for _ in range(self.regions_per_class - 1)
                ]
                regions = [r for r in regions if r.any()]
                embeddings.append(self.embed_regions(feats[n], torch.stack(regions)))
                labels.extend([cls] * len(regions))
        if not embeddings:
            zero = sum(p.sum() for p in self.embed.parameters()) * 0.0
            return {"loss_raml_circle": zero}
        emb = torch.cat(embeddings)
        lab = torch.tensor(labels, device=emb.device)
        self._update_prototypes(emb.detach(), lab)
        return {"loss_raml_circle": circle_loss(emb, lab, self.circle_margin, self.circle_gamma)}

    @torch.no_grad()
    def _update_prototypes(self, embeddings: Tensor, labels: Tensor) -> None:
        z = F.normalize(embeddings, dim=1)
        for cls in labels.unique().tolist():
            mean = z[labels == cls].mean(dim=0)
            if self.prototype_valid[cls]:
                mean = self.prototype_momentum * self.prototypes[cls] + (1 - self.prototype_momentum) * mean
            self.prototypes[cls] = mean
            self.prototype_valid[cls] = True

    def _mca_losses(self, head, features, images, targets) -> Dict[str, Tensor]:
        closed, _ = self.closed_set(head, features)
        seg_targets = targets.masked_fill(targets == self.ood_label, self.ignore_value)
        losses = {"loss_sem_seg": head.losses(closed, seg_targets)["loss_sem_seg"]}
        channels = self.meta_channels(closed, head)
        w_inter, w_split, w_rec = self.mca_weights
        losses["loss_mca_known"] = mca_known_loss(
            channels, seg_targets, self.num_classes, self.ignore_value, self.mca_known_loss_kind
        )
        losses["loss_mca_inter"] = w_inter * mca_inter_loss(channels, self.mca_inter_reduction)
        losses["loss_mca_split"] = w_split * mca_split_loss(
            channels[:, self.num_classes :], self.mca_eta, self.mca_split_mass, self.mca_split_bound
        )
        losses["loss_mca_rec"] = w_rec * mca_reconstruction_loss(channels, images.tensor)
        return losses

    # ----------------------------------------------------------------------------------------
    def inference(self, head: nn.Module, features: Dict[str, Tensor], images: ImageList):
        closed, feats = self.closed_set(head, features)
        logits = upsample_to_input(closed, head)
        raw = self.raw_images(images)
        scores = []
        for n in range(logits.shape[0]):
            regions = uncertainty_region_separation(
                grey_image(raw[n], self.input_format), logits[n], self.sobel_thresh, self.msp_thresh, self.min_region_area
            )
            scores.append(self.region_score(logits[n], feats[n], regions))
        return logits, torch.stack(scores), {}

    def region_score(self, logits: Tensor, features: Tensor, regions: Tensor) -> Tensor:
        """Eq. 5: Q = -max_l U_l * P(R_i) for pixels of region R_i; -max_l U_l elsewhere.

        Args:
            logits: C x H x W; features: D x h x w; regions: H x W long (0 = none).
        """
        max_logit = logits.max(dim=0).values
        similarity = torch.ones_like(max_logit)
        num = int(regions.max())
        if num > 0:
            masks = regions[None] == torch.arange(1, num + 1, device=regions.device)[:, None, None]
            p = self.region_similarity(self.embed_regions(features, masks))
            similarity = torch.cat([similarity.new_ones(1), p])[regions]
        return -max_logit * similarity
