"""RPL's residual anomaly block (``ResidualAnomalyBlock``) with the CoroCL projector.

Reproduces ``ResidualAnomalyBlock`` and ``ProjectionHead`` of
``rpl_corocl.code/model/wide_network.py`` (yyliu01/RPL @ 1a327d5). State-dict keys are the
official ones below ``residual_block.``: ``atten_aspp.*`` (a second WRN-38 ASPP),
``bot_atten_aspp.weight``, ``atten_aspp_final.weight``, ``proj_head.proj.0.{weight,bias}``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..heads.deepwv3plus import WiderASPP, upsample_align_corners

__all__ = ["ProjectionHead", "ResidualAnomalyBlock"]


class ProjectionHead(nn.Module):
    """CoroCL projector: ``proj`` = a single 1x1 convolution with bias (key ``proj.0``).

    B x in_channels x h x w -> B x out_channels x h x w. The official file also holds a
    commented-out conv-BN-ReLU variant; the released model is the single convolution.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 304):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ResidualAnomalyBlock(nn.Module):
    """RPL's residual branch on the trunk's ``mod7`` output.

    ``atten_aspp`` (a second ASPP, 4096 -> 5 x 256) -> ``bot_atten_aspp`` (1x1 1280 -> 256, no BN,
    no bias) -> bilinear upsampling (``align_corners=True``) to the decoder size (stride 2) ->
    ``atten_aspp_final`` (1x1 256 -> 304, no bias) gives the residual that RPL adds to the
    decoder input ``dec0`` before running the closed-set ``final`` block a second time.
    ``proj_head`` (CoroCL) embeds the same upsampled 256-channel map, in training only.
    """

    def __init__(
        self,
        in_channels: int = 4096,
        aspp_channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        decoder_in_channels: int = 304,
        proj_dim: int = 304,
        norm: str = "BN",
    ):
        super().__init__()
        self.atten_aspp = WiderASPP(in_channels, aspp_channels, rates, norm)
        self.bot_atten_aspp = nn.Conv2d(self.atten_aspp.out_channels, aspp_channels, kernel_size=1, bias=False)
        self.atten_aspp_final = nn.Conv2d(aspp_channels, decoder_in_channels, kernel_size=1, bias=False)
        self.proj_head = ProjectionHead(aspp_channels, proj_dim)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: B x 4096 x h8 x w8, the trunk's ``mod7`` output.
            size: (h2, w2), the spatial size of ``dec0``.

        Returns:
            ``(residual, projection)``: the residual B x 304 x h2 x w2 and the CoroCL embedding
            B x proj_dim x h2 x w2, or ``None`` in eval mode (as the official block).
        """
        x = upsample_align_corners(self.bot_atten_aspp(self.atten_aspp(x)), size)
        residual = self.atten_aspp_final(x)
        if not self.training:
            return residual, None
        return residual, self.proj_head(x)
