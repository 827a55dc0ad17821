"""Per-image random streams: the same seed gives the same images whatever the batch size.

A batch drawn from one ``torch.Generator`` (as the official VAR / LlamaGen / MAR code does) ties
every image to the batch it was sampled in: image 5 of a run with batch size 4 differs from image
5 of the same run with batch size 8, and a server that merges requests would change them too.
:class:`RowStreams` gives every image (row) its own generator, seeded from the run's seed and the
image's index (:func:`image_seeds`), so image ``i`` of ``pipe.sample(..., seed=s)`` is the same
alone, in any batch, on any number of processes, and after an interrupted run resumes.

Every random draw of the decoding layer goes through the functions here (:func:`rand`,
:func:`randn`, :func:`randint`, :func:`multinomial`); they take either a plain ``torch.Generator``
(or None), drawing exactly as ``torch.rand(..., generator=g)`` does (the official single stream;
``Pipeline.sample(seed=torch.Generator)``), or a :class:`RowStreams`, drawing each image's rows
from that image's generator.

Row layout: a draw's first dimension is split into equal consecutive blocks, one per stream row,
batch-major (``(B * T, V)`` logits of ``(B, T, V)``: image b owns rows ``b*T .. b*T+T-1``);
:meth:`RowStreams.regroup` names the owner of every row where the blocks are ragged (MAR's
diffusion head samples a different number of tokens per image).
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
from torch import Tensor

_MASK = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over a running hash): nearby inputs give
    unrelated seeds, so image i and image i + 1 draw independent streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 29
    return h >> 1


def image_seeds(seed: int, n: int, start: int = 0) -> list[int]:
    """The seeds of images ``start .. start + n - 1`` of a run seeded with ``seed``
    (``Pipeline.sample(seed=seed)`` uses ``image_seeds(seed, N)``)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    return [_mix(seed, i) for i in range(start, start + n)]


def random_seed() -> int:
    """A fresh seed for an unseeded run (``seed=None``)."""
    return random.SystemRandom().getrandbits(62)


class RowStreams:
    """One ``torch.Generator`` per image: draws for image b come from ``generators[b]`` only.

    ``owner`` (optional, one entry per row of a draw's first dimension) maps rows to images where
    rows are not the images themselves (:meth:`regroup`); streams and seeds are shared with the
    object it was made from."""

    def __init__(self, generators: Sequence[torch.Generator], seeds: Sequence[int], owner: Sequence[int] | None = None) -> None:
        if len(generators) != len(seeds):
            raise ValueError(f"{len(generators)} generators for {len(seeds)} seeds")
        self.generators, self.seeds = list(generators), [int(s) for s in seeds]
        self.owner = None if owner is None else [int(o) for o in owner]

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> "RowStreams":
        gens = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s))
            gens.append(g)
        return cls(gens, seeds)

    def __len__(self) -> int:
        return len(self.generators) if self.owner is None else len(self.owner)

    @property
    def device(self) -> torch.device:
        return self.generators[0].device if self.generators else torch.device("cpu")

    def rows(self, part: slice) -> "RowStreams":
        """The streams of images ``part`` (the same generator objects: draws advance them)."""
        return RowStreams(self.generators[part], self.seeds[part])

    def regroup(self, owner_N: Tensor | Sequence[int]) -> "RowStreams":
        """A view whose rows are owned by the images ``owner_N`` (e.g. the image of each token a
        step samples, in (image, position) order)."""
        owner = owner_N.tolist() if isinstance(owner_N, Tensor) else list(owner_N)
        if owner and not 0 <= min(owner) <= max(owner) < len(self.generators):
            raise ValueError(f"row owners must index the {len(self.generators)} streams, got {min(owner)}..{max(owner)}")
        return RowStreams(self.generators, self.seeds, owner)

    def _fork(self, row: int) -> tuple[torch.Generator, int]:
        """A new stream (and its seed) for another copy of candidate ``row``: seeded from the
        candidate's seed and a draw from its own stream, so copies differ from each other and
        from every earlier copy, and depend on nothing but that candidate's history."""
        seed = _mix(self.seeds[row], int(torch.randint(1 << 62, (1,), generator=self.generators[row], device=self.device)))
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g, seed

    def expand(self, n: int) -> "RowStreams":
        """``n`` candidate streams per image, image-major (best-of-N, a search's first batch):
        candidate 0 continues the image's own stream (best-of-1 is the plain image), the others
        have streams of their own, seeded from the image's seed and the candidate index."""
        if n == 1:
            return self
        gens, seeds = [], []
        for g, s in zip(self.generators, self.seeds):
            first = torch.Generator(device=self.device)
            first.set_state(g.get_state())
            gens.append(first)
            seeds.append(s)
            for k in range(1, n):
                seeds.append(_mix(s, 0xCA4D, k))
                gens.append(torch.Generator(device=self.device))
                gens[-1].manual_seed(seeds[-1])
        return RowStreams(gens, seeds)

    def select(self, rows_N: Tensor | Sequence[int]) -> "RowStreams":
        """The streams of the images ``rows_N`` (a search keeping, dropping or duplicating
        candidates): the first copy of a row continues its stream, further copies get new ones."""
        rows = rows_N.tolist() if isinstance(rows_N, Tensor) else list(rows_N)
        taken: set[int] = set()
        gens, seeds = [], []
        for r in rows:
            g, s = (self.generators[r], self.seeds[r]) if r not in taken else self._fork(r)
            gens.append(g)
            seeds.append(s)
            taken.add(r)
        return RowStreams(gens, seeds)

    def _runs(self, n: int) -> list[tuple[int, int, torch.Generator]]:
        """(start, stop, generator) over the ``n`` rows of a draw: consecutive rows of one image in
        one draw (an image's rows are always consecutive in the layouts the orders use, so an
        image draws the same pieces whatever else is in the batch)."""
        owner = list(range(len(self.generators))) if self.owner is None else self.owner
        R = len(owner)
        if R == 0 or n % R:
            raise ValueError(f"a draw of {n} rows does not split into the {R} rows of these per-image streams")
        m = n // R
        runs: list[tuple[int, int, torch.Generator]] = []
        for r, o in enumerate(owner):
            if runs and runs[-1][2] is self.generators[o] and runs[-1][1] == r * m:
                runs[-1] = (runs[-1][0], (r + 1) * m, runs[-1][2])
            else:
                runs.append((r * m, (r + 1) * m, self.generators[o]))
        return runs


Rng = torch.Generator | RowStreams | None


def _draw(rng: RowStreams, shape: Sequence[int], fn) -> Tensor:
    shape = tuple(shape)
    return torch.cat([fn((b - a, *shape[1:]), g) for a, b, g in rng._runs(shape[0])])


def rand(shape: Sequence[int], rng: Rng, *, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.rand(shape, generator=rng)``; with :class:`RowStreams`, each image's rows from its own stream."""
    if not isinstance(rng, RowStreams):
        return torch.rand(tuple(shape), generator=rng, device=device, dtype=dtype)
    return _draw(rng, shape, lambda sh, g: torch.rand(sh, generator=g, device=device, dtype=dtype))


def randn(shape: Sequence[int], rng: Rng, *, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.randn(shape, generator=rng)``; per-image rows as in :func:`rand`."""
    if not isinstance(rng, RowStreams):
        return torch.randn(tuple(shape), generator=rng, device=device, dtype=dtype)
    return _draw(rng, shape, lambda sh, g: torch.randn(sh, generator=g, device=device, dtype=dtype))


def randint(high: int, shape: Sequence[int], rng: Rng, *, device=None) -> Tensor:
    """``torch.randint(high, shape, generator=rng)``; per-image rows as in :func:`rand`."""
    if not isinstance(rng, RowStreams):
        return torch.randint(high, tuple(shape), generator=rng, device=device)
    return _draw(rng, shape, lambda sh, g: torch.randint(high, sh, generator=g, device=device))


def multinomial(probs_NV: Tensor, num_samples: int, rng: Rng, *, replacement: bool = False) -> Tensor:
    """``torch.multinomial(probs_NV, num_samples, replacement, generator=rng)``; per-image rows as in :func:`rand`."""
    if not isinstance(rng, RowStreams):
        return torch.multinomial(probs_NV, num_samples, replacement=replacement, generator=rng)
    return torch.cat([torch.multinomial(probs_NV[a:b], num_samples, replacement=replacement, generator=g) for a, b, g in rng._runs(probs_NV.shape[0])])


def randn_halves(n: int, dim: int, rng: Rng, *, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """(2n, dim) normal noise for the two halves of a guided batch ([conditional; null] rows):
    one (2n, dim) draw from a plain generator (the official order), per-image streams draw each
    half as its own n-row draw (one draw of 2n values would not equal two of n)."""
    if not isinstance(rng, RowStreams):
        return torch.randn((2 * n, dim), generator=rng, device=device, dtype=dtype)
    return torch.cat([randn((n, dim), rng, device=device, dtype=dtype) for _ in range(2)])


def rows(rng: Rng, part: slice) -> Rng:
    """The streams of images ``part`` (a plain generator is shared by every batch)."""
    return rng.rows(part) if isinstance(rng, RowStreams) else rng


def expand(rng: Rng, n: int) -> Rng:
    """``n`` candidate streams per image (:meth:`RowStreams.expand`; a plain generator is shared)."""
    return rng.expand(n) if isinstance(rng, RowStreams) else rng


def select(rng: Rng, rows_N: Tensor) -> Rng:
    """The streams of the kept candidates (:meth:`RowStreams.select`; a plain generator is shared)."""
    return rng.select(rows_N) if isinstance(rng, RowStreams) else rng


def request_stream(rng: Rng, q: int) -> Rng:
    """Image ``q``'s own stream for per-image decisions (a search's clustering and resampling)."""
    return rng.generators[q] if isinstance(rng, RowStreams) else rng


def rng_device(rng: Rng) -> torch.device:
    """Where draws from ``rng`` happen (its device; CPU without one)."""
    return rng.device if rng is not None else torch.device("cpu")
