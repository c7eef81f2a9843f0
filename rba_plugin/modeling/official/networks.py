"""The four official per-pixel baseline networks composed from the plugin's Detectron2 parts.

Each network holds ``backbone`` (a registered Backbone), ``sem_seg_head`` (a registered head)
and, where the method has modules of its own, ``ood_method`` (an ``nn.ModuleDict`` named as in
the official model), so :mod:`rba_plugin.modeling.official.keys` maps an official checkpoint onto
it. ``forward`` reproduces the official forward pass and returns its outputs by name, with the
anomaly score the official test code computes:

=================  ===============================================  ==========================================
network            official model                                   outputs
=================  ===============================================  ==========================================
PEBALNetwork       PEBAL ``Network(20, wide=True)``                 logits, anomaly_score
RPLNetwork         RPL ``rpl_corocl.code`` ``Network(19)``          logits_vanilla, logits_rpl (= logits),
                                                                    proj (None in eval), anomaly_score
DenseHybridNetwork DenseHybrid ``DeepWV3PlusTH(19)``                logits, logits_ood, anomaly_score
RAMLNetwork        RAML ``deeplabv3plus_metirc_resnet101(N, 16)``   logits, meta_channels, features,
                                                                    reconstruction (no anomaly score is released)
=================  ===============================================  ==========================================

Inputs are normalised B x 3 x H x W images (ImageNet mean / std on RGB in [0, 1]), except
DenseHybrid's, which normalises inside (input in [0, 1]) as the official ``DeepWV3PlusTH``.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone, build_sem_seg_head
from torch import nn

from ..backbone.raml_resnet import build_torchvision_resnet_backbone  # noqa: F401  (registers)
from ..backbone.wider_resnet import build_wider_resnet_backbone  # noqa: F401  (registers)
from ..heads.deepwv3plus import DeepWV3PlusHead
from ..heads.raml_deeplab import RAMLDeepLabV3PlusHead, meta_reconstruction
from .densehybrid import DenseHybridOODHead, ImageNormalizer
from .keys import METHOD_PREFIX, model_to_official_state_dict, official_to_model_state_dict
from .rpl import ResidualAnomalyBlock
from .scores import densehybrid_official_score, energy_official_score

__all__ = [
    "OfficialNetwork",
    "PEBALNetwork",
    "RPLNetwork",
    "DenseHybridNetwork",
    "RAMLNetwork",
    "OFFICIAL_NETWORKS",
    "official_network_config",
    "build_official_network",
]


class OfficialNetwork(nn.Module):
    """backbone + sem_seg_head (+ ood_method) with official-checkpoint loading.

    Subclasses set ``layout`` (a name of :data:`rba_plugin.modeling.official.keys.OFFICIAL_LAYOUTS`).
    """

    layout: str = ""

    def __init__(self, backbone: nn.Module, sem_seg_head: nn.Module, ood_method: Optional[nn.ModuleDict] = None):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        if ood_method is not None:
            self.ood_method = ood_method

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
        """Load an official state dict (official key names, wrappers allowed).

        Raises:
            KeyError: if an official key has no place in this model.
            RuntimeError: from ``load_state_dict`` when ``strict`` and keys or shapes differ.
        """
        return self.load_state_dict(official_to_model_state_dict(state_dict, self.layout, METHOD_PREFIX), strict=strict)

    def official_state_dict(self, wrapper: bool = True) -> Dict[str, torch.Tensor]:
        """This model's state dict under the official key names (with the official wrapper)."""
        return model_to_official_state_dict(self.state_dict(), self.layout, METHOD_PREFIX, wrapper=wrapper)


class PEBALNetwork(OfficialNetwork):
    """PEBAL: WRN-38 DeepLabV3+ with 20 outputs (19 classes + abstention)."""

    layout = "pebal"

    def forward(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """image: normalised B x 3 x H x W -> ``logits`` B x 20 x H x W, ``anomaly_score`` B x H x W."""
        head: DeepWV3PlusHead = self.sem_seg_head
        logits = head.upsample(head.classify(head.decode(self.backbone(image))["dec0"]), image.shape[-2:])
        return {"logits": logits, "anomaly_score": energy_official_score(logits)}


class RPLNetwork(OfficialNetwork):
    """RPL(+CoroCL): the closed-set WRN-38 DeepLabV3+ plus ``ood_method.residual_block``."""

    layout = "rpl"

    def forward(self, image: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        """image: normalised B x 3 x H x W ->

        ``logits_vanilla`` (closed-set, ``final(dec0)``) and ``logits_rpl`` = ``logits``
        (``final(dec0 + residual)``), B x 19 x H x W; ``proj``, the CoroCL embedding at stride 2
        (``None`` in eval mode); ``anomaly_score`` B x H x W from the residual-path logits.
        """
        head: DeepWV3PlusHead = self.sem_seg_head
        features = self.backbone(image)
        dec0 = head.decode(features)["dec0"]
        residual, proj = self.ood_method["residual_block"](features[head.in_features[1]], dec0.shape[-2:])
        size = image.shape[-2:]
        logits_vanilla = head.upsample(head.classify(dec0), size)
        logits_rpl = head.upsample(head.classify(dec0 + residual), size)
        return {
            "logits_vanilla": logits_vanilla,
            "logits_rpl": logits_rpl,
            "logits": logits_rpl,
            "proj": proj,
            "anomaly_score": energy_official_score(logits_rpl),
        }


class DenseHybridNetwork(OfficialNetwork):
    """DenseHybrid: WRN-38 DeepLabV3+ plus ``ood_method.logits_ood`` on ``dec0``; normalises inside."""

    layout = "densehybrid"

    def __init__(self, backbone: nn.Module, sem_seg_head: nn.Module, ood_method: nn.ModuleDict):
        super().__init__(backbone, sem_seg_head, ood_method)
        self.normalizer = ImageNormalizer(scale=1.0)

    def forward(self, image: torch.Tensor, output_size: Optional[Sequence[int]] = None) -> Dict[str, torch.Tensor]:
        """image: B x 3 x H x W RGB in [0, 1] (``ToTensor`` output, *not* normalised) ->

        ``logits`` B x 19 x H' x W', ``logits_ood`` B x 2 x H' x W' and ``anomaly_score``
        B x H' x W', with (H', W') = ``output_size`` (the official ``target_size``), default (H, W).
        """
        head: DeepWV3PlusHead = self.sem_seg_head
        size = image.shape[-2:] if output_size is None else output_size
        dec0 = head.decode(self.backbone(self.normalizer(image)))["dec0"]
        logits = head.upsample(head.classify(dec0), size)
        logits_ood = head.upsample(self.ood_method["logits_ood"](dec0), size)
        return {"logits": logits, "logits_ood": logits_ood, "anomaly_score": densehybrid_official_score(logits, logits_ood)}


class RAMLNetwork(OfficialNetwork):
    """RAML: torchvision ResNet-101 (output stride 16) + RAML's DeepLabV3+ metric head."""

    layout = "raml"

    def forward(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """image: normalised B x 3 x H x W -> ``logits`` B x N x H x W, ``meta_channels``
        B x 20 x H x W in (0, 1), ``features`` B x 256 x H/4 x W/4, ``reconstruction`` B x 3 x H x W."""
        head: RAMLDeepLabV3PlusHead = self.sem_seg_head
        outputs = head.predict(self.backbone(image), image.shape[-2:])
        outputs["reconstruction"] = meta_reconstruction(outputs["meta_channels"], image)
        return outputs


# name -> (network class, backbone builder, head name, backbone features, official class count)
OFFICIAL_NETWORKS = {
    "pebal": (PEBALNetwork, "build_wider_resnet_backbone", "DeepWV3PlusHead", ["mod2", "mod7"], 20),
    "rpl_corocl": (RPLNetwork, "build_wider_resnet_backbone", "DeepWV3PlusHead", ["mod2", "mod7"], 19),
    "densehybrid": (DenseHybridNetwork, "build_wider_resnet_backbone", "DeepWV3PlusHead", ["mod2", "mod7"], 19),
    "raml": (RAMLNetwork, "build_torchvision_resnet_backbone", "RAMLDeepLabV3PlusHead", ["layer1", "layer4"], 16),
}


def official_network_config(name: str, num_classes: Optional[int] = None) -> CfgNode:
    """The plugin config that builds official network ``name`` (see :data:`OFFICIAL_NETWORKS`).

    ``num_classes`` defaults to the official count (PEBAL 20, RPL / DenseHybrid 19, RAML 16).

    Raises:
        ValueError: for an unknown network name.
    """
    from rba_plugin.config import get_cfg
    from rba_plugin.config_official_networks import add_official_networks_config

    if name not in OFFICIAL_NETWORKS:
        raise ValueError(f"unknown official network {name!r}; known: {sorted(OFFICIAL_NETWORKS)}")
    _, backbone_name, head_name, in_features, default_classes = OFFICIAL_NETWORKS[name]
    cfg = get_cfg()
    add_official_networks_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = backbone_name
    cfg.MODEL.SEM_SEG_HEAD.NAME = head_name
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = list(in_features)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = default_classes if num_classes is None else num_classes
    if backbone_name == "build_wider_resnet_backbone":
        cfg.MODEL.WIDE_RESNET.OUT_FEATURES = list(in_features)
    else:
        cfg.MODEL.TORCHVISION_RESNET.OUT_FEATURES = list(in_features)
    return cfg


def build_official_network(name: str, cfg: Optional[CfgNode] = None, num_classes: Optional[int] = None) -> OfficialNetwork:
    """Build official network ``name`` through the Detectron2 registries (randomly initialised).

    Args:
        cfg: a config from :func:`official_network_config` (possibly edited); built from
            ``name`` and ``num_classes`` when None.

    Raises:
        ValueError: for an unknown network name.
    """
    cfg = official_network_config(name, num_classes) if cfg is None else cfg
    network_cls = OFFICIAL_NETWORKS[name][0]
    backbone = build_backbone(cfg)
    head = build_sem_seg_head(cfg, backbone.output_shape())
    if name == "rpl_corocl":
        coarse = backbone.output_shape()[head.in_features[1]]
        block = ResidualAnomalyBlock(
            in_channels=coarse.channels,
            rates=head.aspp_rates,
            decoder_in_channels=head.decoder_in_channels,
            norm="SyncBN" if cfg.MODEL.WIDE_RESNET.DIST_BN else "BN",
        )
        return network_cls(backbone, head, nn.ModuleDict({"residual_block": block}))
    if name == "densehybrid":
        return network_cls(backbone, head, nn.ModuleDict({"logits_ood": DenseHybridOODHead(head.decoder_in_channels)}))
    return network_cls(backbone, head)
