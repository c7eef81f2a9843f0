"""Swin Transformer backbone (Liu et al. 2021) under Mask2Former's parameter names.

Module and parameter names (``patch_embed``, ``layers.{i}.blocks.{j}.attn.qkv``, ``norm{i}``, ...)
match Mask2Former's ``D2SwinTransformer`` so its checkpoints (and RbA's) load unchanged, and so
does the arithmetic: windows are padded with zeros *after* the first LayerNorm and the padded
tokens take part in attention, exactly as in the reference implementation.

Two paths compute the same blocks from the same parameters (``MODEL.FUSED_ATTENTION``):

* fused (default): one index gather takes a stage's tokens to a batch of windows (zero padding and
  the cyclic shift included; :func:`window_layout`) and one takes the attended windows back
  (dropping the padding before ``proj``), and attention is ``scaled_dot_product_attention`` with
  the relative position bias as its additive mask. Shifted blocks put the windows that the shift
  mask touches (last window row and column) last, so the others share one broadcast bias and only
  those get a per-window bias + mask.
* reference (``fused_attention=False``): the official code's pad, roll, partition, matmul-softmax-
  matmul, reverse, roll and crop.

Every size is computed from the input's shape, so the backbone traces (TorchScript, ONNX) for
any input size.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import nn

from ...layers import Linear

__all__ = ["SwinTransformer", "D2SwinTransformer"]


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """B x H x W x C (H, W multiples of the window) -> (B * nW) x ws x ws x C."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """(B * nW) x ws x ws x C -> B x H x W x C (inverse of :func:`window_partition`)."""
    b = windows.shape[0] // ((h // window_size) * (w // window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws*ws) x (ws*ws) int64: index into the (2ws-1)^2 bias table for every token pair."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # 2 x ws*ws
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


def _tracing() -> bool:
    # While tracing, sizes are traced tensors: a Python test on them would freeze the branch
    # taken at the export size, so size-dependent steps (zero padding, cropping) always run.
    return torch.jit.is_tracing()


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias.

    ``fused_attention`` runs one ``scaled_dot_product_attention`` with bias + shift mask as its
    additive mask; otherwise q k^T, the bias and mask adds, softmax and the product with v run as
    separate operations, as in the reference implementation. Both read the same parameters.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attention: bool = True,
    ):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.fused_attention = fused_attention
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Persistent: official checkpoints carry it, so strict loading expects it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """heads x N x N additive bias of every token pair of a window (N = ws * ws)."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (B * nW) x N x C, N = ws * ws tokens per window.
            mask: nW x N x N additive mask (0 or -100) for shifted windows, or None.

        Returns:
            (B * nW) x N x C.
        """
        bw, n = x.shape[0], x.shape[1]
        # q, k, v stay strided views of the qkv output: the fused kernel reads them in place.
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.dim // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias()
        if self.fused_attention:
            out = self._fused(q, k, v, bias, mask)
        else:
            out = self._unfused(q, k, v, bias, mask)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, self.dim)))

    def _fused(self, q, k, v, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if mask is None:
            attn_mask = bias.unsqueeze(0)  # broadcast over windows
        else:
            num_windows = mask.shape[0]
            # nW x heads x N x N, repeated per image of the batch (a view for one image).
            attn_mask = bias.unsqueeze(0) + mask.unsqueeze(1)
            images = q.shape[0] // num_windows
            attn_mask = attn_mask.unsqueeze(0).expand(images, -1, -1, -1, -1).flatten(0, 1)
        dropout = self.attn_drop.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=self.scale)

    def attend_windows(
        self, windows: torch.Tensor, num_plain, tail_mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The fused path's attention, before ``proj`` (see :func:`window_layout`).

        Args:
            windows: (B * nW) x N x C, the first ``num_plain`` windows without shift mask.
            tail_mask: nT x N x N shift mask of the others (per image, repeated over the images),
                or None when no window has one.

        Returns:
            (B * nW) x N x C.
        """
        bw, n = windows.shape[0], windows.shape[1]
        q, k, v = self.qkv(windows).reshape(bw, n, 3, self.num_heads, self.dim // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias().unsqueeze(0)
        dropout = self.attn_drop.p if self.training else 0.0
        if tail_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=self.scale)
            return out.transpose(1, 2).reshape(bw, n, self.dim)
        plain = F.scaled_dot_product_attention(
            q[:num_plain], k[:num_plain], v[:num_plain], attn_mask=bias, dropout_p=dropout, scale=self.scale
        )
        tail_bias = bias + tail_mask.unsqueeze(1)  # nT x heads x N x N
        images = (bw - num_plain) // tail_mask.shape[0]
        tail_bias = tail_bias.unsqueeze(0).expand(images, -1, -1, -1, -1).flatten(0, 1)
        tail = F.scaled_dot_product_attention(
            q[num_plain:], k[num_plain:], v[num_plain:], attn_mask=tail_bias, dropout_p=dropout, scale=self.scale
        )
        # One copy into token-major layout for both parts.
        return torch.cat([plain.transpose(1, 2), tail.transpose(1, 2)]).reshape(bw, n, self.dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The output projection (per token) and its dropout."""
        return self.proj_drop(self.proj(x))

    def _unfused(self, q, k, v, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        bw, n = q.shape[0], q.shape[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW) x heads x N x N
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(bw // num_windows, num_windows, self.num_heads, n, n)
            attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and an MLP, each as a pre-norm residual branch."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        fused_attention: bool = True,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"Swin: shift_size {shift_size} must be in [0, window_size {window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop, fused_attention)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, h: int, w: int, windows) -> torch.Tensor:
        """
        Args:
            x: B x (H * W) x C.
            windows: the fused path's :class:`WindowLayout` for this block's shift; on the
                reference path the stage's nW x N x N shift mask (read by shifted blocks only).

        Returns:
            B x (H * W) x C.
        """
        if self.attn.fused_attention:
            x = x + self.drop_path(self._attention_fused(x, windows))
        else:
            x = x + self.drop_path(self._attention_reference(x, h, w, windows))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _attention_fused(self, x: torch.Tensor, layout: "WindowLayout") -> torch.Tensor:
        b, length, c = x.shape
        n = self.window_size * self.window_size
        windows = self.norm1(x).reshape(b * length, c).index_select(0, layout.gather)
        windows.index_fill_(0, layout.pad, 0.0)  # padding tokens are zeros after the norm
        windows = self.attn.attend_windows(windows.view(-1, n, c), layout.num_plain, layout.tail_mask)
        tokens = windows.view(-1, c).index_select(0, layout.scatter).view(b, length, c)
        return self.attn.project(tokens)  # per token, so only the real tokens are projected

    def _attention_reference(self, x: torch.Tensor, h: int, w: int, shift_mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, _, c = x.shape
        ws = self.window_size
        x = self.norm1(x).view(b, h, w, c)
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        padded = _tracing() or pad_r > 0 or pad_b > 0
        if padded:  # (a copy; skipped when the map tiles into windows)
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = x.shape[1], x.shape[2]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = shift_mask
        else:
            mask = None
        windows = window_partition(x, ws).reshape(-1, ws * ws, c)
        windows = self.attn(windows, mask=mask).view(-1, ws, ws, c)
        x = window_reverse(windows, ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if padded:
            x = x[:, :h, :w, :]
        return x.reshape(b, h * w, c)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation, LayerNorm, then Linear 4C -> 2C (halves H and W)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """B x (H * W) x C -> B x (ceil(H/2) * ceil(W/2)) x 2C."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if _tracing() or h % 2 == 1 or w % 2 == 1:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


def shifted_window_mask(h: int, w: int, window_size: int, shift_size: int, device) -> torch.Tensor:
    """nW x N x N additive mask: -100 between tokens that came from different image regions
    after the cyclic shift (so they do not attend to each other), 0 otherwise.

    ``h`` and ``w`` may be traced sizes: the mask is built from ``arange`` comparisons, not from
    Python slices, so a traced model computes it for the size it is run at.
    """
    hp = (h + window_size - 1) // window_size * window_size
    wp = (w + window_size - 1) // window_size * window_size

    def region(length) -> torch.Tensor:
        # 0 before the last window, 1 in the last window before the shift, 2 in the shifted-in part.
        index = torch.arange(length, device=device)
        return (index >= length - window_size).long() + (index >= length - shift_size).long()

    regions = (region(hp)[:, None] * 3 + region(wp)[None, :]).float()
    ids = window_partition(regions[None, :, :, None], window_size).reshape(-1, window_size * window_size)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowLayout(NamedTuple):
    """Where the fused path puts a stage's tokens (B x H x W, flattened) in its window batch
    ((B * nW) x N slots) and back: one ``index_select`` each way."""

    gather: torch.Tensor  # (B * nW * N) token of every slot (padding slots: any, then zeroed)
    pad: torch.Tensor  # slots of padding tokens (possibly empty)
    scatter: torch.Tensor  # (B * H * W) slot of every token
    num_plain: int  # leading windows (of all images) without shift mask
    tail_mask: Optional[torch.Tensor]  # nT x N x N shift mask of each image's other windows


def window_layout(batch: int, h: int, w: int, window_size: int, shift_size: int, device) -> WindowLayout:
    """The fused path's window order for a stage of ``h`` x ``w`` tokens (sizes may be traced).

    Slots hold the windows of the zero-padded map after the cyclic shift by ``-shift_size``, as
    the reference's pad, roll and partition give them, but ordered: first every image's windows
    that the shift mask leaves alone (all windows when ``shift_size`` is 0), then every image's
    windows of the last window row and column, whose masks ``tail_mask`` holds.
    """
    ws = window_size
    n = ws * ws
    hp = (h + ws - 1) // ws * ws
    wp = (w + ws - 1) // ws * ws
    rows, cols = hp // ws, wp // ws
    # Source token of every position of the shifted, padded grid.
    src_y = (torch.arange(hp, device=device) + shift_size) % hp
    src_x = (torch.arange(wp, device=device) + shift_size) % wp
    valid = (src_y < h)[:, None] & (src_x < w)[None, :]
    source = torch.where(valid, src_y[:, None] * w + src_x[None, :], torch.zeros_like(valid, dtype=torch.long))
    source = window_partition(source[None, :, :, None], ws).reshape(-1, n)  # nW x N, natural order
    valid = window_partition(valid[None, :, :, None], ws).reshape(-1, n)
    ids = torch.arange(rows * cols, device=device).view(rows, cols)
    if shift_size > 0:
        last = (torch.arange(rows, device=device) == rows - 1)[:, None] | (torch.arange(cols, device=device) == cols - 1)[None, :]
        order = torch.cat([ids[~last], ids[last]])
        per_image_plain = (rows - 1) * (cols - 1)
        tail_mask = shifted_window_mask(h, w, ws, shift_size, device)[order[per_image_plain:]]
    else:
        order = ids.flatten()
        per_image_plain = rows * cols
        tail_mask = None
    images = torch.arange(batch, device=device)[:, None, None]
    parts, part_valid = [], []
    for part in (order[:per_image_plain], order[per_image_plain:]):
        parts.append((images * (h * w) + source[part][None]).flatten())
        part_valid.append(valid[part][None].expand(batch, -1, -1).flatten())
    gather = torch.cat(parts)
    pad = (~torch.cat(part_valid)).nonzero().flatten()
    # Slot of every token: its window's rank in ``order`` (plain windows of all images first).
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(rows * cols, device=device))
    y = (torch.arange(h, device=device) - shift_size) % hp
    x = (torch.arange(w, device=device) - shift_size) % wp
    window_rank = rank[(y // ws)[:, None] * cols + (x // ws)[None, :]].flatten()  # H*W
    within = ((y % ws) * ws)[:, None] + (x % ws)[None, :]
    tail_windows = rows * cols - per_image_plain
    image = images.flatten()[:, None]
    slot_window = torch.where(
        window_rank[None] < per_image_plain,
        image * per_image_plain + window_rank[None],
        batch * per_image_plain + image * tail_windows + (window_rank[None] - per_image_plain),
    )
    scatter = (slot_window * n + within.flatten()[None]).flatten()
    return WindowLayout(gather, pad, scatter, batch * per_image_plain, tail_mask)


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating plain and shifted windows, then (optionally)
    patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool = False,
        fused_attention: bool = True,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim,
                    num_heads,
                    window_size,
                    0 if i % 2 == 0 else self.shift_size,
                    mlp_ratio,
                    qkv_bias,
                    qk_scale,
                    drop,
                    attn_drop,
                    drop_path[i],
                    fused_attention,
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """x: B x (H * W) x C. Returns (stage output, input of the next stage, next H, next W)."""
        shifts = sorted({block.shift_size for block in self.blocks})
        if self.blocks[0].attn.fused_attention:  # one layout per shift, shared by the stage's blocks
            windows = {s: window_layout(x.shape[0], h, w, self.window_size, s, x.device) for s in shifts}
        else:
            mask = shifted_window_mask(h, w, self.window_size, self.shift_size, x.device) if shifts[-1] else None
            windows = {s: mask for s in shifts}
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint.checkpoint(block, x, h, w, windows[block.shift_size], use_reentrant=False)
            else:
                x = block(x, h, w, windows[block.shift_size])
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches -> embed_dim channels (input padded to a
    multiple of the patch size on the right/bottom)."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x C x ceil(H/p) x ceil(W/p)."""
        _, _, h, w = x.shape
        p = self.patch_size
        pad_r, pad_b = (p - w % p) % p, (p - h % p) % p
        if _tracing() or pad_r > 0 or pad_b > 0:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x)
        if self.norm is not None:
            hh, ww = x.shape[2], x.shape[3]
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(-1, self.embed_dim, hh, ww)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer returning the normalised output of every stage in ``out_indices``.

    ``fused_attention``: window attention through ``scaled_dot_product_attention`` (default) or
    the reference's separate operations (same parameters, same outputs to float rounding).
    ``onednn_linear``: the Linear layers' products by oneDNN at inference on the CPU
    (:mod:`rba_plugin.layers.linear`; same outputs to float rounding) or always by ``F.linear``.
    """

    def __init__(
        self,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        use_checkpoint: bool = False,
        fused_attention: bool = True,
        onednn_linear: bool = True,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"Swin: DEPTHS {list(depths)} and NUM_HEADS {list(num_heads)} differ in length")
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        # Stochastic depth grows linearly over all blocks of all stages.
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            start = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    dim=embed_dim * 2**i,
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[start : start + depths[i]],
                    downsample=i < self.num_layers - 1,
                    use_checkpoint=use_checkpoint,
                    fused_attention=fused_attention,
                )
            )
        self.num_features = [embed_dim * 2**i for i in range(self.num_layers)]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.apply(self._init_weights)
        for module in self.modules():
            if isinstance(module, Linear):
                module.onednn = onednn_linear

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """B x 3 x H x W -> {"res{i+2}": B x C_i x H/2^(i+2) x W/2^(i+2)} for i in out_indices."""
        x = self.patch_embed(x)
        h, w = x.shape[2], x.shape[3]
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
            x = x + pos
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outs = {}
        for i, layer in enumerate(self.layers):
            out, x, next_h, next_w = layer(x, h, w)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs[f"res{i + 2}"] = out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
            h, w = next_h, next_w
        return outs


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(SwinTransformer, Backbone):
    """:class:`SwinTransformer` as a Detectron2 backbone, configured by ``MODEL.SWIN.*``."""

    @configurable
    def __init__(self, *, out_features: List[str], **kwargs):
        super().__init__(**kwargs)
        strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
        channels = {f"res{i + 2}": c for i, c in enumerate(self.num_features)}
        unknown = [f for f in out_features if f not in channels]
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES: unknown feature(s) {unknown}; Swin has {list(channels)}")
        self._out_features = list(out_features)
        self._out_feature_strides = {f: strides[f] for f in channels}
        self._out_feature_channels = channels

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec = None):
        s = cfg.MODEL.SWIN
        return {
            "pretrain_img_size": s.PRETRAIN_IMG_SIZE,
            "patch_size": s.PATCH_SIZE,
            "in_chans": 3 if input_shape is None else input_shape.channels,
            "embed_dim": s.EMBED_DIM,
            "depths": list(s.DEPTHS),
            "num_heads": list(s.NUM_HEADS),
            "window_size": s.WINDOW_SIZE,
            "mlp_ratio": s.MLP_RATIO,
            "qkv_bias": s.QKV_BIAS,
            "qk_scale": s.QK_SCALE,
            "drop_rate": s.DROP_RATE,
            "attn_drop_rate": s.ATTN_DROP_RATE,
            "drop_path_rate": s.DROP_PATH_RATE,
            "ape": s.APE,
            "patch_norm": s.PATCH_NORM,
            "use_checkpoint": s.USE_CHECKPOINT,
            "out_features": list(s.OUT_FEATURES),
            "fused_attention": cfg.MODEL.FUSED_ATTENTION,
            "onednn_linear": s.ONEDNN_LINEAR,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: B x 3 x H x W (normalised). Returns the configured ``res*`` features."""
        if x.dim() != 4:
            raise ValueError(f"D2SwinTransformer takes B x C x H x W input, got shape {tuple(x.shape)}")
        outputs = super().forward(x)
        return {k: v for k, v in outputs.items() if k in self._out_features}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
