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
Config groups ``MODEL.RAML`` and ``MODEL.MCA``; loss terms in
:mod:`rba_plugin.modeling.loss_terms.raml`.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import declare_key, register_config_group
from ..loss_terms import check_choice
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod
from .regions import grey_image, uncertainty_region_separation

__all__ = ["RAML", "masked_average", "region_dropout", "add_raml_config"]


@register_config_group
def add_raml_config(cfg: CfgNode) -> None:
    """RAML (Dong et al., IJCAI 2022): anomaly stage and MCA incremental few-shot stage."""
    cfg.MODEL.RAML = CfgNode()
    cfg.MODEL.RAML.STAGE = "anomaly"  # "anomaly" (RAML head) or "mca" (MCA fine-tuning)
    cfg.MODEL.RAML.EMBED_DIMS = [256, 128]  # the two FC layers D
    cfg.MODEL.RAML.CIRCLE_MARGIN = 0.25
    cfg.MODEL.RAML.CIRCLE_GAMMA = 8.0
    cfg.MODEL.RAML.REGION_DROP_PROB = 0.3  # random sub-regions of class masks (official DropBlock)
    cfg.MODEL.RAML.REGION_DROP_BLOCK = 3
    cfg.MODEL.RAML.REGIONS_PER_CLASS = 2
    cfg.MODEL.RAML.PROTOTYPE_MOMENTUM = 0.9  # EMA of known-class prototypes during training
    cfg.MODEL.RAML.SOBEL_THRESH = 50.0  # alpha (Lost&Found 50, Road Anomaly 150), on 0..255 grey
    cfg.MODEL.RAML.MSP_THRESH = 0.7  # beta (Lost&Found 0.7, Road Anomaly 0.4)
    cfg.MODEL.RAML.MIN_REGION_AREA = 1
    cfg.MODEL.MCA = CfgNode()
    cfg.MODEL.MCA.NUM_META = 4  # K
    cfg.MODEL.MCA.ACTIVATION = "softmax"  # paper; official code: "sigmoid"
    cfg.MODEL.MCA.ETA = 0.02
    # L_split bound: "min" gives -log(min(x, 1)) (bounded, the official code); "max" is the
    # literal Eq. 8 -log(max(x, 1)).
    cfg.MODEL.MCA.SPLIT_BOUND = "min"
    # x of L_split: "sum" = eta * sum over pixels (paper Eq. 8); "mean" = mean / eta (code).
    cfg.MODEL.MCA.SPLIT_MASS = "sum"
    cfg.MODEL.MCA.INTER_REDUCTION = "sum"  # over channel pairs i < j (paper Eq. 7); code: "mean"
    cfg.MODEL.MCA.HEAD_LR_MULT = 10.0  # label predictor 0.1 vs feature extractor 0.01 (paper)
    cfg.MODEL.MCA.INTER_WEIGHT = 0.1
    cfg.MODEL.MCA.SPLIT_WEIGHT = 0.1
    cfg.MODEL.MCA.REC_WEIGHT = 0.01
    # Known channels of C: "nll" (the first N channels are the in-distribution segmentation,
    # paper) or "dice_bce" (official code).
    cfg.MODEL.MCA.KNOWN_LOSS = "nll"
    cfg.MODEL.MCA.KAPPA = 0.1  # candidate channel threshold (paper); official code 0.15
    cfg.MODEL.MCA.THETA_NOVEL = 0.8
    cfg.MODEL.MCA.CHANNEL_THRESH = 0.5  # binarisation of meta channels
    # Eq. 13 counts a channel's pixels inside the novel mask (official code); False counts all.
    cfg.MODEL.MCA.CANDIDATE_INSIDE_MASK = True
    cfg.MODEL.MCA.MIN_REGION_AREA = 1  # official code: 250 px at stride 4
    declare_key("MODEL.RAML.STAGE", choices=("anomaly", "mca"))
    declare_key("MODEL.RAML.EMBED_DIMS", lengths=(2,), meaning="widths of the two FC layers")
    declare_key("MODEL.MCA.ACTIVATION", choices=("softmax", "sigmoid"))
    declare_key("MODEL.MCA.SPLIT_BOUND", choices=("min", "max"))
    declare_key("MODEL.MCA.SPLIT_MASS", choices=("sum", "mean"))
    declare_key("MODEL.MCA.INTER_REDUCTION", choices=("sum", "mean"))
    declare_key("MODEL.MCA.KNOWN_LOSS", choices=("nll", "dice_bce"))


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
    """Outputs. Anomaly stage, training: ``region_embeddings`` (T x E) and ``region_labels`` (T)
    of the known-class regions of the batch (the prototypes are updated here); MCA stage,
    training: ``logits`` (N x C x H x W), ``meta_channels`` (N x (C+K) x H x W in [0, 1]) and
    ``images`` (the normalised batch). Inference: ``sem_seg`` = ``class_scores`` = the closed-set
    logits and ``region_similarity`` (N x 1 x H x W, P(R) of Eq. 4, 1 outside every region);
    default score "raml" (Eq. 5).
    """

    score_inputs = ("class_scores", "region_similarity")
    default_scores = ("raml",)

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
        ignore_label: int,
        region_drop_prob: float = 0.3,
        region_drop_block: int = 3,
        regions_per_class: int = 2,
        prototype_momentum: float = 0.9,
        sobel_thresh: float = 50.0,
        msp_thresh: float = 0.7,
        min_region_area: int = 1,
        mca_activation: str = "softmax",
        head_lr_factor: float = 10.0,
    ):
        super().__init__()
        check_choice("MODEL.RAML.STAGE", stage, ("anomaly", "mca"))
        check_choice("MODEL.MCA.ACTIVATION", mca_activation, ("softmax", "sigmoid"))
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
        self.ignore_label = ignore_label
        self.region_drop_prob = region_drop_prob
        self.region_drop_block = region_drop_block
        self.regions_per_class = regions_per_class
        self.prototype_momentum = prototype_momentum
        self.sobel_thresh = sobel_thresh
        self.msp_thresh = msp_thresh
        self.min_region_area = min_region_area
        self.mca_activation = mca_activation
        self.head_lr_factor = head_lr_factor
        self.training_outputs = (("logits", "meta_channels", "images") if stage == "mca"
                                 else ("region_embeddings", "region_labels"))

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        r, m = cfg.MODEL.RAML, cfg.MODEL.MCA
        return {
            "stage": r.STAGE,
            "feature_dim": sem_seg_head.feature_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "embed_dims": r.EMBED_DIMS,
            "num_meta": m.NUM_META,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "region_drop_prob": r.REGION_DROP_PROB,
            "region_drop_block": r.REGION_DROP_BLOCK,
            "regions_per_class": r.REGIONS_PER_CLASS,
            "prototype_momentum": r.PROTOTYPE_MOMENTUM,
            "sobel_thresh": r.SOBEL_THRESH,
            "msp_thresh": r.MSP_THRESH,
            "min_region_area": r.MIN_REGION_AREA,
            "mca_activation": m.ACTIVATION,
            "head_lr_factor": m.HEAD_LR_MULT,
        }

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        if cfg.MODEL.RAML.STAGE == "mca":
            return ["SemSegLoss", "MCAKnownLoss", "MCAInterLoss", "MCASplitLoss", "MCAReconstructionLoss"]
        return ["RAMLCircleLoss"]

    def trainable_prefixes(self) -> List[str]:
        if self.stage == "anomaly":
            return ["ood_method.embed"]
        return ["backbone", "sem_seg_head", "ood_method.mca"]

    def lr_factors(self) -> Dict[str, float]:
        # The label predictor learns at 0.1 against 0.01 for the feature extractor (paper, C.1).
        if self.stage == "mca":
            return {"sem_seg_head": self.head_lr_factor, "ood_method.mca": self.head_lr_factor}
        return {}

    # ----------------------------------------------------------------------------------------
    # shared pieces
    def closed_set(self, head: nn.Module, dec_in: Tensor) -> Tuple[Tensor, Tensor]:
        """(logits N x C x h x w at the decoder stride, decoder features N x D x h x w)."""
        feats = head.decoder_features(dec_in)
        return head.predict(feats), feats

    def meta_channels(self, closed_logits: Tensor, head: nn.Module) -> Tensor:
        """MCA output C at the input size: N x (C + K) x H x W activations in [0, 1]."""
        pre = head.upsample(self.mca(closed_logits))
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
    def forward(self, head, features, dec_in, images, targets=None, extras=None) -> Dict[str, Tensor]:
        if not self.training:
            return self._inference(head, dec_in, images)
        if self.stage == "mca":
            closed, _ = self.closed_set(head, dec_in)
            return {"logits": head.upsample(closed), "meta_channels": self.meta_channels(closed, head),
                    "images": images.tensor}
        return self._region_embeddings(head, dec_in, targets.labels)

    def _region_embeddings(self, head, dec_in: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        with torch.no_grad():
            feats = head.decoder_features(dec_in)
        embeddings, region_labels = [], []
        for n in range(labels.shape[0]):
            for cls in labels[n].unique().tolist():
                if cls >= self.num_classes or cls < 0:
                    continue  # void, pasted outliers
                mask = labels[n] == cls
                regions = [mask] + [
                    region_dropout(mask, self.region_drop_prob, self.region_drop_block)
                    for _ in range(self.regions_per_class - 1)
                ]
                regions = [r for r in regions if r.any()]
                embeddings.append(self.embed_regions(feats[n], torch.stack(regions)))
                region_labels.extend([cls] * len(regions))
        if not embeddings:  # no known class in the batch: an empty (graph-connected) set
            empty = self.embed(feats.new_zeros(0, feats.shape[1]))
            return {"region_embeddings": empty, "region_labels": labels.new_zeros(0)}
        emb = torch.cat(embeddings)
        lab = torch.tensor(region_labels, device=emb.device)
        self._update_prototypes(emb.detach(), lab)
        return {"region_embeddings": emb, "region_labels": lab}

    @torch.no_grad()
    def _update_prototypes(self, embeddings: Tensor, labels: Tensor) -> None:
        z = F.normalize(embeddings, dim=1)
        for cls in labels.unique().tolist():
            mean = z[labels == cls].mean(dim=0)
            if self.prototype_valid[cls]:
                mean = self.prototype_momentum * self.prototypes[cls] + (1 - self.prototype_momentum) * mean
            self.prototypes[cls] = mean
            self.prototype_valid[cls] = True

    def _inference(self, head, dec_in: Tensor, images: ImageList) -> Dict[str, Tensor]:
        closed, feats = self.closed_set(head, dec_in)
        logits = head.upsample(closed)
        raw = self.raw_images(images)
        similarity = []
        for n in range(logits.shape[0]):
            regions = uncertainty_region_separation(
                grey_image(raw[n], self.input_format), logits[n], self.sobel_thresh, self.msp_thresh, self.min_region_area
            )
            similarity.append(self.region_similarity_map(feats[n], regions))
        return {"sem_seg": logits, "class_scores": logits, "region_similarity": torch.stack(similarity)[:, None]}

    def region_similarity_map(self, features: Tensor, regions: Tensor) -> Tensor:
        """H x W map of P(R_i) on the pixels of region R_i and 1 outside every region.

        Args:
            features: D x h x w; regions: H x W long (0 = none).
        """
        similarity = torch.ones(regions.shape, dtype=features.dtype, device=features.device)
        num = int(regions.max())
        if num > 0:
            masks = regions[None] == torch.arange(1, num + 1, device=regions.device)[:, None, None]
            p = self.region_similarity(self.embed_regions(features, masks))
            similarity = torch.cat([similarity.new_ones(1), p])[regions]
        return similarity
