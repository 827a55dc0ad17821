"""The one transformer backbone every generation order shares.

What differs between the anchors is configuration, not code:

=================  ==========================================  ===================================
option             VAR (Tian et al. 2024)                      LlamaGen (Sun et al. 2024)
=================  ==========================================  ===================================
conditioning       ``adaln``: class embedding -> 6C shifts,     ``prefix``: class token in front of
                   scales, gates per block (+ AdaLN head norm)  the sequence
attention          ``cosine``: l2-normalised q/k, learnable    ``plain``: 1/sqrt(head_dim)
                   per-head temperature (init 4, cap 100)
bias               q and v biases, none on k; proj bias        none
positions          learned absolute + level (in the order's     2D RoPE, interleaved pairs (given
                   embedding, not here)                        by the order as a table)
norm               LayerNorm without affine, eps 1e-6          RMSNorm, eps 1e-5
MLP                GELU (tanh) 4x, with biases                 SwiGLU, hidden rounded to 256
=================  ==========================================  ===================================

Masks and caches come from the caller: ``attn_mask`` is a boolean (Lq, Lk) "may attend" matrix
(see :func:`group_causal_mask`) and ``cache`` an explicit :class:`~arvision.nn.kv_cache.KVCache` written at
the explicit sequence positions ``[start, start + L)``.

Legend: B batch, L positions of this call, C width, H heads, Dh head dim, D condition width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision.config import Config
from arvision.nn.kv_cache import KVCache
from arvision.nn.linear import Linear, linear
from arvision.runtime import attention_dtype, fp32_attention

_CHOICES = {
    "conditioning": ("prefix", "adaln"),
    "attention": ("plain", "cosine"),
    "qkv_bias": ("none", "qv", "qkv"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "gelu-exact", "swiglu"),
}


@dataclass(frozen=True, kw_only=True)
class TransformerConfig(Config):
    """Backbone options (see the module docstring for what each anchor uses).

    Args:
        depth, width, num_heads: layers, model width C and attention heads.
        conditioning: "prefix" (the class is a token of the sequence) or "adaln" (it also
            modulates every block; needs ``cond_dim``).
        shared_adaln: one AdaLN projection for all blocks plus a per-block offset (VAR-d36).
        attention: "plain" or "cosine" (l2-normalised q/k with a learnable per-head scale).
        attn_scale_mult: multiplies 1/sqrt(head_dim) in plain attention (VAR's non-cosine uses 0.25).
        qkv_bias: "none", "qv" (learned q and v biases, no k bias, as in VAR) or "qkv" (one bias on
            the fused qkv projection, timm's ViT block as in MAR).
        proj_bias, mlp_bias: biases of the attention output and MLP linears.
        norm, norm_eps: "layernorm" or "rmsnorm".
        mlp, mlp_ratio, mlp_multiple_of: "gelu" (tanh approximation, VAR) or "gelu-exact" (erf, timm /
            MAR) with hidden = ratio * C, or "swiglu" with hidden = round_up(2/3 * ratio * C, multiple_of)
            (LlamaGen).
    """

    depth: int = 12
    width: int = 768
    num_heads: int = 12
    conditioning: str = "prefix"
    cond_dim: int = 0
    shared_adaln: bool = False
    attention: str = "plain"
    attn_scale_mult: float = 1.0
    qkv_bias: str = "none"
    proj_bias: bool = False
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "swiglu"
    mlp_ratio: float = 4.0
    mlp_multiple_of: int = 256
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")
        if self.depth < 1 or self.width < 1 or self.num_heads < 1 or self.width % self.num_heads:
            raise ValueError(f"need depth, width, num_heads >= 1 with width divisible by num_heads, got {self}")
        if self.conditioning == "adaln" and self.cond_dim < 1:
            raise ValueError("conditioning='adaln' needs cond_dim >= 1 (the class-embedding width)")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        if self.mlp != "swiglu":
            return round(self.width * self.mlp_ratio)
        hidden = int(2 * self.mlp_ratio * self.width / 3)
        return -(-hidden // self.mlp_multiple_of) * self.mlp_multiple_of


def group_causal_mask(groups_q: Tensor, groups_k: Tensor) -> Tensor:
    """Boolean (Lq, Lk) mask: query i may attend key j iff group(j) <= group(i).

    One rule covers every order: a group per position is causal (raster), a group per scale is
    VAR's block-causal mask, a single group is bidirectional (masked orders).
    """
    return groups_k.unsqueeze(0) <= groups_q.unsqueeze(1)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (LlamaGen)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def make_norm(cfg: TransformerConfig, *, affine: bool) -> nn.Module:
    if cfg.norm == "rmsnorm":
        if not affine:
            raise ValueError("AdaLN conditioning needs norm='layernorm' (a norm without affine parameters)")
        return RMSNorm(cfg.width, cfg.norm_eps)
    return nn.LayerNorm(cfg.width, eps=cfg.norm_eps, elementwise_affine=affine)


def apply_rope(x_BHLD: Tensor, rope_LP2: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by the angles in ``rope_LP2`` = (L, Dh/2, [cos, sin]).

    One complex product in float32: (x0 + i x1)(cos + i sin) = (x0 cos - x1 sin) + i (x1 cos + x0 sin),
    bit for bit the official real-valued formula (ATen's complex product is those four products and
    two sums, no fused multiply-add; tests/test_cpu_inference.py checks it) in 1 kernel instead of ~10
    (a decode step of GPT-B calls this 24 times on tiny tensors, where launch overhead dominates).
    Returns ``dtype`` (default: ``x_BHLD``'s)."""
    xf = x_BHLD.float().unflatten(-1, (-1, 2))
    if xf.stride(-1) != 1 or any(st % 2 for st in xf.stride()[:-1]) or xf.storage_offset() % 2:
        xf = xf.clone(memory_format=torch.contiguous_format)  # view_as_complex needs complex-aligned strides and offset
    rope = rope_LP2 if rope_LP2.is_contiguous() else rope_LP2.contiguous()
    out = torch.view_as_complex(xf) * torch.view_as_complex(rope.float())
    return torch.view_as_real(out).flatten(-2).to(dtype or x_BHLD.dtype)


def attend(q: Tensor, k: Tensor, v: Tensor, *, attn_mask: Tensor | None, is_causal: bool, scale: float) -> Tensor:
    """Scaled dot-product attention; in float32 where :func:`~arvision.runtime.fp32_attention` says so
    (CPU autocast on a CPU without AMX; autocast is off for the call, which would cast back to bf16),
    then returning float32."""
    if not fp32_attention(q.device):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask, is_causal=is_causal, scale=scale)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        C, H = cfg.width, cfg.num_heads
        self.num_heads, self.head_dim = H, cfg.head_dim
        self.qkv = Linear(C, 3 * C, bias=cfg.qkv_bias == "qkv")
        self.cosine = cfg.attention == "cosine"
        if cfg.qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(C))
            self.v_bias = nn.Parameter(torch.zeros(C))
            self.register_buffer("zero_k_bias", torch.zeros(C), persistent=False)
        if self.cosine:
            # log of the per-head temperature; VAR initialises it to log(4) and caps it at log(100).
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
            self.scale = 1.0
        else:
            self.scale = cfg.attn_scale_mult / math.sqrt(self.head_dim)
        self.proj = Linear(C, C, bias=cfg.proj_bias)

    def forward(self, x_BLC: Tensor, *, attn_mask: Tensor | None, is_causal: bool, rope: Tensor | None,
                cache: KVCache | None, start: int, layer: int) -> Tensor:  # fmt: skip
        B, L, C = x_BLC.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias]) if hasattr(self, "q_bias") else self.qkv.bias
        qkv = linear(x_BLC, self.qkv, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        if self.cosine:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(math.log(100)).exp())
            k = F.normalize(k, dim=-1)
        if rope is not None:
            dtype = torch.float32 if fp32_attention(q.device) else q.dtype  # attention's: no round trip through bf16
            q, k = apply_rope(q, rope, dtype), apply_rope(k, rope, dtype)
        if cache is not None:
            k, v = cache.write(layer, start, k, v)
        out = attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        C, Hd, bias = cfg.width, cfg.mlp_hidden, cfg.mlp_bias
        self.swiglu = cfg.mlp == "swiglu"
        self.activation = "gelu_tanh" if cfg.mlp == "gelu" else "gelu"
        if self.swiglu:
            self.w1, self.w3, self.w2 = Linear(C, Hd, bias=bias), Linear(C, Hd, bias=bias), Linear(Hd, C, bias=bias)
        else:
            self.fc1, self.fc2 = Linear(C, Hd, bias=bias), Linear(Hd, C, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.swiglu:
            return self.w2(linear(x, self.w1, self.w1.bias, "silu") * self.w3(x))
        return self.fc2(linear(x, self.fc1, self.fc1.bias, self.activation))


class Block(nn.Module):
    """Pre-norm attention + MLP; with AdaLN, x + gamma * f(norm(x) * (1 + scale) + shift)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.adaln = cfg.conditioning == "adaln"
        self.norm1 = make_norm(cfg, affine=not self.adaln)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg, affine=not self.adaln)
        self.mlp = MLP(cfg)
        if self.adaln:
            if cfg.shared_adaln:
                self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, cfg.width) / cfg.width**0.5)
            else:
                self.ada_lin = nn.Sequential(nn.SiLU(), Linear(cfg.cond_dim, 6 * cfg.width))

    def forward(self, x: Tensor, cond: Tensor | None, **attn_kw) -> Tensor:
        if not self.adaln:
            x = x + self.attn(self.norm1(x), **attn_kw)
            return x + self.mlp(self.norm2(x))
        # VAR's chunk order: gamma1, gamma2, scale1, scale2, shift1, shift2.
        ada = cond + self.ada_gss if hasattr(self, "ada_gss") else self.ada_lin(cond).view(-1, 1, 6, x.shape[-1])
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)
        x = x + self.attn(self.norm1(x).mul(scale1 + 1).add(shift1), **attn_kw).mul(gamma1)
        return x + self.mlp(self.norm2(x).mul(scale2 + 1).add(shift2)).mul(gamma2)


class AdaLNHeadNorm(nn.Module):
    """VAR's ``AdaLNBeforeHead``: norm(x) * (1 + scale) + shift from the condition."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg, affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(cfg.cond_dim, 2 * cfg.width))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, x.shape[-1]).unbind(2)
        return self.norm(x).mul(scale + 1).add(shift)


class Transformer(nn.Module):
    """Blocks + final norm: (B, L, C) -> (B, L, C). The order adds embeddings and the head."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        if cfg.conditioning == "adaln" and cfg.shared_adaln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), Linear(cfg.cond_dim, 6 * cfg.width))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        if cfg.conditioning == "adaln":
            self.head_nm = AdaLNHeadNorm(cfg)
        else:
            self.norm = make_norm(cfg, affine=True)

    def forward(self, x_BLC: Tensor, *, cond_BD: Tensor | None = None, attn_mask: Tensor | None = None,
                is_causal: bool = False, rope: Tensor | None = None, cache: KVCache | None = None,
                start: int = 0, block_ends: Sequence[int] | None = None) -> Tensor:  # fmt: skip
        """Run the blocks (all of them, or a weight-shared subnet per position with ``block_ends``).

        Args:
            x_BLC: input embeddings of the positions computed in this call.
            cond_BD: the condition (class embedding) for AdaLN; ignored with prefix conditioning.
            attn_mask: boolean (L, Lk) "may attend" mask, Lk = cached + L; None = attend to all.
            is_causal: plain causal attention without an explicit mask (training / prefill).
            rope: (L, Dh/2, 2) cos/sin of these positions, or None.
            cache: a KVCache to read and write: this call's keys/values go to positions
                [start, start + L) and the cache then holds start + L positions.
            start: sequence position of the first input (with a cache; 0 without).
            block_ends: per block, the sequence position where it stops: block i computes the
                positions [start, block_ends[i]) of this call and every later position passes it
                unchanged (and gets no keys/values in its cache layer). None = every block computes
                every position. A depth schedule whose subnets nest (each position uses a subset of
                the blocks of every earlier one, VARiant) is one number per block, so the same
                argument serves teacher-forced training and cached decoding; the attention mask
                must keep a block's positions from attending to later ones.
        """
        cfg = self.config
        if block_ends is not None and len(block_ends) != cfg.depth:
            raise ValueError(f"block_ends needs one position per block ({cfg.depth}), got {len(block_ends)}")
        cond = None
        if cfg.conditioning == "adaln":
            if cond_BD is None:
                raise ValueError("this backbone uses AdaLN conditioning: pass cond_BD")
            cond = self.shared_ada_lin(cond_BD).view(-1, 1, 6, cfg.width) if cfg.shared_adaln else cond_BD
        h, L = x_BLC, x_BLC.shape[1]
        for i, block in enumerate(self.blocks):
            n = L if block_ends is None else min(max(block_ends[i] - start, 0), L)  # positions of this call block i computes
            if n == L:
                h = block(h, cond, attn_mask=attn_mask, is_causal=is_causal, rope=rope, cache=cache, start=start, layer=i)
            elif n > 0:
                mask = None if attn_mask is None else attn_mask[:n, : attn_mask.shape[1] - L + n]
                part = block(h[:, :n], cond, attn_mask=mask, is_causal=is_causal, rope=None if rope is None else rope[:n],
                             cache=cache, start=start, layer=i)  # fmt: skip
                h = torch.cat([part, h[:, n:]], 1)
        if cache is not None:
            cache.commit(start + x_BLC.shape[1])
        return self.head_nm(h, cond_BD) if cfg.conditioning == "adaln" else self.norm(h)

    def subnet(self, depth: int) -> tuple[int, ...]:
        """The ``depth`` blocks of a weight-shared subnet (VARiant, Chen et al. 2025, arXiv:2511.16546):
        equidistant indices floor(i (D - 1) / (depth - 1)), i < depth, which keep the first and the
        last block; depth 1 = the first block, depth D = every block."""
        D = self.config.depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= D:
            raise ValueError(f"a subnet of this backbone has 1..{D} blocks, got {depth!r}")
        return tuple(i * (D - 1) // (depth - 1) for i in range(depth)) if depth > 1 else (0,)

    def new_cache(self, batch_size: int, max_len: int, *, dtype: torch.dtype | None = None, device=None) -> KVCache:
        """A cache in the dtype attention runs in (:func:`~arvision.runtime.attention_dtype`: float32
        under CPU autocast without AMX, the autocast dtype elsewhere under autocast, else the weights')."""
        p = next(self.parameters())
        dtype = dtype or attention_dtype(device or p.device, p.dtype)
        return KVCache(num_layers=self.config.depth, batch_size=batch_size, num_heads=self.config.num_heads,
                       max_len=max_len, head_dim=self.config.head_dim, dtype=dtype, device=device or p.device)  # fmt: skip
