"""Convolutional encoder/decoder shared by every image tokenizer.

This is the LDM/taming "VQ-f" autoencoder layout used by both anchors (VAR's VQVAE and LlamaGen's
VQ-16/VQ-8): a stack of resolution levels with residual blocks, single-head self-attention at
the lowest resolution and in the middle, GroupNorm(eps 1e-6) + SiLU, stride-2 convolutions with
asymmetric (0, 1, 0, 1) padding to downsample and nearest x2 + conv to upsample.

Parameter names follow VAR's ``models/basic_vae.py`` (``down.{level}.block.{j}``, ``mid.block_1``,
fused ``qkv`` attention), so official VAR weights load by name; LlamaGen's names differ only by a
fixed renaming (see ``arvision.convert`` in a later release).

Shapes: B batch, C channels, H/W height/width (h/w at latent resolution).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> SiLU -> conv3x3, twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, *, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # Identity has no parameters, so the state dict only has nin_shortcut where VAR's has it.
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x_BCHW: Tensor) -> Tensor:
        inplace = not torch.is_grad_enabled()  # inference: no fresh buffer for each activation
        h = self.conv1(F.silu(self.norm1(x_BCHW), inplace=inplace))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        return h.add_(self.nin_shortcut(x_BCHW)) if inplace else self.nin_shortcut(x_BCHW) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with one fused 1x1 ``qkv`` conv (VAR layout)."""

    def __init__(self, ch: int, *, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)  # channels [0:C) = q, [C:2C) = k, [2C:3C) = v
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x_BCHW: Tensor) -> Tensor:
        B, C, H, W = x_BCHW.shape
        qkv = self.qkv(self.norm(x_BCHW)).view(B, 3, C, H * W).transpose(2, 3)  # (B, 3, HW, C)
        q, k, v = qkv.unbind(1)
        # SDPA's default scale 1/sqrt(C) is the scale of the reference implementations.
        h = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        out = self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))
        return out.add_(x_BCHW) if not torch.is_grad_enabled() else x_BCHW + out


class Downsample(nn.Module):
    """Stride-2 conv3x3 after padding right/bottom by one pixel (as in VAR and LlamaGen)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x_BCHW: Tensor) -> Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


def _fold_taps(w: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """3 kernel taps along ``dim`` -> the 2 taps each output parity sees after a nearest x2 upsample:
    even outputs read rows (i-1, i) with taps (w0, w1 + w2), odd outputs rows (i, i+1) with (w0 + w1, w2)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by conv3x3.

    For CPU inference the pair runs on the low-resolution input as 2x2 convolutions, one per output
    parity (sub-pixel form): the same sums with 4 instead of 9 multiply-adds per output pixel and
    input channel, 1.3-1.6x faster on VAR's and LlamaGen's decoder layers; outputs agree with the
    direct form to float rounding (~1e-6 relative). Training and other devices use the direct form.
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x_BCHW: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x_BCHW.device.type != "cpu":
            return self.conv(F.interpolate(x_BCHW, scale_factor=2, mode="nearest"))
        return self.subpixel(x_BCHW)

    def subpixel(self, x_BCHW: Tensor) -> Tensor:
        B, _, h, w = x_BCHW.shape
        C = self.conv.out_channels
        # One conv with the four parities' 2x2 kernels stacked as output channels; parity (a, b)
        # is the window of its output starting at (a, b).
        kernels = [k for rows in _fold_taps(self.conv.weight, 2) for k in _fold_taps(rows, 3)]
        x_pad = F.pad(x_BCHW, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x_pad, torch.cat(kernels), self.conv.bias.repeat(4))  # (B, 4C, h+1, w+1)
        out = y.new_empty(B, C, 2 * h, 2 * w).contiguous(memory_format=torch.channels_last)
        for p in range(4):
            a, b = divmod(p, 2)
            out[:, :, a::2, b::2] = y[:, p * C : (p + 1) * C, a : a + h, b : b + w]
        return out


class _Level(nn.Module):
    """One resolution level: ``num_blocks`` residual blocks, each followed by attention if asked."""

    def __init__(self, block_in: int, block_out: int, num_blocks: int, *, attn: bool, groups: int, dropout: float) -> None:
        super().__init__()
        # a generator, not a list of widths: a corrupt config's huge num_blocks is stopped by the
        # allocation guard of load_model after a few blocks (arvision.modelcheck), not by a giant list
        self.block = nn.ModuleList(ResnetBlock(block_in if k == 0 else block_out, block_out, groups=groups, dropout=dropout)
                                   for k in range(num_blocks))  # fmt: skip
        self.attn = nn.ModuleList(AttnBlock(block_out, groups=groups) for _ in range(num_blocks if attn else 0))

    def run(self, h: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[j](h)
        return h


class _Mid(nn.Module):
    def __init__(self, ch: int, *, groups: int, dropout: float, attn: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, groups=groups, dropout=dropout)
        self.attn_1 = AttnBlock(ch, groups=groups) if attn else nn.Identity()
        self.block_2 = ResnetBlock(ch, ch, groups=groups, dropout=dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class ConvEncoder(nn.Module):
    """Image (B, in_ch, H, W) -> latent (B, z_channels, H / 2^(levels-1), W / 2^(levels-1))."""

    def __init__(
        self,
        *,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        groups: int = 32,
        dropout: float = 0.0,
        attn_lowest: bool = True,
        attn_mid: bool = True,
    ) -> None:
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            level = _Level(block_in, ch * mult, num_res_blocks, attn=attn_lowest and i == n - 1, groups=groups, dropout=dropout)
            block_in = ch * mult
            if i != n - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in, groups=groups, dropout=dropout, attn=attn_mid)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x_BCHW: Tensor) -> Tensor:
        h = self.conv_in(x_BCHW)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvDecoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_ch, h * 2^(levels-1), w * 2^(levels-1)).

    ``up[i]`` is the level at the same resolution as the encoder's ``down[i]`` (so ``up[-1]`` is
    the lowest resolution and runs first); each level has ``num_res_blocks + 1`` blocks.
    """

    def __init__(
        self,
        *,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        groups: int = 32,
        dropout: float = 0.0,
        attn_lowest: bool = True,
        attn_mid: bool = True,
    ) -> None:
        super().__init__()
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, groups=groups, dropout=dropout, attn=attn_mid)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            level = _Level(block_in, ch * ch_mult[i], num_res_blocks + 1, attn=attn_lowest and i == n - 1, groups=groups,
                           dropout=dropout)  # fmt: skip
            block_in = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z_BChw: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z_BChw))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))
