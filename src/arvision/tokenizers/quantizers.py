"""Vector quantizers: single-scale (LlamaGen) and multi-scale residual (VAR).

Both return a :class:`QuantizerOutput`, so tokenizer training, dead-code restarts and codebook
statistics treat them alike.

Legend: B batch, C (= D) code dimension, h/w latent height/width, N flattened vectors,
V codebook size, S number of scales, pn side of one scale, L total tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What a quantizer's training forward returns.

    Attributes:
        z_q: quantized latent (B, D, h, w) with a straight-through gradient to the encoder.
        indices: token ids (B, L), in the tokenizer's token layout.
        loss: codebook + beta * commitment loss (scalar).
        candidates: detached encoder vectors (N, D) that dead codes may be restarted from.
        parts: the sub-code maps of a factorized quantizer [(B, D/K, h, w)] (for alignment hooks).
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    candidates: Tensor
    parts: list[Tensor] | None = None


class _Codebook(nn.Module):
    """Shared parts: the ``embedding`` table and dead-code restarts."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    @torch.no_grad()
    def restart_codes(self, dead_V: Tensor, candidates_ND: Tensor, generator: torch.Generator) -> int:
        """Move every dead code onto a randomly chosen recent encoder vector.

        A standard remedy against codebook collapse (e.g. Dhariwal et al. 2020, "Jukebox", §3.1):
        a code no input selected since the last check cannot receive gradient, so it is re-seeded
        where the encoder's outputs actually are. Returns the number of codes restarted.
        """
        num_dead = int(dead_V.sum())
        if num_dead == 0 or candidates_ND.shape[0] == 0:
            return 0
        pick = torch.randint(candidates_ND.shape[0], (num_dead,), generator=generator)
        self.embedding.weight.data[dead_V.to(self.embedding.weight.device)] = candidates_ND[pick.to(candidates_ND.device)].to(
            self.embedding.weight.dtype
        )
        return num_dead


class VectorQuantizer(_Codebook):
    """Nearest-neighbour codebook lookup, as in LlamaGen's ``VectorQuantizer``.

    With ``l2_norm`` both the latent vectors and the codes are L2-normalised before the search
    (cosine nearest neighbour, "Vector-quantized Image Modeling with Improved VQGAN", Yu et al.
    2021), which keeps codebook usage high; the stored weights are not normalised.
    """

    def __init__(self, codebook_size: int, dim: int, *, beta: float = 0.25, l2_norm: bool = True) -> None:
        super().__init__(codebook_size, dim)
        self.beta = beta
        self.l2_norm = l2_norm

    def codes(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def lookup(self, z_ND: Tensor) -> Tensor:
        """Index (N,) of the nearest code of each row of ``z_ND`` (already normalised if l2_norm)."""
        e_VD = self.codes()
        d_NV = z_ND.square().sum(1, keepdim=True) + e_VD.square().sum(1) - 2 * z_ND @ e_VD.t()
        return d_NV.argmin(1)

    def forward(self, z_BDhw: Tensor) -> QuantizerOutput:
        B, D, h, w = z_BDhw.shape
        z_BhwD = z_BDhw.permute(0, 2, 3, 1)
        if self.l2_norm:
            z_BhwD = F.normalize(z_BhwD, dim=-1)
        z_ND = z_BhwD.reshape(-1, D)
        idx_N = self.lookup(z_ND.detach())
        zq_BhwD = self.codes()[idx_N].view(B, h, w, D)
        loss = F.mse_loss(zq_BhwD, z_BhwD.detach()) + self.beta * F.mse_loss(z_BhwD, zq_BhwD.detach())
        zq_BhwD = z_BhwD + (zq_BhwD - z_BhwD).detach()  # straight-through estimator
        return QuantizerOutput(
            z_q=zq_BhwD.permute(0, 3, 1, 2).contiguous(),
            indices=idx_N.view(B, h * w),
            loss=loss,
            candidates=z_ND.detach(),
        )

    def quantize(self, z_BDhw: Tensor) -> Tensor:
        """Token ids (B, h*w) in raster order."""
        B, D, h, w = z_BDhw.shape
        z_ND = z_BDhw.permute(0, 2, 3, 1).reshape(-1, D)
        if self.l2_norm:
            z_ND = F.normalize(z_ND, dim=-1)
        return self.lookup(z_ND).view(B, h * w)

    def embed(self, idx_BL: Tensor, h: int, w: int) -> Tensor:
        """Codes of token ids (B, h*w) as a latent (B, D, h, w)."""
        return self.codes()[idx_BL].view(idx_BL.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# Multi-scale residual quantization (VAR, Tian et al. 2024, arXiv:2404.02905, §3.2 and Alg. 1)
# --------------------------------------------------------------------------------------------


class Phi(nn.Conv2d):
    """phi_k: h <- (1 - r) h + r conv3x3(h), the per-scale refinement applied after upsampling."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__(dim, dim, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h_BChw: Tensor) -> Tensor:
        return h_BChw.mul(1 - self.ratio) + super().forward(h_BChw).mul_(self.ratio)


def phi_index_table(num_scales: int, num_phi: int) -> list[int]:
    """Which of ``num_phi`` shared phi convs each scale uses (VAR's ``PhiPartiallyShared``).

    Scale k sits at t = k / (S - 1) in [0, 1] and picks the nearest of ``num_phi`` ticks. Some
    scales are exact ties (k = 2 and 7 of the 10-scale 256px schedule) broken by float64 rounding,
    so this reproduces VAR's numpy arithmetic exactly rather than rounding symbolically.
    """
    if num_phi == 4:
        ticks = np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi)
    else:
        ticks = np.linspace(1 / 2 / num_phi, 1 - 1 / 2 / num_phi, num_phi)
    denominator = max(num_scales - 1, 1)
    return [int(np.argmin(np.abs(ticks - si / denominator)).item()) for si in range(num_scales)]


class _PhiShared(nn.Module):
    def __init__(self, qresi: Phi) -> None:
        super().__init__()
        self.qresi = qresi


class _PhiPartiallyShared(nn.Module):
    def __init__(self, qresi_ls: list[Phi]) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(qresi_ls)


class MultiScaleQuantizer(_Codebook):
    """VAR's ``VectorQuantizer2``: one codebook shared by all scales, residual over scales.

    Encoding walks the scales from coarse to fine: area-downsample the residual to pn x pn,
    quantize, bicubic-upsample the codes back to h x w, refine with phi_k, add to the running
    reconstruction f_hat and subtract from the residual. Parameter names match VAR's
    (``embedding``, ``quant_resi.qresi_ls.{k}``).

    Args:
        codebook_size: V.
        dim: code dimension (VAR: 32).
        patch_nums: side of each scale, coarse to fine; the last equals the latent side.
        beta: commitment weight.
        quant_resi: phi mixing ratio r (0 -> phi is the identity).
        share_quant_resi: 0 = one phi per scale, 1 = one phi for all, K >= 2 = K shared phis.
        znorm: cosine instead of squared-L2 nearest neighbour.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        patch_nums: Sequence[int],
        beta: float = 0.25,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        znorm: bool = False,
    ) -> None:
        super().__init__(codebook_size, dim)
        self.patch_nums = tuple(patch_nums)
        self.beta = beta
        self.znorm = znorm
        S = len(self.patch_nums)

        def make_phi() -> nn.Module:
            return Phi(dim, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:  # VAR's PhiNonShared
            self.quant_resi: nn.Module = nn.ModuleList([make_phi() for _ in range(S)])
            self._phi_table = list(range(S))
            self._phis = list(self.quant_resi)
        elif share_quant_resi == 1:  # VAR's PhiShared
            self.quant_resi = _PhiShared(make_phi())
            self._phi_table = [0] * S
            self._phis = [self.quant_resi.qresi]
        else:  # VAR's PhiPartiallyShared
            self.quant_resi = _PhiPartiallyShared([make_phi() for _ in range(share_quant_resi)])
            self._phi_table = phi_index_table(S, share_quant_resi)
            self._phis = list(self.quant_resi.qresi_ls)

    # -- helpers --------------------------------------------------------------------------
    def phi(self, si: int) -> nn.Module:
        return self._phis[self._phi_table[si]]

    def _nearest(self, z_NC: Tensor) -> Tensor:
        e_VC = self.embedding.weight.detach()
        if self.znorm:
            return (F.normalize(z_NC, dim=-1) @ F.normalize(e_VC.t(), dim=0)).argmax(1)
        # Same operation order as VAR (|z|^2 + |e|^2 - 2 z e^T via addmm) so that indices match.
        d_NV = z_NC.square().sum(1, keepdim=True) + e_VC.square().sum(1)
        d_NV.addmm_(z_NC, e_VC.t(), alpha=-2, beta=1)
        return d_NV.argmin(1)

    def _scale_input(self, f_rest: Tensor, si: int) -> Tensor:
        pn = self.patch_nums[si]
        if si == len(self.patch_nums) - 1:
            return f_rest
        return F.interpolate(f_rest, size=(pn, pn), mode="area")

    def upsample_refine(self, h_BCpp: Tensor, si: int, size: int) -> Tensor:
        """phi_si(bicubic_up(h)), the contribution of scale ``si`` to f_hat."""
        if si != len(self.patch_nums) - 1:
            h_BCpp = F.interpolate(h_BCpp, size=(size, size), mode="bicubic")
        return self.phi(si)(h_BCpp)

    def embed(self, idx_Bl: Tensor, si: int) -> Tensor:
        """Codes of one scale's ids (B, pn*pn) as (B, C, pn, pn)."""
        pn = self.patch_nums[si]
        return self.embedding(idx_Bl).view(idx_Bl.shape[0], pn, pn, -1).permute(0, 3, 1, 2).contiguous()

    # -- training ---------------------------------------------------------------------------
    def forward(self, f_BChw: Tensor) -> QuantizerOutput:
        B, C, H, W = f_BChw.shape
        f_no_grad = f_BChw.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        loss = f_BChw.new_zeros(())
        indices, candidates = [], []
        S = len(self.patch_nums)
        for si, pn in enumerate(self.patch_nums):
            z_NC = self._scale_input(f_rest, si).permute(0, 2, 3, 1).reshape(-1, C)
            idx_N = self._nearest(z_NC)
            h = self.upsample_refine(self.embedding(idx_N).view(B, pn, pn, C).permute(0, 3, 1, 2), si, H)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            # VAR: commitment on the encoder (through f), codebook + phi loss through f_hat.
            loss = loss + self.beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_no_grad)
            indices.append(idx_N.view(B, pn * pn))
            candidates.append(z_NC)
        z_q = (f_hat.detach() - f_no_grad) + f_BChw  # straight-through estimator
        return QuantizerOutput(z_q=z_q, indices=torch.cat(indices, 1), loss=loss / S, candidates=torch.cat(candidates))

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def quantize(self, f_BChw: Tensor, *, return_fhats: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """Per-scale ids [(B, pn*pn)] and, if asked, the cumulative f_hat after each scale."""
        B, C, H, W = f_BChw.shape
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        idx_list, fhats = [], []
        for si, pn in enumerate(self.patch_nums):
            z_NC = self._scale_input(f_rest, si).permute(0, 2, 3, 1).reshape(-1, C)
            idx_N = self._nearest(z_NC)
            h = self.upsample_refine(self.embedding(idx_N).view(B, pn, pn, C).permute(0, 3, 1, 2), si, H)
            f_hat.add_(h)
            f_rest.sub_(h)
            idx_list.append(idx_N.view(B, pn * pn))
            if return_fhats:
                fhats.append(f_hat.clone())
        return idx_list, fhats

    def indices_to_fhat(self, idx_list: Sequence[Tensor], size: int) -> Tensor:
        """f_hat = sum_k phi_k(up(E[idx_k])) over the given scales, (B, C, size, size)."""
        f_hat = None
        for si, idx_Bl in enumerate(idx_list):
            h = self.upsample_refine(self.embed(idx_Bl, si), si, size)
            f_hat = h if f_hat is None else f_hat + h
        assert f_hat is not None
        return f_hat

    def teacher_forcing_input(self, idx_list: Sequence[Tensor], size: int) -> Tensor:
        """Inputs of scales 1..S-1 for all-at-once training, (B, L - pn_0^2, C).

        The input of scale k+1 is the area-downsampled *accumulated* f_hat after scales <= k
        (VAR's ``idxBl_to_var_input``), not an embedding of the raw ids.
        """
        B = idx_list[0].shape[0]
        C = self.embedding.weight.shape[1]
        f_hat = self.embedding.weight.new_zeros(B, C, size, size)
        next_inputs = []
        for si in range(len(self.patch_nums) - 1):
            f_hat = f_hat + self.upsample_refine(self.embed(idx_list[si], si), si, size)
            pn_next = self.patch_nums[si + 1]
            nxt = F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
            next_inputs.append(nxt.view(B, C, -1).transpose(1, 2))
        return torch.cat(next_inputs, 1)

    def next_scale_input(self, si: int, f_hat: Tensor, h_BCpp: Tensor) -> tuple[Tensor, Tensor]:
        """One sampling step: add scale ``si``'s codes to f_hat; return (f_hat, input of si+1).

        The second value is (B, C, pn_{si+1}, pn_{si+1}), or f_hat itself after the last scale
        (VAR's ``get_next_autoregressive_input``). Equal to :meth:`teacher_forcing_input` step by step.
        """
        size = f_hat.shape[-1]
        f_hat = f_hat + self.upsample_refine(h_BCpp, si, size)
        if si == len(self.patch_nums) - 1:
            return f_hat, f_hat
        pn_next = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
