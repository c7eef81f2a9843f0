"""RPL's residual block, one registered structure per network (``MODEL.RPL.RESIDUAL_BLOCK``).

Both compute, from the backbone's coarsest feature, a residual added to the head's decoder input
and the hidden map CoroCL's projector embeds:

* :class:`ResidualAnomalyBlock`: the official block of RPL's WideResNet-38 DeepWV3Plus
  (``rpl_corocl.code/model/wide_network.py`` lines 27-57, yyliu01/RPL @ 1a327d5): a second WRN
  ASPP ``atten_aspp`` (1280 channels), ``bot_atten_aspp`` (1x1 to 256, no BN), bilinear upsampling
  with ``align_corners=True`` to the decoder's size, ``atten_aspp_final`` (1x1 to the decoder
  input's width, no bias) and the CoroCL projector ``proj_head.proj.0`` (1x1 with bias). Keys are
  the official ones below ``residual_block.``, so released RPL checkpoints load 1:1.
* :class:`ResidualPatternBlock`: the same idea on Detectron2's DeepLabV3+ (its ASPP with
  projection to 256 channels, ``align_corners=False``, ``expand`` and ``projector``).

A block is built with ``cls(cfg, head)`` and declares the conv learnt at ``MODEL.RPL.EXPAND_LR_MULT``
(``expand_prefix``) and what it copies from the head when a closed-set checkpoint initialises it
(``head_copies``: RPL's ``load_model`` copies the trained ASPP, ``rpl_corocl.code/utils/pyt_utils.py``
lines 317-322, whose ``"aspp" in k`` also copies ``bot_aspp`` into ``bot_atten_aspp``; lines
338-343 initialise the projector and ``atten_aspp_final``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from detectron2.config import configurable
from detectron2.layers import ASPP, Conv2d
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torch.nn import functional as F

from .heads.wider_deeplab import WiderASPP, upsample_align_corners

__all__ = [
    "RPL_RESIDUAL_BLOCK_REGISTRY",
    "RPLResidualBlock",
    "ResidualAnomalyBlock",
    "ResidualPatternBlock",
    "build_residual_block",
]

RPL_RESIDUAL_BLOCK_REGISTRY = Registry("RPL_RESIDUAL_BLOCK")
RPL_RESIDUAL_BLOCK_REGISTRY.__doc__ = """
RPL's residual block per network (``MODEL.RPL.RESIDUAL_BLOCK``), built with ``cls(cfg, head)``.
"""


class RPLResidualBlock(nn.Module):
    """Interface of a residual block. ``forward(x, size) -> (residual, hidden)``: x is the
    backbone's ``head.coarse_feature`` (N x C x h x w); residual N x ``head.decoder_in_channels``
    x H x W and hidden N x D x H x W at the decoder's size ``size``. ``embed(hidden)``: the
    L2-normalised CoroCL projection (needs a projector)."""

    # Block-relative name of the conv trained at MODEL.RPL.EXPAND_LR_MULT x the base LR.
    expand_prefix: str = ""

    @property
    def has_projector(self) -> bool:
        raise NotImplementedError

    def head_copies(self) -> Dict[str, str]:
        """Block-relative prefix -> head-relative prefix of the modules copied from a trained head
        when a checkpoint lacks the block (``MODEL.RPL.INIT_FROM_HEAD_ASPP``)."""
        raise NotImplementedError

    def project(self, hidden: Tensor) -> Tensor:
        raise NotImplementedError

    def embed(self, hidden: Tensor) -> Tensor:
        """L2-normalised projector output, N x proj_dim x H x W (CoroCL normalises its inputs,
        ``rpl_corocl.code/loss/CoroCL.py`` lines 23-24)."""
        return F.normalize(self.project(hidden), dim=1)


def _kaiming(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@RPL_RESIDUAL_BLOCK_REGISTRY.register()
class ResidualAnomalyBlock(RPLResidualBlock):
    """RPL's official residual block on DeepWV3Plus (see the module docstring).

    Args:
        in_channels: channels of the coarse feature (``mod7``: 4096).
        aspp_channels: the branches' width (256; ``atten_aspp`` outputs 5x).
        rates: the ASPP's dilations (12/24/36 at stride 8).
        decoder_in_channels: the residual's width, the head's ``dec0`` (304).
        proj_dim: CoroCL projector outputs (304); 0 = no projector (RPL without CoroCL,
            ``rpl.code`` has no ``proj_head``).
        norm: Detectron2 norm name of the ASPP's BatchNorms.
        aspp_source / reduction_source: head-relative names of the head's ASPP and of its 1x1
            reduction, copied into ``atten_aspp`` / ``bot_atten_aspp`` at initialisation.
    """

    expand_prefix = "atten_aspp_final"

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        decoder_in_channels: int,
        aspp_channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        proj_dim: int = 304,
        norm: str = "BN",
        aspp_source: str = "aspp",
        reduction_source: str = "bot_aspp",
    ):
        super().__init__()
        self.atten_aspp = WiderASPP(in_channels, aspp_channels, rates, norm)
        self.bot_atten_aspp = nn.Conv2d(self.atten_aspp.out_channels, aspp_channels, kernel_size=1, bias=False)
        self.atten_aspp_final = nn.Conv2d(aspp_channels, decoder_in_channels, kernel_size=1, bias=False)
        # Official initialisation (mynn.initialize_weights): Kaiming-normal convs; the ASPP and the
        # reduction are then replaced by the head's trained ones.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _kaiming(module)
        self.proj_head: Optional[nn.Module] = None
        if proj_dim > 0:
            # ProjectionHead: one 1x1 conv with bias under "proj.0" (pyt_utils.py lines 338-340:
            # Kaiming-normal weight, zero bias).
            self.proj_head = nn.Module()
            self.proj_head.proj = nn.Sequential(nn.Conv2d(aspp_channels, proj_dim, kernel_size=1))
            _kaiming(self.proj_head.proj[0])
        self._copies = {"atten_aspp": aspp_source, "bot_atten_aspp": reduction_source}

    @classmethod
    def from_config(cls, cfg, head) -> Dict:
        aspp = getattr(head, "aspp", None)
        if not isinstance(aspp, WiderASPP) or not isinstance(getattr(head, "bot_aspp", None), nn.Conv2d):
            raise ValueError(
                f"MODEL.RPL.RESIDUAL_BLOCK=ResidualAnomalyBlock is RPL's block of the WideResNet-38 DeepWV3Plus "
                f"(MODEL.SEM_SEG_HEAD.NAME DeepWV3PlusHead); {type(head).__name__} has no WRN ASPP and bot_aspp: "
                f"use ResidualPatternBlock"
            )
        return {
            "in_channels": head.coarse_in_channels,
            "decoder_in_channels": head.decoder_in_channels,
            "aspp_channels": aspp.img_conv[0].out_channels,
            "rates": [branch[0].dilation[0] for branch in aspp.features[1:]],
            "proj_dim": cfg.MODEL.RPL.PROJ_DIM if cfg.MODEL.RPL.COROCL_WEIGHT > 0 else 0,
            "norm": "SyncBN" if cfg.MODEL.WIDE_RESNET.DIST_BN else "BN",
            "aspp_source": head.aspp_prefix,
            "reduction_source": "bot_aspp",
        }

    @property
    def has_projector(self) -> bool:
        return self.proj_head is not None

    def head_copies(self) -> Dict[str, str]:
        return dict(self._copies)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tuple[Tensor, Tensor]:
        """``ResidualAnomalyBlock.forward``: (``res_`` N x 304 x H x W, the upsampled 256-channel
        map the official ``proj_head`` reads)."""
        hidden = upsample_align_corners(self.bot_atten_aspp(self.atten_aspp(x)), size)
        return self.atten_aspp_final(hidden), hidden

    def project(self, hidden: Tensor) -> Tensor:
        return self.proj_head.proj(hidden)


@RPL_RESIDUAL_BLOCK_REGISTRY.register()
class ResidualPatternBlock(RPLResidualBlock):
    """RPL on Detectron2's DeepLabV3+: ASPP (in -> ``aspp_channels``, projected) -> upsample
    (``align_corners=False``) -> 1x1 ``expand`` to ``out_channels``; ``projector`` for CoroCL."""

    expand_prefix = "expand"

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        aspp_channels: int = 256,
        aspp_dilations: Sequence[int] = (6, 12, 18),
        norm: str = "BN",
        pool_kernel_size=None,
        proj_dim: int = 0,
        aspp_source: str = "",
    ):
        super().__init__()
        self.aspp = ASPP(
            in_channels, aspp_channels, list(aspp_dilations), norm=norm, activation=F.relu,
            pool_kernel_size=pool_kernel_size, dropout=0.0,
        )
        self.expand = Conv2d(aspp_channels, out_channels, kernel_size=1, bias=False)
        # Kaiming (as the official code), so the residual is non-zero at step 0.
        nn.init.kaiming_normal_(self.expand.weight)
        self.projector: Optional[nn.Module] = None
        if proj_dim > 0:
            self.projector = Conv2d(aspp_channels, proj_dim, kernel_size=1, bias=True)
            _kaiming(self.projector)
        self._copies = {"aspp": aspp_source} if aspp_source else {}

    @classmethod
    def from_config(cls, cfg, head) -> Dict:
        if not isinstance(getattr(head, "aspp", None), ASPP):
            raise ValueError(
                f"MODEL.RPL.RESIDUAL_BLOCK=ResidualPatternBlock copies Detectron2's ASPP; {type(head).__name__} has "
                f"another one: use the block of its network (DeepWV3PlusHead: ResidualAnomalyBlock)"
            )
        return {
            "in_channels": head.coarse_in_channels,
            "out_channels": head.decoder_in_channels,
            "aspp_channels": cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS,
            "aspp_dilations": cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            "pool_kernel_size": head.aspp.pool_kernel_size,
            "proj_dim": cfg.MODEL.RPL.PROJ_DIM if cfg.MODEL.RPL.COROCL_WEIGHT > 0 else 0,
            "aspp_source": head.aspp_prefix,
        }

    @property
    def has_projector(self) -> bool:
        return self.projector is not None

    def head_copies(self) -> Dict[str, str]:
        return dict(self._copies)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tuple[Tensor, Tensor]:
        """x: N x C_in x h x w -> (residual N x out x H x W, hidden N x aspp_channels x H x W)."""
        hidden = F.interpolate(self.aspp(x), size=tuple(size), mode="bilinear", align_corners=False)
        return self.expand(hidden), hidden

    def project(self, hidden: Tensor) -> Tensor:
        return self.projector(hidden)


def build_residual_block(cfg, head: nn.Module) -> RPLResidualBlock:
    """The block named by ``MODEL.RPL.RESIDUAL_BLOCK``; a ValueError lists the registered ones."""
    name = cfg.MODEL.RPL.RESIDUAL_BLOCK
    if name not in RPL_RESIDUAL_BLOCK_REGISTRY:
        known = sorted(k for k, _ in RPL_RESIDUAL_BLOCK_REGISTRY)
        raise ValueError(f"MODEL.RPL.RESIDUAL_BLOCK={name!r} is not registered; known: {known}")
    return RPL_RESIDUAL_BLOCK_REGISTRY.get(name)(cfg, head)
