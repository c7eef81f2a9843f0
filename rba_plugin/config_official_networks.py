"""Config keys of the re-implemented official networks (WideResNet-38 and RAML's ResNet).

Kept apart from ``rba_plugin/config.py`` so the networks can be merged on their own: call
:func:`add_official_networks_config` after :func:`rba_plugin.config.add_rba_config` (which creates
``MODEL.WIDE_RESNET`` with RbA's STRUCTURE / DILATION / DIST_BN keys).
"""
from __future__ import annotations

from detectron2.config import CfgNode

__all__ = ["add_official_networks_config"]


def add_official_networks_config(cfg: CfgNode) -> None:
    """Add the keys the official-network backbones read, with the official defaults.

    - ``MODEL.WIDE_RESNET.OUT_FEATURES``: the WideResNet-38 module outputs to return, among
      ``mod1`` ... ``mod7``. The WRN-38 DeepLabV3+ decoder reads ``mod2`` (stride 2) and
      ``mod7`` (stride 8). The group itself is created here too if ``add_rba_config`` has not run.
    - ``MODEL.TORCHVISION_RESNET``: the torchvision-layout ResNet of RAML (VainF DeepLabV3+):
      ``DEPTH`` (50 / 101 / 152), ``OUTPUT_STRIDE`` (8 or 16; RAML uses 16), ``OUT_FEATURES``
      among ``layer1`` ... ``layer4`` and ``NORM`` ("BN" or "SyncBN").
    - ``MODEL.RAML_HEAD.META_OUTPUTS``: outputs of RAML's ``conv3`` (N known + 20 - N meta
      channels); the official code hard-codes 20.
    """
    if "WIDE_RESNET" not in cfg.MODEL:
        cfg.MODEL.WIDE_RESNET = CfgNode()
        cfg.MODEL.WIDE_RESNET.DILATION = True
        cfg.MODEL.WIDE_RESNET.DIST_BN = False
        cfg.MODEL.WIDE_RESNET.STRUCTURE = [3, 3, 6, 3, 1, 1]
    cfg.MODEL.WIDE_RESNET.OUT_FEATURES = ["mod2", "mod7"]

    cfg.MODEL.TORCHVISION_RESNET = CfgNode()
    cfg.MODEL.TORCHVISION_RESNET.DEPTH = 101
    cfg.MODEL.TORCHVISION_RESNET.OUTPUT_STRIDE = 16
    cfg.MODEL.TORCHVISION_RESNET.OUT_FEATURES = ["layer1", "layer4"]
    cfg.MODEL.TORCHVISION_RESNET.NORM = "BN"

    cfg.MODEL.RAML_HEAD = CfgNode()
    cfg.MODEL.RAML_HEAD.META_OUTPUTS = 20
