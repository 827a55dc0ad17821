"""Quantizers without a learned codebook, and a factorized codebook.

* :class:`FSQuantizer`: finite scalar quantization (Mentzer et al. 2023, arXiv:2309.15505). Each
  latent channel is squashed with tanh and rounded to one of ``levels[i]`` values; the codebook is
  the implicit grid of all level combinations (prod(levels) codes), so there is no codebook or
  commitment loss and no code can die.
* :class:`LookupFreeQuantizer`: lookup-free quantization (LFQ, MAGVIT-v2, Yu et al. 2023,
  arXiv:2310.05737, §3.1): each channel becomes one bit, its sign; 2^D codes. ``spherical=True``
  is binary spherical quantization (BSQ, Zhao et al. 2024, arXiv:2406.07548): the latent is first
  projected onto the unit sphere and the codes are the sign vectors scaled by 1/sqrt(D). Both add
  an entropy penalty that makes every code confident (low per-sample entropy) and the codes used
  evenly (high entropy of the batch's average). Because p(code | z) factorizes over the bits,
  the per-sample entropy is exactly the sum of the per-bit entropies. The batch entropy is exact
  (over all 2^D codes) up to ``EXACT_BITS`` bits; beyond, it uses the per-bit marginals (BSQ's
  factorized estimate), an upper bound that is cheap for any D but blind to correlated bits (on
  MNIST with 8 bits it let two bits copy each other: 25 % of the codes used, against 100 % exact).
* :class:`FactorizedQuantizer`: K sub-codebooks, each quantizing its own D/K channels (FQGAN,
  Bai et al. 2024, arXiv:2411.16681); the code of a position is the concatenation of the K
  sub-codes and its token id is the mixed-radix number i_0 + V*i_1 + ... . FQGAN's
  disentanglement loss pushes the K sub-codes towards orthogonal directions so that they carry
  different information; its semantic alignment is a pluggable hook on the tokenizer
  (:attr:`ConvTokenizer.alignment_hook`).

Every quantizer has the interface :class:`VQTokenizer` uses: ``forward(z) -> QuantizerOutput``,
``quantize(z) -> ids``, ``embed(ids, h, w) -> latent`` and ``restart_codes``.

Legend: B batch, D channels of the latent (= code dimension), h/w latent side, N = B*h*w
vectors, V codes, K sub-codebooks.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision.tokenizers.quantizers import QuantizerOutput, VectorQuantizer

MAX_BITS = 20  # 2^20 codes: beyond that a generator's softmax over the ids is impractical
EXACT_BITS = 12  # LFQ/BSQ: the batch entropy over all 2^D codes up to this many bits, per-bit marginals beyond


def _to_rows(z_BDhw: Tensor) -> Tensor:
    """(B, D, h, w) -> (N, D), raster order."""
    return z_BDhw.permute(0, 2, 3, 1).reshape(-1, z_BDhw.shape[1])


def _to_map(z_ND: Tensor, B: int, h: int, w: int) -> Tensor:
    """(N, D) -> (B, D, h, w)."""
    return z_ND.view(B, h, w, -1).permute(0, 3, 1, 2).contiguous()


def _mixed_radix(digits_NK: Tensor, radices: Sequence[int]) -> Tensor:
    """Id of each row of digits: d_0 + r_0 * (d_1 + r_1 * (d_2 + ...))."""
    ids = torch.zeros(digits_NK.shape[0], dtype=torch.long, device=digits_NK.device)
    for k in reversed(range(len(radices))):
        ids = ids * radices[k] + digits_NK[:, k].long()
    return ids


def _digits(ids_N: Tensor, radices: Sequence[int]) -> Tensor:
    """Inverse of :func:`_mixed_radix`: (N, K) digits of each id."""
    out, rest = [], ids_N.long()
    for r in radices:
        out.append(rest % r)
        rest = rest // r
    return torch.stack(out, 1)


class _NoCodebook(nn.Module):
    """Shared by the quantizers whose codes are fixed: no dead codes, nothing to restart."""

    codebook_size: int

    def restart_codes(self, dead_V: Tensor, candidates_ND: Tensor, generator: torch.Generator) -> int:
        return 0

    @torch.no_grad()
    def quantize(self, z_BDhw: Tensor) -> Tensor:
        """Token ids (B, h*w) in raster order."""
        B, _, h, w = z_BDhw.shape
        return self.ids(_to_rows(z_BDhw)).view(B, h * w)

    def embed(self, idx_BL: Tensor, h: int, w: int) -> Tensor:
        """Codes of token ids (B, h*w) as a latent (B, D, h, w)."""
        return _to_map(self.code_vectors(idx_BL.reshape(-1)), idx_BL.shape[0], h, w)

    def ids(self, z_ND: Tensor) -> Tensor:
        raise NotImplementedError

    def code_vectors(self, ids_N: Tensor) -> Tensor:
        raise NotImplementedError


def check_fsq_levels(levels: Sequence[int], codebook_dim: int, codebook_size: int) -> None:
    """A clear error unless ``levels`` are ints >= 2, one per latent channel (``codebook_dim``), whose
    product is ``codebook_size`` (the settings every FSQ tokenizer takes)."""
    if not levels or any(not isinstance(v, int) or v < 2 for v in levels):
        raise ValueError(f"fsq needs levels: a tuple of ints >= 2, one per latent channel, e.g. (8, 6, 5); got {levels}")
    if len(levels) != codebook_dim:
        raise ValueError(f"fsq levels {levels} quantize {len(levels)} channels but codebook_dim is {codebook_dim}: "
                         f"set codebook_dim={len(levels)} (one channel per level)")  # fmt: skip
    if math.prod(levels) != codebook_size:
        raise ValueError(f"fsq levels {levels} give {math.prod(levels)} codes but codebook_size is {codebook_size}: "
                         f"set codebook_size={math.prod(levels)}")  # fmt: skip


class FSQuantizer(_NoCodebook):
    """Finite scalar quantization over ``len(levels)`` channels.

    Channel i is mapped to u = (tanh(z) + 1) / 2 * L_i - 1/2, in (-1/2, L_i - 1/2), and rounded
    (straight-through) to an integer digit 0..L_i-1: every level has a bin of the same width. The
    code value of digit d is 2d / (L_i - 1) - 1, in [-1, 1].
    """

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        self.codebook_size = math.prod(self.levels)
        self.register_buffer("_L", torch.tensor(self.levels, dtype=torch.float32), persistent=False)

    def _digits_float(self, z_ND: Tensor) -> Tensor:
        u = (torch.tanh(z_ND) + 1) / 2 * self._L - 0.5
        return u + (u.round() - u).detach()  # straight-through rounding

    def _values(self, digits_ND: Tensor) -> Tensor:
        return digits_ND * (2 / (self._L - 1)) - 1

    def forward(self, z_BDhw: Tensor) -> QuantizerOutput:
        B, D, h, w = z_BDhw.shape
        d_ND = self._digits_float(_to_rows(z_BDhw))
        ids = _mixed_radix(d_ND.detach().round(), self.levels)
        return QuantizerOutput(z_q=_to_map(self._values(d_ND), B, h, w), indices=ids.view(B, h * w),
                               loss=z_BDhw.new_zeros(()), candidates=z_BDhw.new_zeros(0, D))  # fmt: skip

    def ids(self, z_ND: Tensor) -> Tensor:
        return _mixed_radix(self._digits_float(z_ND).round(), self.levels)

    def code_vectors(self, ids_N: Tensor) -> Tensor:
        return self._values(_digits(ids_N, self.levels).float())


class LookupFreeQuantizer(_NoCodebook):
    """LFQ (``spherical=False``) or BSQ (``spherical=True``) over ``dim`` channels: 2^dim codes.

    Bit i of a token id is 1 when channel i is positive. The training loss is
    ``beta * commitment + entropy_weight * (mean per-sample entropy - entropy of the mean)``, the
    entropies in bits per channel (so the penalty lies in [-1, 1] whatever D), with
    p(bit_i = 1 | z) = sigmoid(4 * z_i / temperature) for LFQ, the posterior of codes at +-1 under
    a Gaussian of variance temperature / 2; BSQ uses the sphere coordinates scaled by sqrt(D).
    """

    def __init__(self, dim: int, *, spherical: bool = False, beta: float = 0.25, entropy_weight: float = 0.1,
                 temperature: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self.dim, self.spherical = dim, spherical
        self.beta, self.entropy_weight, self.temperature = beta, entropy_weight, temperature
        self.codebook_size = 2**dim
        self._scale = 1 / math.sqrt(dim) if spherical else 1.0  # the magnitude of a code coordinate
        # subtracted from the latent before the signs; moved by restart_codes when a bit dies
        self.register_buffer("center", torch.zeros(dim))

    def _project(self, z_ND: Tensor) -> Tensor:
        z_ND = z_ND - self.center
        return F.normalize(z_ND, dim=-1) if self.spherical else z_ND

    @torch.no_grad()
    def restart_codes(self, dead_V: Tensor, candidates_ND: Tensor, generator: torch.Generator) -> int:
        """Revive dead bits: a channel whose sign was the same for every recent latent vector
        carries no information, and the entropy penalty's gradient is small there (its sigmoid is
        saturated once the commitment loss has pulled the channel onto the code). Its centre moves
        to the median of those values, so that half of them flip. Returns the number of bits moved.
        (Found on MNIST: two of eight bits stayed positive, 25 % of the codes used.)"""
        if candidates_ND.shape[0] < 2:
            return 0
        signs = self._project(candidates_ND) > 0
        dead = signs.all(0) | (~signs).all(0)
        self.center[dead] = candidates_ND[:, dead].median(0).values.to(self.center.dtype)
        return int(dead.sum())

    def _sign(self, z_ND: Tensor) -> Tensor:
        return torch.where(z_ND > 0, 1.0, -1.0).to(z_ND.dtype) * self._scale

    def forward(self, z_BDhw: Tensor) -> QuantizerOutput:
        B, D, h, w = z_BDhw.shape
        u_ND = self._project(_to_rows(z_BDhw))
        q_ND = self._sign(u_ND.detach())
        commitment = F.mse_loss(u_ND, q_ND)
        p_ND = torch.sigmoid(4 * (u_ND / self._scale) / self.temperature)
        per_sample = _bit_entropy(p_ND).mean()
        of_mean = _code_entropy(p_ND) / D if D <= EXACT_BITS else _bit_entropy(p_ND.mean(0)).mean()
        loss = self.beta * commitment + self.entropy_weight * (per_sample - of_mean)
        zq_ND = u_ND + (q_ND - u_ND).detach()  # straight-through estimator
        ids = self.ids_from_signs(q_ND)
        return QuantizerOutput(z_q=_to_map(zq_ND, B, h, w), indices=ids.view(B, h * w), loss=loss,
                               candidates=_to_rows(z_BDhw).detach())  # fmt: skip

    def ids_from_signs(self, q_ND: Tensor) -> Tensor:
        return _mixed_radix((q_ND > 0).long(), (2,) * self.dim)

    def ids(self, z_ND: Tensor) -> Tensor:
        return self.ids_from_signs(self._project(z_ND))

    def code_vectors(self, ids_N: Tensor) -> Tensor:
        return (_digits(ids_N, (2,) * self.dim).float() * 2 - 1) * self._scale


def _code_entropy(p_ND: Tensor) -> Tensor:
    """Entropy in bits of the batch-average code distribution, over all 2^D codes: each row's
    p(code) is the product of its bits' Bernoulli probabilities."""
    D = p_ND.shape[1]
    bits_VD = _digits(torch.arange(2**D, device=p_ND.device), (2,) * D).to(p_ND.dtype)
    p = p_ND.clamp(1e-6, 1 - 1e-6)
    log_p_NV = p.log() @ bits_VD.t() + (1 - p).log() @ (1 - bits_VD).t()
    mean_V = log_p_NV.exp().mean(0)
    return -(mean_V * mean_V.clamp_min(1e-12).log2()).sum()


def _bit_entropy(p: Tensor) -> Tensor:
    """Entropy in bits of Bernoulli(p), elementwise; 0 at p in {0, 1}."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log2() + (1 - p) * (1 - p).log2())


class FactorizedQuantizer(nn.Module):
    """K cosine-similarity VQ sub-codebooks of ``sub_size`` codes, sub-codebook k on channels
    [k*D/K, (k+1)*D/K). Token id = i_0 + V*i_1 + ... (V = sub_size), so V^K ids in all.

    ``disentangle_weight`` adds FQGAN's loss: the mean over pairs of sub-codebooks of the squared
    cosine similarity of their (normalised) quantized vectors at the same position.
    """

    def __init__(self, sub_size: int, dim: int, num_codebooks: int, *, beta: float = 0.25,
                 disentangle_weight: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        self.sub_size, self.num_codebooks = sub_size, num_codebooks
        self.codebook_size = sub_size**num_codebooks
        self.sub_dim = dim // num_codebooks
        self.disentangle_weight = disentangle_weight
        self.codebooks = nn.ModuleList([VectorQuantizer(sub_size, self.sub_dim, beta=beta, l2_norm=True)
                                        for _ in range(num_codebooks)])  # fmt: skip
        self._radices = (sub_size,) * num_codebooks

    def _parts(self, z_BDhw: Tensor) -> list[Tensor]:
        return list(z_BDhw.split(self.sub_dim, dim=1))

    def forward(self, z_BDhw: Tensor) -> QuantizerOutput:
        B, D, h, w = z_BDhw.shape
        outs = [cb(part) for cb, part in zip(self.codebooks, self._parts(z_BDhw))]
        loss = sum(o.loss for o in outs) / self.num_codebooks
        if self.disentangle_weight > 0 and self.num_codebooks > 1:
            loss = loss + self.disentangle_weight * self.disentanglement([o.z_q for o in outs])
        digits = torch.stack([o.indices.reshape(-1) for o in outs], 1)
        return QuantizerOutput(
            z_q=torch.cat([o.z_q for o in outs], 1), indices=_mixed_radix(digits, self._radices).view(B, h * w), loss=loss,
            candidates=torch.cat([o.candidates for o in outs], 1), parts=[o.z_q for o in outs],
        )  # fmt: skip

    @staticmethod
    def disentanglement(parts: Sequence[Tensor]) -> Tensor:
        """Mean squared cosine similarity between every pair of sub-code maps (B, D/K, h, w)."""
        unit = [F.normalize(p, dim=1) for p in parts]
        pairs = [(a * b).sum(1).square().mean() for i, a in enumerate(unit) for b in unit[i + 1 :]]
        return torch.stack(pairs).mean()

    @torch.no_grad()
    def quantize(self, z_BDhw: Tensor) -> Tensor:
        B, _, h, w = z_BDhw.shape
        digits = torch.stack([cb.quantize(part).reshape(-1) for cb, part in zip(self.codebooks, self._parts(z_BDhw))], 1)
        return _mixed_radix(digits, self._radices).view(B, h * w)

    def embed(self, idx_BL: Tensor, h: int, w: int) -> Tensor:
        digits = _digits(idx_BL.reshape(-1), self._radices).view(*idx_BL.shape, -1)
        return torch.cat([cb.embed(digits[..., k], h, w) for k, cb in enumerate(self.codebooks)], 1)

    @torch.no_grad()
    def restart_codes(self, dead_V: Tensor, candidates_ND: Tensor, generator: torch.Generator) -> int:
        """Restart the sub-codes that no id used: sub-code j of codebook k is dead when every id
        with digit k = j is dead."""
        K, V = self.num_codebooks, self.sub_size
        dead = dead_V.view((V,) * K)  # axis K-1-k holds digit k (C order, digit 0 varies fastest)
        n = 0
        for k, cb in enumerate(self.codebooks):
            axis = K - 1 - k
            sub_dead = dead.all(dim=[a for a in range(K) if a != axis]) if K > 1 else dead
            n += cb.restart_codes(sub_dead, candidates_ND[:, k * self.sub_dim : (k + 1) * self.sub_dim], generator)
        return n
