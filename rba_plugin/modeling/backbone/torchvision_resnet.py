"""RAML's ResNet backbone: torchvision's ResNet as a Detectron2 backbone.

RAML (czifan/RAML @ 670be90, ``incremental/network/backbone/resnet.py`` and
``incremental/network/modeling.py::_segm_resnet``, from VainF's DeepLabV3Plus-Pytorch) uses a
verbatim copy of torchvision's ResNet (v1.5: the stride on the 3x3 convolution of each
bottleneck), built with ``replace_stride_with_dilation=[False, False, True]`` for output stride 16
(``[False, True, True]`` for 8) and wrapped in an ``IntermediateLayerGetter`` that returns
``layer1`` and ``layer4`` and drops ``avgpool`` / ``fc``. This module builds the network with
torchvision itself rather than a copy: torchvision gives the same keys and the same dilation
pattern, including the first block of a dilated stage keeping the previous dilation
(torchvision's ``previous_dilation``: at output stride 16 the first block of ``layer4`` has
dilation 1 and blocks 2-3 dilation 2).

State-dict keys are exactly the official ``backbone.*`` keys without ``backbone.``
(``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``, ``layer4.0.downsample.0.weight``,
...), which are also the keys of torchvision's ImageNet checkpoints minus ``fc.*``.
"""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Sequence

import torch
import torchvision
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import register_config_group

__all__ = ["TorchvisionResNet", "build_torchvision_resnet_backbone", "add_torchvision_resnet_config"]


@register_config_group
def add_torchvision_resnet_config(cfg: CfgNode) -> None:
    """``MODEL.TORCHVISION_RESNET``: the torchvision-layout ResNet of RAML (VainF's DeepLabV3+)."""
    cfg.MODEL.TORCHVISION_RESNET = CfgNode()
    cfg.MODEL.TORCHVISION_RESNET.DEPTH = 101  # 50, 101 or 152
    cfg.MODEL.TORCHVISION_RESNET.OUTPUT_STRIDE = 16  # 8, 16 (RAML's --output_stride default) or 32
    cfg.MODEL.TORCHVISION_RESNET.OUT_FEATURES = ["layer1", "layer4"]  # among layer1 ... layer4
    cfg.MODEL.TORCHVISION_RESNET.NORM = "BN"  # "BN" or "SyncBN"
    # BatchNorm momentum of the trunk (RAML / VainF main.py: utils.set_bn_momentum(backbone, 0.01)).
    cfg.MODEL.TORCHVISION_RESNET.BN_MOMENTUM = 0.1

_STAGES = ("layer1", "layer2", "layer3", "layer4")
_DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


class TorchvisionResNet(Backbone):
    """torchvision ResNet-50/101/152 trunk (stem + ``layer1`` ... ``layer4``) as a Backbone.

    Outputs (``forward``): the requested stages, B x C x h x w: ``layer1`` 256 ch at stride 4,
    ``layer2`` 512 ch at stride 8, ``layer3`` 1024 ch at stride min(16, output_stride),
    ``layer4`` 2048 ch at stride ``output_stride``. Downsampling rounds up (convolutions with
    padding), so any input size runs.

    Official checkpoints: RAML's model keeps this trunk as ``backbone`` (``official_key_prefix``),
    possibly wrapped in ``module.`` (DataParallel).
    """

    official_key_prefix = "backbone."
    official_key_wrappers = ("module.",)

    def __init__(
        self,
        depth: int = 101,
        output_stride: int = 16,
        out_features: Sequence[str] = ("layer1", "layer4"),
        norm: str = "BN",
        bn_momentum: float = 0.1,
    ):
        """
        Args:
            depth: 50, 101 or 152 (bottleneck ResNets).
            output_stride: 32, 16 or 8; the later stages are dilated instead of strided.
            out_features: stage names among ``layer1`` ... ``layer4``.
            norm: Detectron2 norm name for every BatchNorm (``"BN"`` or ``"SyncBN"``).
            bn_momentum: momentum of every BatchNorm (RAML trains with 0.01).

        Raises:
            ValueError: for an unsupported depth or output stride or an unknown stage name.
        """
        super().__init__()
        models = torchvision.models
        builders = {50: models.resnet50, 101: models.resnet101, 152: models.resnet152}
        if depth not in builders:
            raise ValueError(f"TorchvisionResNet: depth must be one of {sorted(builders)}, got {depth}")
        if output_stride not in _DILATE:
            raise ValueError(f"TorchvisionResNet: output_stride must be one of {sorted(_DILATE)}, got {output_stride}")
        unknown = [f for f in out_features if f not in _STAGES]
        if unknown or not out_features:
            raise ValueError(f"TorchvisionResNet: out_features must be among {list(_STAGES)}, got {list(out_features)}")
        net = builders[depth](
            weights=None,
            replace_stride_with_dilation=_DILATE[output_stride],
            norm_layer=partial(get_norm, norm),
        )
        # Keep the modules RAML's IntermediateLayerGetter keeps (avgpool and fc are dropped).
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        for stage in _STAGES:
            setattr(self, stage, getattr(net, stage))
        strides = [4, 8, 16, 32]
        for i, dilated in enumerate(_DILATE[output_stride]):
            if dilated:
                strides[i + 1] = strides[i]
        self._out_feature_channels = {s: 256 * 2**i for i, s in enumerate(_STAGES)}
        self._out_feature_strides = dict(zip(_STAGES, strides))
        self._out_features = list(out_features)
        self._last_stage = max(_STAGES.index(f) for f in out_features) + 1
        for module in self.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: B x 3 x H x W normalised image -> {stage: B x C x h x w}."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs: Dict[str, torch.Tensor] = {}
        for stage in _STAGES[: self._last_stage]:
            x = getattr(self, stage)(x)
            if stage in self._out_features:
                outputs[stage] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_torchvision_resnet_backbone(cfg, input_shape: ShapeSpec) -> TorchvisionResNet:
    """torchvision-layout ResNet from ``cfg.MODEL.TORCHVISION_RESNET`` (DEPTH, OUTPUT_STRIDE,
    OUT_FEATURES, NORM, BN_MOMENTUM; :func:`add_torchvision_resnet_config`).

    Raises:
        ValueError: if the input is not 3-channel (torchvision's stem is fixed to RGB).
    """
    if input_shape.channels != 3:
        raise ValueError(f"build_torchvision_resnet_backbone: expects 3 input channels, got {input_shape.channels}")
    tv = cfg.MODEL.TORCHVISION_RESNET
    out_features: List[str] = list(tv.OUT_FEATURES)
    return TorchvisionResNet(depth=tv.DEPTH, output_stride=tv.OUTPUT_STRIDE, out_features=out_features, norm=tv.NORM,
                             bn_momentum=tv.BN_MOMENTUM)
