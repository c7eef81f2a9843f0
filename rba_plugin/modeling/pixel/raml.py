"""RAML (Region-Aware Metric Learning) with MCA (Meta-Channel Aggregation).

Stages (``MODEL.RAML.STAGE``):

- ``"anomaly"``: the closed-set model is frozen; the RAML head D (two FC layers) embeds
  masked-average-pooled decoder features of regions (official: ``known`` DropBlock copies of the
  known-class masks at the feature stride) and trains with 0.1 x the circle loss plus the
  cross-entropy of a bias-free region classifier (official ``main_metric.py``; ``MODEL.RAML.FORM
  paper``: the plain circle loss alone); known-class prototypes are running means of the class
  embeddings. Inference: URS regions (Sobel or MSP uncertainty, hole filling, connected
  components) and Q = -max_l U_l * P(R), P(R) the region's highest cosine similarity to a known
  prototype (P = 1 outside every region, i.e. plain max-logit there). The same stage trains the
  metric head on an MCA-fine-tuned model for the few-shot stage.
- ``"mca"``: fine-tunes the whole closed-set model with the MCA head (1x1 conv from the C
  closed-set logits to C + K channels, sigmoid, upsampling) and its losses (Eq. 6; official
  ``CDiceLoss`` by default, ``MODEL.MCA.FORM paper`` for the equations as printed). The conv is
  the official head's ``conv3`` on RAML's network (``MODEL.MCA.CONV``, :mod:`.raml_mca`).

The paper's URS / anomaly code was never released; this is a re-derivation from the paper.
Config groups ``MODEL.RAML`` and ``MODEL.MCA``; loss terms in
:mod:`rba_plugin.modeling.loss_terms.raml`.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import declare_key, register_config_group
from ..loss_terms import check_choice
from ..loss_terms.raml import compact_labels, known_class_ids, mca_num_meta, mca_options, raml_options
from .method_base import PIXEL_OOD_METHOD_REGISTRY, PixelOODMethod
from .raml_mca import build_mca_conv
from .regions import grey_image, uncertainty_region_separation

logger = logging.getLogger(__name__)

__all__ = ["RAML", "masked_average", "region_dropout", "dropblock_keep_mask", "dropblock_regions", "add_raml_config"]


@register_config_group
def add_raml_config(cfg: CfgNode) -> None:
    """RAML (Dong et al., IJCAI 2022): anomaly (metric) stage and MCA incremental few-shot stage.

    Both stages have a ``FORM`` key, "official" (default: the official training code) or "paper";
    the keys set to None below take the value of the chosen form (tables ``RAML_FORMS`` and
    ``MCA_FORMS`` in :mod:`rba_plugin.modeling.loss_terms.raml`), any other value overrides it.
    """
    cfg.MODEL.RAML = CfgNode()
    cfg.MODEL.RAML.STAGE = "anomaly"  # "anomaly" (RAML head) or "mca" (MCA fine-tuning)
    # Loss of the anomaly stage: "official" = 0.1 x adaptive circle loss + the region classifier's
    # CE on DropBlock regions; "paper" = the plain circle loss of appendix C.4 on class masks.
    cfg.MODEL.RAML.FORM = "official"
    cfg.MODEL.RAML.CIRCLE_FORM = None  # "adaptive" (official) | "plain" (paper C.4)
    cfg.MODEL.RAML.CIRCLE_WEIGHT = None  # official 0.1, paper 1.0
    cfg.MODEL.RAML.CLASSIFIER_WEIGHT = None  # CE of the bias-free region classifier: official 1.0, paper 0
    # "dropblock": `known` DropBlock copies of the one-hot class masks at the feature stride
    # (official MetricModel); "masks": each class mask plus REGIONS_PER_CLASS - 1 dropped copies
    # at label resolution, area-pooled (the plugin's reading of the paper).
    cfg.MODEL.RAML.REGION_SAMPLING = None
    cfg.MODEL.RAML.EMBED_DIMS = [128, 128]  # the two FC layers D (official 256 -> 128 -> 128; paper N1 256, N2 128)
    cfg.MODEL.RAML.CIRCLE_MARGIN = 0.25
    cfg.MODEL.RAML.CIRCLE_GAMMA = 8.0
    cfg.MODEL.RAML.REGION_DROP_PROB = 0.3  # DropBlock of the region sampling (official 0.3, block 3)
    cfg.MODEL.RAML.REGION_DROP_BLOCK = 3
    cfg.MODEL.RAML.REGIONS_PER_CLASS = 2  # REGION_SAMPLING "masks" only
    cfg.MODEL.RAML.PROTOTYPE_MOMENTUM = 0.9  # EMA of known-class prototypes during training
    cfg.MODEL.RAML.SOBEL_THRESH = 50.0  # alpha (Lost&Found 50, Road Anomaly 150), on 0..255 grey
    cfg.MODEL.RAML.MSP_THRESH = 0.7  # beta (Lost&Found 0.7, Road Anomaly 0.4)
    cfg.MODEL.RAML.MIN_REGION_AREA = 1
    cfg.MODEL.MCA = CfgNode()
    # "official": sigmoid before the upsampling, Dice without the 2 per image, known Dice + BCE,
    # 0.1 x (known + split + inter), split on the batch mean, inter averaged over all pairs,
    # segmentation CE / batch size, 20 channels in all; "paper": Eqs. 6-9 (softmax, Dice with 2,
    # sums, known NLL, K = 4).
    cfg.MODEL.MCA.FORM = "official"
    # The MCA conv's structure (RAML_MCA_CONV_REGISTRY): "HeadMetaConv" (official: the head's
    # conv3, RAML's network) or "MethodConv" (ood_method.mca, on heads without one).
    cfg.MODEL.MCA.CONV = "HeadMetaConv"
    # K meta channels; None: 20 - known classes (official: 20 MCA channels in all) or 4 (paper).
    cfg.MODEL.MCA.NUM_META = None
    cfg.MODEL.MCA.ACTIVATION = None  # "sigmoid" (official) | "softmax" (paper)
    cfg.MODEL.MCA.ACTIVATE_BEFORE_UPSAMPLE = None  # official True (sigmoid, then bilinear)
    cfg.MODEL.MCA.DICE = None  # "official" (no factor 2, per image) | "standard" (2, batch-pooled)
    cfg.MODEL.MCA.KNOWN_LOSS = None  # "dice_bce" (official; void = negative) | "nll" (paper)
    cfg.MODEL.MCA.KNOWN_WEIGHT = None  # official 0.1, paper 1.0
    cfg.MODEL.MCA.INTER_REDUCTION = None  # "mean" over channel pairs (official) | "sum" over i < j (Eq. 7)
    # x of L_split: "batch_mean" = batch mean / ETA (official, 50 x mean); "sum" = ETA x sum over
    # the pixels of each image (Eq. 8); "mean" = per-image mean / ETA.
    cfg.MODEL.MCA.SPLIT_MASS = None
    cfg.MODEL.MCA.SPLIT_REDUCTION = None  # over meta channels: "mean" (official) | "sum" (Eq. 8)
    # L_split bound: "min" gives -log(min(x, 1)) (bounded, both forms); "max" is the literal
    # Eq. 8 -log(max(x, 1)).
    cfg.MODEL.MCA.SPLIT_BOUND = "min"
    cfg.MODEL.MCA.SEG_LOSS_REDUCTION = None  # "batch" = CE mean / batch size (official) | "mean"
    cfg.MODEL.MCA.ETA = 0.02
    cfg.MODEL.MCA.HEAD_LR_MULT = 10.0  # label predictor 0.1 vs feature extractor 0.01 (paper)
    cfg.MODEL.MCA.INTER_WEIGHT = 0.1
    cfg.MODEL.MCA.SPLIT_WEIGHT = 0.1
    cfg.MODEL.MCA.REC_WEIGHT = 0.01
    cfg.MODEL.MCA.KAPPA = 0.1  # candidate channel threshold (paper); official code 0.15
    cfg.MODEL.MCA.THETA_NOVEL = 0.8
    cfg.MODEL.MCA.CHANNEL_THRESH = 0.5  # binarisation of meta channels
    # Eq. 13 counts a channel's pixels inside the novel mask (official code); False counts all.
    cfg.MODEL.MCA.CANDIDATE_INSIDE_MASK = True
    cfg.MODEL.MCA.MIN_REGION_AREA = 1  # official code: 250 px at stride 4
    declare_key("MODEL.RAML.STAGE", choices=("anomaly", "mca"))
    declare_key("MODEL.RAML.EMBED_DIMS", lengths=(2,), meaning="widths of the two FC layers")
    declare_key("MODEL.MCA.SPLIT_BOUND", choices=("min", "max"))
    # The FORM bundles' options (None: the form's value), declared from the tables that resolve
    # them. Imported here, when get_cfg runs: loss_terms.raml imports this package's modules.
    from ..loss_terms.raml import MCA_FORMS, MCA_OPTION_CHOICES, RAML_FORMS, RAML_OPTION_CHOICES

    for group, forms, choices in (("MODEL.MCA", MCA_FORMS, MCA_OPTION_CHOICES),
                                  ("MODEL.RAML", RAML_FORMS, RAML_OPTION_CHOICES)):
        declare_key(f"{group}.FORM", choices=tuple(forms))
        for key, allowed in choices.items():
            declare_key(f"{group}.{key}", choices=(None,) + tuple(allowed))


def masked_average(features: Tensor, masks: Tensor) -> Tensor:
    """Eq. 3's pooling: sum F R / sum R for each region.

    Args:
        features: D x h x w.
        masks: T x H x W (bool or weights) at a size that is an integer multiple of h x w; it is
            area-averaged down to h x w, so a region smaller than a feature cell still counts.
    Returns:
        T x D (zeros for empty regions).
    """
    masks = masks.to(features.dtype)
    if masks.shape[-2:] != features.shape[-2:]:
        masks = F.adaptive_avg_pool2d(masks[None], features.shape[-2:])[0]
    weights = masks.flatten(1)
    total = weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return (weights @ features.flatten(1).t()) / total


def dropblock_keep_mask(
    batch: int, height: int, width: int, drop_prob: float, block_size: int,
    generator: Optional[torch.Generator] = None, device=None,
) -> Tensor:
    """The keep mask of DropBlock2D (Ghiasi et al. 2018) as RAML's ``MetricModel`` uses it
    (package ``dropblock`` 0.3.0, ``DropBlock2D.forward``).

    Seeds are drawn per image and pixel, ``rand(batch, height, width) < drop_prob / block_size^2``
    (on the CPU, from ``generator`` or torch's global generator, as the package draws them); every
    seed drops the ``block_size`` x ``block_size`` block centred on it (a stride-1 max-pool with
    padding ``block_size // 2``, the last row and column cut for an even size). The mask is shared
    by all channels of an image. DropBlock then rescales its output by numel / sum(mask); that
    factor cancels in the masked averages RAML takes (and divides by zero when every cell is
    dropped), so it is not part of the mask.

    Returns:
        batch x height x width float in {0, 1} (1 = kept), on ``device``.
    """
    gamma = drop_prob / (block_size**2)
    seeds = (torch.rand(batch, height, width, generator=generator) < gamma).float()
    block = F.max_pool2d(seeds[:, None], kernel_size=block_size, stride=1, padding=block_size // 2)
    if block_size % 2 == 0:
        block = block[:, :, :-1, :-1]
    return (1.0 - block[:, 0]).to(device if device is not None else seeds.device)


def dropblock_regions(
    features: Tensor, labels: Tensor, num_known: int, drop_prob: float = 0.3, block_size: int = 3,
    repeats: Optional[int] = None, generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Region features of RAML's metric stage (official ``MetricModel.forward``,
    ``main_metric.py:792-814``).

    The one-hot masks of the known classes, nearest-downsampled to the feature size, go through
    ``repeats`` (default ``num_known``) independent DropBlock draws (:func:`dropblock_keep_mask`);
    for every draw r, class c and image b (in that order) whose dropped mask is non-empty, the
    region feature is the mean of the features over the mask.

    Args:
        features: N x D x h x w.
        labels: N x H x W long, known classes as 0..num_known-1, anything else (void, held-out
            classes, outliers) a pixel of no known class; H x W an integer multiple of h x w.
    Returns:
        (T x D region features, T long labels in [0, num_known)), T <= repeats * num_known * N.
    """
    n, d, h, w = features.shape
    small = F.interpolate(labels[:, None].to(features.dtype), size=(h, w), mode="nearest")[:, 0].long()
    valid = (small >= 0) & (small < num_known)
    onehot = F.one_hot(torch.where(valid, small, 0), max(num_known, 1)).permute(0, 3, 1, 2)[:, :num_known]
    onehot = onehot.to(features.dtype) * valid[:, None].to(features.dtype)
    flat = features.flatten(2)  # N x D x hw
    regions, region_labels = [], []
    for _ in range(num_known if repeats is None else repeats):
        keep = dropblock_keep_mask(n, h, w, drop_prob, block_size, generator, features.device)
        masks = (onehot * keep[:, None]).flatten(2)  # N x C x hw
        sums = torch.einsum("nch,ndh->cnd", masks, flat)  # C x N x D
        counts = masks.sum(dim=2).t()  # C x N
        kept = counts != 0
        regions.append(sums[kept] / counts[kept][:, None])
        region_labels.append(torch.nonzero(kept)[:, 0])
    if not regions:
        return features.new_zeros(0, d), labels.new_zeros(0)
    return torch.cat(regions), torch.cat(region_labels).to(labels.device)


def region_dropout(mask: Tensor, drop_prob: float, block_size: int, generator=None) -> Tensor:
    """A random sub-region of ``mask`` (H x W bool): blocks of ``block_size`` dropped with
    per-pixel seed probability ``drop_prob / block_size^2`` (DropBlock's rate)."""
    keep = dropblock_keep_mask(1, mask.shape[0], mask.shape[1], drop_prob, block_size, generator, mask.device)[0]
    return mask & (keep > 0)


class RegionEmbedding(nn.Module):
    """D of Eq. 3: two fully connected layers, in -> dims[0] -> ReLU -> dims[1] (the official
    ``MetricModel.model``: Linear 256 -> 128, ReLU, Linear 128 -> 128)."""

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
    """Outputs. Anomaly stage, training: ``region_embeddings`` (T x E, unnormalised),
    ``region_logits`` (T x known, the bias-free region classifier) and ``region_labels`` (T,
    indices into the known classes) of the batch's regions (the prototypes are updated here);
    MCA stage, training: ``logits`` (N x C x H x W), ``meta_channels`` (N x (known + K) x H x W in
    [0, 1]: the known classes in train-id order, then the K meta channels) and ``images`` (the
    normalised batch). Inference: ``sem_seg`` = ``class_scores`` = the closed-set logits and
    ``region_similarity`` (N x 1 x H x W, P(R) of Eq. 4, 1 outside every region); default score
    "raml" (Eq. 5).

    The known classes are the train ids minus ``MODEL.PIXEL_OOD.HELD_OUT_CLASSES``. The MCA conv
    maps the C closed-set logits to C + K channels (checkpoint layout); the channels of held-out
    classes are left out of ``meta_channels`` and of every loss, so the losses see the official
    known + K channels.
    """

    score_inputs = ("class_scores", "region_similarity")
    default_scores = ("raml",)
    not_exportable = (
        "its inference separates regions (uncertainty_region_separation) by filling holes and labelling "
        "connected components with scipy.ndimage on the host, and pools a data-dependent number of regions; "
        "a traced graph can hold neither"
    )
    # The official stage-3 checkpoint (main_metric.py save_ckpt) keeps the metric head apart, as
    # "metric_model": MetricModel.model (Linear 256 -> 128, ReLU, Linear 128 -> 128) and its
    # bias-free classifier. The prototypes have no official counterpart (the official code
    # computes class centres at test time).
    official_key_prefix = {
        "embed.fc1.": "metric_model.model.0.",
        "embed.fc2.": "metric_model.model.2.",
        "classifier.": "metric_model.classifier.",
    }

    @configurable
    def __init__(
        self,
        *,
        stage: str,
        mca: nn.Module,
        feature_dim: int,
        num_classes: int,
        embed_dims: Sequence[int],
        num_meta: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str,
        ignore_label: int,
        known_ids: Optional[Sequence[int]] = None,
        region_sampling: str = "dropblock",
        region_drop_prob: float = 0.3,
        region_drop_block: int = 3,
        regions_per_class: int = 2,
        prototype_momentum: float = 0.9,
        sobel_thresh: float = 50.0,
        msp_thresh: float = 0.7,
        min_region_area: int = 1,
        mca_activation: str = "sigmoid",
        activate_before_upsample: bool = True,
        head_lr_factor: float = 10.0,
    ):
        super().__init__()
        check_choice("MODEL.RAML.STAGE", stage, ("anomaly", "mca"))
        check_choice("MODEL.MCA.ACTIVATION", mca_activation, ("softmax", "sigmoid"))
        check_choice("MODEL.RAML.REGION_SAMPLING", region_sampling, ("dropblock", "masks"))
        self.stage = stage
        self.num_classes = num_classes
        self.known_ids = list(range(num_classes)) if known_ids is None else [int(c) for c in known_ids]
        self.num_meta = num_meta
        self.embed = RegionEmbedding(feature_dim, embed_dims)
        # Official name (MetricModel.classifier): Linear(embedding -> known classes, no bias).
        self.classifier = nn.Linear(embed_dims[-1], len(self.known_ids), bias=False)
        self.mca = mca
        # MCA channels the losses and the incremental stage read: known classes, then meta.
        self.register_buffer(
            "mca_channels",
            torch.tensor(self.known_ids + list(range(num_classes, num_classes + num_meta)), dtype=torch.long),
            persistent=False,
        )
        self.register_buffer("prototypes", torch.zeros(num_classes, embed_dims[-1]))
        self.register_buffer("prototype_valid", torch.zeros(num_classes, dtype=torch.bool))
        self.pixel_mean = list(pixel_mean)
        self.pixel_std = list(pixel_std)
        self.input_format = input_format
        self.ignore_label = ignore_label
        self.region_sampling = region_sampling
        self.region_drop_prob = region_drop_prob
        self.region_drop_block = region_drop_block
        self.regions_per_class = regions_per_class
        self.prototype_momentum = prototype_momentum
        self.sobel_thresh = sobel_thresh
        self.msp_thresh = msp_thresh
        self.min_region_area = min_region_area
        self.mca_activation = mca_activation
        self.activate_before_upsample = activate_before_upsample
        self.head_lr_factor = head_lr_factor
        self.training_outputs = (("logits", "meta_channels", "images") if stage == "mca"
                                 else ("region_embeddings", "region_logits", "region_labels"))

    @classmethod
    def from_config(cls, cfg, sem_seg_head) -> Dict:
        r, m = cfg.MODEL.RAML, cfg.MODEL.MCA
        mca, metric = mca_options(cfg), raml_options(cfg)
        return {
            "stage": r.STAGE,
            "mca": build_mca_conv(cfg, sem_seg_head),
            "feature_dim": sem_seg_head.feature_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "known_ids": known_class_ids(cfg),
            "embed_dims": r.EMBED_DIMS,
            "num_meta": mca_num_meta(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "region_sampling": metric["REGION_SAMPLING"],
            "region_drop_prob": r.REGION_DROP_PROB,
            "region_drop_block": r.REGION_DROP_BLOCK,
            "regions_per_class": r.REGIONS_PER_CLASS,
            "prototype_momentum": r.PROTOTYPE_MOMENTUM,
            "sobel_thresh": r.SOBEL_THRESH,
            "msp_thresh": r.MSP_THRESH,
            "min_region_area": r.MIN_REGION_AREA,
            "mca_activation": mca["ACTIVATION"],
            "activate_before_upsample": bool(mca["ACTIVATE_BEFORE_UPSAMPLE"]),
            "head_lr_factor": m.HEAD_LR_MULT,
        }

    @classmethod
    def loss_term_names(cls, cfg) -> List[str]:
        if cfg.MODEL.RAML.STAGE == "mca":
            return ["RAMLSegLoss", "MCAKnownLoss", "MCAInterLoss", "MCASplitLoss", "MCAReconstructionLoss"]
        # The paper form has no classifier term (weight 0): leave it out rather than log a zero.
        return ["RAMLCircleLoss"] + (["RAMLClassifierLoss"] if raml_options(cfg)["CLASSIFIER_WEIGHT"] > 0 else [])

    @property
    def num_known(self) -> int:
        """Number of known classes = known channels at the start of ``meta_channels``."""
        return len(self.known_ids)

    def trainable_prefixes(self) -> List[str]:
        if self.stage == "anomaly":
            # The official metric stage optimises MetricModel: the MLP and the classifier.
            return ["ood_method.embed", "ood_method.classifier"]
        return ["backbone", "sem_seg_head"] + self.mca.trainable_prefixes("ood_method.mca")

    def lr_factors(self) -> Dict[str, float]:
        # The label predictor learns at 0.1 against 0.01 for the feature extractor (paper, C.1;
        # official main.py:610-613).
        if self.stage == "mca":
            return {"sem_seg_head": self.head_lr_factor, "ood_method.mca": self.head_lr_factor}
        return {}

    def fill_missing_state(self, state_dict: dict, prefix: str, head_prefix: str) -> None:
        # Checkpoints of this plugin from before the region classifier existed carry a trained
        # embedding head but no classifier; it serves training only, so such a checkpoint loads
        # with the classifier as initialised (eval-only loads would otherwise refuse it).
        key = prefix + "classifier.weight"
        if key not in state_dict and any(k.startswith(prefix + "embed.") for k in state_dict):
            state_dict[key] = self.classifier.weight.detach().clone()
        # The official metric head comes without prototypes: they start empty (P(R) = 1, so the
        # raml score is max-logit until a training run of this stage fills them).
        if prefix + "prototypes" not in state_dict and any(k.startswith(prefix + "embed.") for k in state_dict):
            logger.warning("RAML: the checkpoint has a metric head but no known-class prototypes; they start empty "
                           "(the raml score then equals max-logit)")
            state_dict[prefix + "prototypes"] = torch.zeros_like(self.prototypes)
            state_dict[prefix + "prototype_valid"] = torch.zeros_like(self.prototype_valid)

    # ----------------------------------------------------------------------------------------
    # shared pieces
    def closed_set(self, head: nn.Module, dec_in: Tensor) -> Tuple[Tensor, Tensor]:
        """(logits N x C x h x w at the decoder stride, decoder features N x D x h x w)."""
        feats = head.decoder_features(dec_in)
        return head.predict(feats), feats

    def _activate(self, x: Tensor) -> Tensor:
        return x.softmax(dim=1) if self.mca_activation == "softmax" else x.sigmoid()

    def meta_channels(self, closed_logits: Tensor, head: nn.Module, size: Optional[Sequence[int]] = None) -> Tensor:
        """MCA output C at the input size ``size``: N x (known + K) x H x W activations in [0, 1].

        Official order (``network/utils.py:58-59, 194``): sigmoid at the decoder stride, then
        bilinear upsampling (align_corners False); ``activate_before_upsample`` False upsamples
        the pre-activations first.
        """
        pre = self.mca.pre(head, closed_logits).index_select(1, self.mca_channels)
        if self.activate_before_upsample:
            return head.upsample(self._activate(pre), size)
        return self._activate(head.upsample(pre, size))

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
            size = images.tensor.shape[-2:]
            return {"logits": head.upsample(closed, size), "meta_channels": self.meta_channels(closed, head, size),
                    "images": images.tensor}
        return self._region_outputs(head, dec_in, targets.labels)

    def _region_outputs(self, head, dec_in: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        with torch.no_grad():  # the segmentation model is frozen in this stage
            feats = head.decoder_features(dec_in)
        compact = compact_labels(labels, self.known_ids, self.ignore_label)
        if self.region_sampling == "dropblock":
            pooled, region_labels = dropblock_regions(
                feats, compact, self.num_known, self.region_drop_prob, self.region_drop_block
            )
        else:
            pooled, region_labels = self._mask_regions(feats, compact)
        emb = self.embed(pooled)
        if emb.shape[0]:
            self._update_prototypes(emb.detach(), region_labels)
        return {"region_embeddings": emb, "region_logits": self.classifier(emb), "region_labels": region_labels}

    def _mask_regions(self, feats: Tensor, compact: Tensor) -> Tuple[Tensor, Tensor]:
        """Each known class mask of each image plus ``regions_per_class - 1`` DropBlock copies at
        label resolution, area-pooled onto the features (REGION_SAMPLING "masks")."""
        pooled, region_labels = [], []
        for n in range(compact.shape[0]):
            for cls in compact[n].unique().tolist():
                if cls < 0 or cls >= self.num_known:
                    continue  # void, held-out classes, pasted outliers
                mask = compact[n] == cls
                regions = [mask] + [
                    region_dropout(mask, self.region_drop_prob, self.region_drop_block)
                    for _ in range(self.regions_per_class - 1)
                ]
                regions = [r for r in regions if r.any()]
                pooled.append(masked_average(feats[n], torch.stack(regions)))
                region_labels.extend([cls] * len(regions))
        if not pooled:
            return feats.new_zeros(0, feats.shape[1]), compact.new_zeros(0)
        return torch.cat(pooled), torch.tensor(region_labels, dtype=torch.long, device=feats.device)

    @torch.no_grad()
    def _update_prototypes(self, embeddings: Tensor, labels: Tensor) -> None:
        """EMA of the normalised region embeddings per known class (labels: known indices)."""
        z = F.normalize(embeddings, dim=1)
        for idx in labels.unique().tolist():
            cls = self.known_ids[idx]
            mean = z[labels == idx].mean(dim=0)
            if self.prototype_valid[cls]:
                mean = self.prototype_momentum * self.prototypes[cls] + (1 - self.prototype_momentum) * mean
            self.prototypes[cls] = mean
            self.prototype_valid[cls] = True

    def _inference(self, head, dec_in: Tensor, images: ImageList) -> Dict[str, Tensor]:
        closed, feats = self.closed_set(head, dec_in)
        logits = head.upsample(closed, images.tensor.shape[-2:])
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
