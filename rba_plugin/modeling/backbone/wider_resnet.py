"""WideResNet-38 ("WiderResNetA2"), the trunk of NVIDIA's DeepWV3Plus used by PEBAL, RPL and
DenseHybrid, as a Detectron2 backbone.

Reproduces ``WiderResNetA2`` of ``code/model/wide_resnet_base.py`` (tianyu0207/PEBAL @ 0293bee),
identical to ``rpl_corocl.code/model/wide_resnet_base.py`` (yyliu01/RPL) and
``models/deeplabv3/wider_resnet.py`` (matejgrcic/DenseHybrid), all adapted from mapillary's
inplace_abn. Only the part DeepWV3Plus keeps is built: ``mod1`` ... ``mod7`` and ``pool2`` /
``pool3``; the trunk's ``bn_out`` and ImageNet classifier are dropped by DeepWV3Plus and have no
keys in its checkpoints. The official constructor's global ``nn.Dropout = nn.Dropout2d``
monkey-patch is not reproduced: the blocks of ``mod6`` / ``mod7`` use ``nn.Dropout2d`` directly,
which is what the patch made them use.

State-dict keys are exactly the official trunk keys (``mod1.conv1.weight``,
``mod2.block1.bn1.0.weight``, ``mod2.block1.convs.conv1.weight``, ``mod2.block1.proj_conv.weight``,
...), i.e. a DeepWV3Plus checkpoint's ``mod*`` keys once its wrapper prefix (``branch1.``,
``module.``) is removed: :class:`WiderResNetA2` declares ``official_key_prefix`` (its keys sit at
the top level of the official checkpoints) and the wrappers those checkpoints carry, and
:mod:`rba_plugin.modeling.official_keys` maps them when ``MODEL.WEIGHTS`` is loaded.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ...config import register_config_group

__all__ = ["IdentityResidualBlock", "WiderResNetA2", "build_wider_resnet_backbone", "add_wider_resnet_config"]


@register_config_group
def add_wider_resnet_config(cfg: CfgNode) -> None:
    """``MODEL.WIDE_RESNET.OUT_FEATURES``: the module outputs the trunk returns (``mod1`` ...
    ``mod7``; the WRN-38 DeepLabV3+ head reads ``mod2`` at stride 2 and ``mod7`` at stride 8).
    STRUCTURE, DILATION and DIST_BN are RbA's keys of the same group (``add_rba_config``)."""
    cfg.MODEL.WIDE_RESNET.OUT_FEATURES = ["mod2", "mod7"]

# (channels of the inner convolutions ..., output channels) of mod2 ... mod7. Two entries: two 3x3
# convolutions; three entries: a 1x1 - 3x3 - 1x1 bottleneck.
WIDE_RESNET_CHANNELS: Tuple[Tuple[int, ...], ...] = (
    (128, 128),
    (256, 256),
    (512, 512),
    (512, 1024),
    (512, 1024, 2048),
    (1024, 2048, 4096),
)
# Dropout2d probability in the blocks of each module (the official mod6 / mod7 values).
WIDE_RESNET_DROPOUT: Tuple[Optional[float], ...] = (None, None, None, None, 0.3, 0.5)


def _norm_relu(channels: int, norm: str) -> nn.Sequential:
    # Pre-activation unit. A Sequential so its keys read "<name>.0.weight" as the official bnrelu.
    return nn.Sequential(get_norm(norm, channels), nn.ReLU(inplace=True))


class IdentityResidualBlock(nn.Module):
    """Pre-activation (identity-mapping) residual block of WideResNet.

    ``bn1`` (BN + ReLU) runs first; the residual branch ``convs`` reads its output. The shortcut
    is ``proj_conv(bn1(x))`` when the block changes the channel count or the stride, and the raw
    input ``x`` otherwise. There is no activation after the sum (the next block's ``bn1`` is it).

    Args:
        in_channels: channels of the input.
        channels: two values (two 3x3 convolutions) or three (1x1 - 3x3 - 1x1 bottleneck); the
            last one is the output channel count.
        stride: stride of the first convolution of the branch and of ``proj_conv``.
        dilation: dilation (and padding) of the 3x3 convolutions.
        dropout: if set, a ``Dropout2d`` with this probability before the last convolution.
        norm: a Detectron2 norm name (``"BN"``, ``"SyncBN"``, ...).

    Raises:
        ValueError: if ``channels`` does not have two or three entries.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        stride: int = 1,
        dilation: int = 1,
        dropout: Optional[float] = None,
        norm: str = "BN",
    ):
        super().__init__()
        if len(channels) not in (2, 3):
            raise ValueError(f"IdentityResidualBlock: channels must have 2 or 3 entries, got {list(channels)}")
        self.bn1 = _norm_relu(in_channels, norm)
        if len(channels) == 2:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 3, stride, dilation, dilation, bias=False)),
                ("bn2", _norm_relu(channels[0], norm)),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, dilation, dilation, bias=False)),
            ]
        else:
            # The stride sits on the first 1x1 convolution, as in the official block.
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 1, stride, 0, bias=False)),
                ("bn2", _norm_relu(channels[0], norm)),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, dilation, dilation, bias=False)),
                ("bn3", _norm_relu(channels[1], norm)),
                ("conv3", nn.Conv2d(channels[1], channels[2], 1, 1, 0, bias=False)),
            ]
        if dropout is not None:
            # Dropout has no parameters, so inserting it does not shift any key.
            layers.insert(len(layers) - 1, ("dropout", nn.Dropout2d(p=dropout)))
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or in_channels != channels[-1]:
            self.proj_conv = nn.Conv2d(in_channels, channels[-1], 1, stride, 0, bias=False)
        else:
            self.proj_conv = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x in_channels x H x W -> B x channels[-1] x ceil(H / stride) x ceil(W / stride)."""
        activated = self.bn1(x)
        shortcut = x if self.proj_conv is None else self.proj_conv(activated)
        return self.convs(activated) + shortcut


class WiderResNetA2(Backbone):
    """WideResNet-38 trunk (``WiderResNetA2`` without ``bn_out`` / classifier) as a Backbone.

    ``mod1`` is a 3x3 convolution 3 -> 64 at stride 1; ``pool2`` and ``pool3`` (max-pool 3, stride
    2, padding 1) precede ``mod2`` and ``mod3``. With ``dilation=True`` (DeepWV3Plus) the first
    block of ``mod4`` has stride 2, ``mod5`` uses dilation 2 and ``mod6`` / ``mod7`` dilation 4, so
    the output stride is 8; with ``dilation=False`` the first blocks of ``mod4`` ... ``mod6`` have
    stride 2 (output stride 32). Every downsampling rounds up (an odd side n gives (n + 1) / 2),
    so any input size runs.

    Outputs (``forward``): a dict with the requested ``mod1`` ... ``mod7`` outputs, each
    B x C x h x w. ``mod2`` has 128 channels at stride 2, ``mod7`` 4096 channels at stride 8
    (with dilation): the raw residual sum that DeepWV3Plus feeds to its ASPP.

    Official checkpoints (``official_key_prefix`` "": the trunk's keys are at their top level)
    come wrapped in ``module.`` (NVIDIA's DataParallel ``cityscapes_best.pth`` /
    ``cityscapes_cv0_wideresnet38_nosdcaug.pth``) and ``branch1.`` (PEBAL's and RPL's ``Network``).
    """

    official_key_prefix = ""
    official_key_wrappers = ("module.", "branch1.")

    def __init__(
        self,
        structure: Sequence[int] = (3, 3, 6, 3, 1, 1),
        dilation: bool = True,
        out_features: Sequence[str] = ("mod2", "mod7"),
        norm: str = "BN",
        in_channels: int = 3,
    ):
        """
        Args:
            structure: number of residual blocks in each of ``mod2`` ... ``mod7`` (six values).
            dilation: dilate ``mod5`` ... ``mod7`` instead of striding (output stride 8, not 32).
            out_features: names of the module outputs ``forward`` returns.
            norm: Detectron2 norm name of every BatchNorm (``"BN"``; ``"SyncBN"`` across GPUs).
            in_channels: image channels.

        Raises:
            ValueError: for a structure without six values or an unknown output name.
        """
        super().__init__()
        if len(structure) != 6:
            raise ValueError(f"WiderResNetA2: structure needs six block counts, got {list(structure)}")
        names = [f"mod{i}" for i in range(1, 8)]
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"WiderResNetA2: out_features must be among {names}, got {list(out_features)}")
        self.structure = list(structure)
        self.dilation = dilation

        self.mod1 = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False))]))
        self._out_feature_channels: Dict[str, int] = {"mod1": 64}
        self._out_feature_strides: Dict[str, int] = {"mod1": 1}
        channels_in, stride_total = 64, 1
        for index, (num_blocks, channels) in enumerate(zip(structure, WIDE_RESNET_CHANNELS)):
            name = f"mod{index + 2}"
            if index < 2:  # mod2 and mod3 downsample with a max-pool in front
                self.add_module(f"pool{index + 2}", nn.MaxPool2d(3, stride=2, padding=1))
                stride_total *= 2
            if dilation:
                first_stride = 2 if index == 2 else 1
                block_dilation = {3: 2, 4: 4, 5: 4}.get(index, 1)
            else:
                first_stride = 2 if 2 <= index <= 4 else 1
                block_dilation = 1
            blocks = []
            for block_index in range(num_blocks):
                blocks.append((
                    f"block{block_index + 1}",
                    IdentityResidualBlock(
                        channels_in,
                        channels,
                        stride=first_stride if block_index == 0 else 1,
                        dilation=block_dilation,
                        dropout=WIDE_RESNET_DROPOUT[index],
                        norm=norm,
                    ),
                ))
                channels_in = channels[-1]
            if num_blocks:
                stride_total *= first_stride
            self.add_module(name, nn.Sequential(OrderedDict(blocks)))
            self._out_feature_channels[name] = channels[-1]
            self._out_feature_strides[name] = stride_total
        self._out_features = list(out_features)
        # Stop after the deepest requested module: nothing after it is computed.
        self._last_module = max(names.index(f) for f in out_features) + 1

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: B x 3 x H x W normalised image -> {name: B x C x ceil(H / s) x ceil(W / s)}."""
        outputs: Dict[str, torch.Tensor] = {}
        for index in range(1, self._last_module + 1):
            name = f"mod{index}"
            if index in (2, 3):
                x = getattr(self, f"pool{index}")(x)
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_wider_resnet_backbone(cfg, input_shape: ShapeSpec) -> WiderResNetA2:
    """WideResNet-38 trunk from ``cfg.MODEL.WIDE_RESNET``.

    Reads STRUCTURE (six block counts), DILATION (True: output stride 8 as DeepWV3Plus), DIST_BN
    (True: SyncBN, for multi-GPU training; the official flag is stored but unused) and
    OUT_FEATURES (:func:`add_wider_resnet_config`).
    """
    wrn = cfg.MODEL.WIDE_RESNET
    out_features: List[str] = list(wrn.OUT_FEATURES)
    return WiderResNetA2(
        structure=wrn.STRUCTURE,
        dilation=wrn.DILATION,
        out_features=out_features,
        norm="SyncBN" if wrn.DIST_BN else "BN",
        in_channels=input_shape.channels,
    )
