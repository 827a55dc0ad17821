"""Pipelines: tokenizer + generator + default sampling settings -> images.

``arvision.load(dir)`` on a generator directory returns a :class:`Pipeline`. The directory holds
the generator (``config.json`` + ``model.safetensors``) and its tokenizer in ``tokenizer/``.

    pipe = arvision.load("mnist-scale")
    images = pipe.generate(classes=[3, 7], n_per_class=4, cfg=2.0, seed=0)   # (8, C, H, W) in [0, 1]
    edited = pipe.edit(images, mask, classes=[3, 7] * 4, seed=0)              # regenerate where mask is True

Decoding runs through the one loop (:func:`arvision.samplers.decode`) for every order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from arvision.errors import ModelFileError
from arvision.generators import Generator
from arvision.runtime import check_precision, precision_scope, reuse_freed_memory
from arvision.modeling import resolve
from arvision.samplers import SamplingConfig, SamplingStats, StepInfo, check_settings, decode
from arvision.samplers.search import BestOfN, TTSVAR, best_of_n, check_budget, make_search, tts_var
from arvision.samplers.rng import Rng, RowStreams, image_seeds, random_seed
from arvision.samplers.rng import rows as rng_rows
from arvision.samplers.speculative import speculative_decode
from arvision.tokenizers import Tokenizer

TOKENIZER_DIR = "tokenizer"


@dataclass
class GenerationOutput:
    """Images (N, C, H, W) in [0, 1], their tokens (N, L), class ids (N,) and what it cost.
    For an edit, ``known`` (N, L) marks the tokens kept from the input; after a test-time search
    ``scores`` (N,) holds the reward of each image."""

    images: Tensor
    tokens: Tensor
    labels: Tensor
    stats: SamplingStats
    known: Tensor | None = None
    scores: Tensor | None = None  # a test-time search's reward of each returned image


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two models hold the same tensors (same names, shapes and values)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's config and tensors (names, dtypes, shapes, values): which model made a
    result, so that a resumed evaluation never mixes samples of two models that share a name or
    directory. The config counts too: a codec tokenizer's settings (JPEG restart markers) live
    there, not in its tensors."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# keywords of Pipeline.sample that are not sampling settings (models, a search, the compute precision)
CALL_OPTIONS = ("draft", "refiner", "search", "reward", "budget", "precision")


def pop_call_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove :data:`CALL_OPTIONS` from ``kwargs`` (sample's keywords) and return them; what is left
    are sampling settings (``pipe.sampling_config(**kwargs)``)."""
    return {k: kwargs.pop(k) for k in CALL_OPTIONS if k in kwargs}


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


class Pipeline:
    """Class-conditional image generation with one tokenizer and one generator."""

    def __init__(self, tokenizer: Tokenizer, generator: Generator) -> None:
        generator.check_layout(tokenizer.layout)
        self.tokenizer = tokenizer.eval()
        self.generator = generator.eval()
        self.last_stats: SamplingStats | None = None

    # -- info ------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.generator.config.num_classes

    @property
    def defaults(self) -> SamplingConfig:
        return self.generator.config.sampling

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def info(self) -> dict:
        return self.generator.info

    def to(self, device: str | torch.device) -> "Pipeline":
        self.tokenizer.to(device)
        self.generator.to(device)
        return self

    # -- generation ------------------------------------------------------------------------------
    def sampling_config(self, **overrides) -> SamplingConfig:
        """The model's defaults with the given (non-None) options replaced; validated for this
        generator's order (so bad settings fail before any work is done)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(SamplingConfig)}
        if unknown:
            raise TypeError(f"unknown sampling option(s) {sorted(unknown)}")
        s = self.defaults.replace(**{k: v for k, v in overrides.items() if v is not None})
        check_settings(self.generator, s, self.tokenizer)
        return s

    def class_ids(self, classes: Sequence[int] | int) -> list[int]:
        """Validated class ids from one id or a sequence of ids (ints, numpy ints or an int tensor)."""
        if isinstance(classes, (Tensor, np.ndarray)):
            classes = classes.tolist()
        if isinstance(classes, numbers.Integral) and not isinstance(classes, bool):
            classes = [classes]
        if isinstance(classes, (str, bytes, bool)) or not isinstance(classes, Iterable):
            raise TypeError(f"classes must be a class id or a sequence of class ids, got {classes!r}")
        ids = list(classes)
        if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in ids):
            raise TypeError(f"class ids must be integers, got {ids!r}")
        if not ids:
            raise ValueError("classes is empty: pass at least one class id")
        for c in ids:
            if not 0 <= c < self.num_classes:
                raise ValueError(f"unknown class id {c}: this model knows classes 0..{self.num_classes - 1}")
        return [int(c) for c in ids]

    def labels_for(self, classes: Sequence[int] | int | None, n_per_class: int) -> Tensor:
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class <= 0:
            raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
        ids = list(range(self.num_classes)) if classes is None else self.class_ids(classes)
        return torch.tensor(ids, device=self.device).repeat_interleave(n_per_class)

    def _generator(self, model, what: str) -> Generator | None:
        """A generator from a Pipeline, a Generator, a model directory or a shipped name (None stays None)."""
        if model is None or isinstance(model, Generator):
            return model
        if isinstance(model, Pipeline):
            return model.generator
        if isinstance(model, (str, os.PathLike)):
            return Pipeline.from_pretrained(resolve(model), device=self.device).generator
        raise TypeError(f"{what} must be a pipeline, a generator, a model directory or a shipped name, got {type(model).__name__}")

    def resolve_models(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` (:func:`pop_call_options`) with ``draft=`` and ``refiner=`` loaded and checked
        once, as generators, for a run of many ``sample`` calls."""
        out = dict(options)
        if out.get("refiner") is not None:
            out["refiner"] = self._refiner(out["refiner"])
        if out.get("draft") is not None:
            out["draft"] = self._generator(out["draft"], "draft")
        return out

    def weights_record(self, options: dict[str, Any]) -> dict[str, str]:
        """:func:`weights_digest` of every model a run with ``options`` (from :meth:`resolve_models`) uses."""
        record = {"generator": weights_digest(self.generator), "tokenizer": weights_digest(self.tokenizer)}
        record.update({k: weights_digest(options[k]) for k in ("draft", "refiner") if options.get(k) is not None})
        return record

    def _refiner(self, refiner) -> Generator | None:
        """CoDe's refiner as a generator; a pipeline's (or a directory's, a shipped model's) tokenizer
        must have this pipeline's tokenizer weights."""
        if isinstance(refiner, (str, os.PathLike)):
            refiner = Pipeline.from_pretrained(resolve(refiner), device=self.device)
        if isinstance(refiner, Pipeline) and not same_weights(refiner.tokenizer, self.tokenizer):
            raise ValueError("the refiner was trained with another tokenizer (its tokenizer's weights differ from this "
                             "pipeline's): CoDe needs both models on one tokenizer")  # fmt: skip
        return self._generator(refiner, "refiner")

    def _rng(self, seed: "int | Sequence[int] | torch.Generator | None", n: int) -> Rng:
        """The random streams of ``n`` images: one per image (:mod:`arvision.samplers.rng`) from an
        int seed (``image_seeds(seed, n)``), from one seed per image, or a fresh seed for None; a
        ``torch.Generator`` is used as it is, one stream for the whole call (as the official code draws)."""
        if isinstance(seed, torch.Generator):
            if seed.device.type != self.device.type:
                raise ValueError(f"seed is a torch.Generator on {seed.device}, but the model runs on {self.device}: "
                                 f"make it with torch.Generator(device={str(self.device)!r})")  # fmt: skip
            return seed
        if seed is None:
            seed = random_seed()
        if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            return RowStreams.from_seeds(image_seeds(int(seed), n), self.device)
        if isinstance(seed, (Tensor, np.ndarray)):
            seed = seed.tolist()
        if isinstance(seed, (str, bytes, bool)) or not isinstance(seed, Iterable):
            raise TypeError(f"seed must be an integer, one integer per image, a torch.Generator or None, got {seed!r}")
        seeds = list(seed)
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in seeds):
            raise TypeError(f"per-image seeds must be integers, got {seeds!r}")
        if len(seeds) != n:
            raise ValueError(f"seed has {len(seeds)} values for {n} images: pass one seed per image, or one integer for the call")
        return RowStreams.from_seeds([int(v) % (1 << 63) for v in seeds], self.device)

    def _run(self, labels: Tensor, s: SamplingConfig, seed: "int | Sequence[int] | torch.Generator | None", batch_size: int, progress: bool, decode_images: bool,
             prior: Tensor | None = None, known: Tensor | None = None, callback: Callable[[StepInfo], None] | None = None,
             draft: "Pipeline | Generator | str | os.PathLike | None" = None,
             refiner: "Pipeline | Generator | str | os.PathLike | None" = None, search=None, reward=None,
             budget: int | None = None, precision: str = "fp32") -> GenerationOutput:  # fmt: skip
        """Decode ``labels`` in batches, every image from its own random stream; tokens fixed where ``known``."""
        check_batch_size(batch_size)
        check_precision(precision, self.device)
        refiner = self._refiner(refiner)
        if refiner is not None and s.decoding != "plain":
            raise ValueError(f"refiner= is for collaborative next-scale decoding (draft_scales=K); it does not combine with decoding={s.decoding!r}")
        draft = self._generator(draft, "draft")
        if draft is not None and s.decoding == "plain":
            raise ValueError("draft= is used by speculative decoding: pass decoding='speculative' (or 'lantern')")
        gen = self._rng(seed, len(labels))
        run = functools.partial(decode, refiner=refiner) if s.decoding == "plain" else functools.partial(speculative_decode, draft=draft)
        if search is not None:
            if known is not None or callback is not None or refiner is not None:
                raise ValueError("a test-time search does not combine with editing, a step callback or a CoDe refiner")
            run, batch_size = self._searcher(s, run, search, reward, budget, batch_size, progress)
        elif reward is not None or budget is not None:
            raise ValueError("reward= and budget= are for a test-time search: pass search='best-of-n' or 'tts-var' too")
        stats, tokens, images, scores = SamplingStats(), [], [], []
        batches = range(0, len(labels), batch_size)  # progress: a bar over the batches, or over the steps of one batch
        with self._compute(precision):  # undone when the call returns
            for b in tqdm(batches, desc="generate", disable=not progress or len(batches) == 1, leave=False):
                part = slice(b, b + batch_size)
                out = run(self.generator, self.tokenizer, labels[part], s, rng_rows(gen, part), callback=callback,
                          progress=progress and len(batches) == 1,
                          prior_BL=None if prior is None else prior[part], known_BL=None if known is None else known[part])  # fmt: skip
                if search is not None:
                    out, imgs, sc = out
                    images.append(imgs)
                    scores.append(sc)
                elif decode_images:  # the order says how its finished state becomes images (FlexVAR: at the schedule's size)
                    imgs, ok = self.generator.order_class(self.generator, self.tokenizer).images_ok(out.state)
                    images.append(imgs)
                    out.stats.undecodable += int((~ok).sum())
                tokens.append(out.tokens)
                stats += out.stats
        self.last_stats = stats
        imgs = torch.cat(images).float().add(1).div(2).clamp(0, 1) if decode_images else torch.empty(0)
        return GenerationOutput(images=imgs, tokens=torch.cat(tokens), labels=labels, stats=stats, known=known,
                                scores=torch.cat(scores) if scores else None)  # fmt: skip

    def _compute(self, precision: str) -> contextlib.ExitStack:
        """What a sampling call runs under, undone when it returns: freed memory kept for reuse on
        CPU (:func:`arvision.runtime.reuse_freed_memory`) and the compute precision (bf16 = autocast
        over the generator's forward passes and the tokenizer's decoder; logits are sampled in fp32)."""
        stack = contextlib.ExitStack()
        if self.device.type == "cpu":
            stack.enter_context(reuse_freed_memory())
        stack.enter_context(precision_scope(precision, self.device))
        return stack

    def _searcher(self, s: SamplingConfig, decode_fn, search, reward, budget, batch_size: int, progress: bool):
        """(batch function, requests per batch) of a test-time search (``samplers/search.py``)."""
        from arvision.rewards import get_reward

        search = make_search(search)
        if reward is None:
            raise ValueError("a test-time search needs reward=: 'mnist-classifier', 'realism:REFERENCE' or a callable "
                             "reward(images, labels) -> one score per image (see arvision.rewards)")  # fmt: skip
        reward = get_reward(reward, device=self.device)
        if isinstance(search, BestOfN):
            if search.n is None and budget is None:
                raise ValueError("search='best-of-n' needs budget=N (candidates per image) or BestOfN(n=N)")
            n = search.n if search.n is not None else check_budget(budget)
            if budget is not None and n > check_budget(budget):
                raise ValueError(f"BestOfN(n={n}) decodes more candidates than budget={budget} allows")

            def run(generator, tokenizer, labels, s, rng, progress, **_):
                return best_of_n(generator, tokenizer, labels, s, rng, reward=reward, n=n, decode_fn=decode_fn, progress=progress)

            return run, max(1, batch_size // n)
        if s.decoding != "plain":
            raise ValueError(f"search='tts-var' decodes scale by scale; it does not combine with decoding={s.decoding!r}")
        if budget is None:
            raise ValueError("search='tts-var' needs budget=N: the compute of N plain decodings per image")
        check_budget(budget)
        groups = check_settings(self.generator, s, self.tokenizer)[-1].group + 1
        first = search.schedule(groups, budget)[0][0]

        def run(generator, tokenizer, labels, s, rng, progress, **_):
            return tts_var(generator, tokenizer, labels, s, rng, reward=reward, budget=budget, config=search, progress=progress)

        return run, max(1, batch_size // first)

    @torch.no_grad()
    def sample(self, classes: Sequence[int] | int | None = None, n_per_class: int = 1, *, seed: "int | Sequence[int] | torch.Generator | None" = 0,
               batch_size: int = 64, progress: bool = False, decode: bool = True,
               callback: Callable[[StepInfo], None] | None = None, draft=None, refiner=None,
               search: "str | BestOfN | TTSVAR | None" = None, reward=None, budget: int | None = None,
               precision: str = "fp32", **sampling) -> GenerationOutput:  # fmt: skip
        """Generate ``n_per_class`` samples of every class in ``classes`` (all of ``classes[0]`` first).

        Sampling options (``cfg``, ``cfg_schedule``, ``cfg_interval``, ``temperature``, ``top_k``,
        ``top_p``, ``num_steps``, ``choice_temperature``) default to the model's own (``pipe.defaults``);
        one the order cannot use is an error. ``callback(info)`` sees every decoding step's logits
        and state (:class:`~arvision.samplers.StepInfo`).

        ``seed``: every image has its own random stream, so image i is the same whatever the batch
        size, alone or among others: an int seeds image i with ``arvision.samplers.image_seeds(seed,
        N)[i]``; a sequence gives one seed per image (a server merging requests passes each
        request's own); None draws a fresh seed. A ``torch.Generator`` instead draws the whole call
        from that one stream, batch by batch, as the official VAR / LlamaGen / MAR code does (to
        reproduce their seeded outputs exactly).

        Fast decoding of the next-token order: ``decoding="sjd"`` (the model drafts ``window``
        tokens for itself), ``"speculative"`` (``draft=`` a small model with the same tokenizer:
        a pipeline, generator, directory or shipped name such as "mnist-raster-draft") or
        ``"lantern"`` (relaxed acceptance, ``lantern_k`` neighbours, ``lantern_delta``); see
        :mod:`arvision.samplers.speculative`. ``stats.draft_passes`` and
        ``stats.mean_accepted_length`` report what it bought.

        Fast decoding of the next-scale order: ``draft_scales=K`` with ``refiner=`` a small
        next-scale model trained with the same tokenizer (a pipeline, generator, directory or
        shipped name such as "mnist-scale-refiner"): this model decodes the first K scales, the
        refiner the rest (CoDe, :mod:`arvision.samplers.collaborative`); ``depth_schedule`` = blocks
        per scale runs the later scales on a weight-shared subnet of this model (VARiant, best with
        a model trained for it such as "mnist-scale-variant").

        Test-time search (:mod:`arvision.samplers.search`): ``search="best-of-n"`` (any order) or
        ``"tts-var"`` (next-scale orders), or a ``BestOfN(...)`` / ``TTSVAR(...)`` with its settings;
        ``reward`` = "mnist-classifier", "realism:REFERENCE" or a callable reward(images in [0, 1],
        labels) -> (N,) scores (:mod:`arvision.rewards`); ``budget`` = N: the compute of N plain
        decodings per image. ``scores`` of the output holds each image's reward;
        ``stats.candidate_passes`` counts every candidate's forward passes.

        ``precision="bf16"`` runs the generator's forward passes and the tokenizer's decoder under
        bf16 autocast (CPUs with AVX512-BF16/AMX, GPUs with bf16): faster, with logits still sampled
        in float32; tokens then differ from fp32 wherever rounding tips a draw. The default "fp32"
        is exact (the official code's arithmetic). Precision is how this call computes, not a
        property of the model: it is an argument here, not a saved sampling default.
        """
        s = self.sampling_config(**sampling)
        labels = self.labels_for(classes, n_per_class)
        return self._run(labels, s, seed, batch_size, progress, decode, callback=callback, draft=draft, refiner=refiner,
                         search=search, reward=reward, budget=budget, precision=precision)

    def generate(self, classes: Sequence[int] | int | None = None, n_per_class: int = 1, **kwargs) -> Tensor:
        """Images (N, C, H, W) in [0, 1]; same arguments as :meth:`sample`. Stats in ``last_stats``."""
        return self.sample(classes, n_per_class, **kwargs).images

    def generate_tokens(self, classes: Sequence[int] | int | None = None, n_per_class: int = 1, **kwargs) -> Tensor:
        """Tokens (N, L), undecoded; same arguments as :meth:`sample`."""
        return self.sample(classes, n_per_class, decode=False, **kwargs).tokens

    # -- editing -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_edit(self, images: Tensor | Sequence[Image.Image] | Image.Image, mask: Tensor, *,
                    classes: Sequence[int] | int, seed: "int | Sequence[int] | torch.Generator | None" = 0, batch_size: int = 64, progress: bool = False,
                    decode: bool = True, callback: Callable[[StepInfo], None] | None = None, refiner=None,
                    draft=None, precision: str = "fp32", **sampling) -> GenerationOutput:  # fmt: skip
        """Regenerate the masked region of ``images`` (in/out-painting, class-conditional editing).

        Args:
            images: (B, C, H, W) float in [0, 1] at the tokenizer's size, or PIL images (resized
                and centre-cropped to it).
            mask: (B, 1, H, W) or (1, 1, H, W) bool, True = regenerate. The mask is taken to every
                token grid / scale (:meth:`TokenLayout.token_mask`: on the finest grid a token is
                regenerated when any pixel of its cell is masked); every other token keeps the
                input's own token (teacher-forced / never masked / replaced at every scale, by order).
            classes: the class to generate, one id for all images or one per image.
            seed, batch_size, progress, decode, callback, refiner, draft, precision, sampling options: as in
                :meth:`sample` (the input images are encoded in fp32 either way).

        Returns the images in [0, 1] with their tokens and ``known`` (the kept tokens). An
        all-False mask returns the tokenizer's reconstruction of the input.
        """
        self.sampling_config(**sampling)  # bad options fail before the images are encoded
        check_batch_size(batch_size)
        check_precision(precision, self.device)
        x = self._edit_images(images)
        known = ~self.tokenizer.layout.token_mask(self._edit_mask(mask, x))
        self._edit_labels(classes, x.shape[0])
        prior = torch.cat([self.tokenizer.encode(x[b : b + batch_size].mul(2).sub(1)) for b in range(0, x.shape[0], batch_size)])
        return self.sample_completion(prior, known, classes=classes, seed=seed, batch_size=batch_size, progress=progress, decode=decode,
                                      callback=callback, refiner=refiner, draft=draft, precision=precision, **sampling)  # fmt: skip

    @torch.no_grad()
    def sample_completion(self, tokens: Tensor, known: Tensor, *, classes: Sequence[int] | int,
                          seed: "int | Sequence[int] | torch.Generator | None" = 0, batch_size: int = 64, progress: bool = False,
                          decode: bool = True, callback: Callable[[StepInfo], None] | None = None, refiner=None,
                          draft=None, precision: str = "fp32", **sampling) -> GenerationOutput:  # fmt: skip
        """Complete token sequences: keep ``tokens`` where ``known`` is True, generate the rest.

        The token-level form of :meth:`sample_edit`, for what a pixel mask cannot say: the first K
        scales of a next-scale image, the first rows of a grid, a prefix of a 1-D sequence
        (``tokens = pipe.tokenizer.encode(x)``; keep ``known[:, :k]``).

        Args:
            tokens: (B, L) token ids of this model's tokenizer ((B, L, D) vectors for continuous
                tokens); only the known ones are used, the others must still be valid.
            known: (B, L) or (L,) bool, True = keep that token.
            classes, seed, batch_size, progress, decode, callback, refiner, draft, precision, sampling
                options: as in :meth:`sample_edit`.
        """
        s = self.sampling_config(**sampling)
        check_batch_size(batch_size)
        self.tokenizer.check_tokens(tokens)
        B, L = tokens.shape[:2]
        if not isinstance(known, Tensor) or known.dtype != torch.bool:
            raise TypeError(f"known must be a bool tensor ({B}, {L}) or ({L},), True = keep the token; got {getattr(known, 'dtype', type(known).__name__)}")
        if known.shape not in ((L,), (1, L), (B, L)):
            raise ValueError(f"known must have shape ({B}, {L}) or ({L},) to match the tokens, got {tuple(known.shape)}")
        known = known.to(self.device).expand(B, L).clone()
        labels = self._edit_labels(classes, B)
        tokens = tokens.to(self.device)
        if bool(known.all()):  # nothing to generate: the tokens as they are
            check_precision(precision, self.device)
            with self._compute(precision):
                imgs = torch.cat([self.tokenizer.decode(tokens[b : b + batch_size]) for b in range(0, B, batch_size)]).float() if decode else None
            self.last_stats = SamplingStats(images=B, batches=-(-B // batch_size))
            return GenerationOutput(images=imgs.add(1).div(2).clamp(0, 1) if decode else torch.empty(0), tokens=tokens,
                                    labels=labels, stats=self.last_stats, known=known)  # fmt: skip
        return self._run(labels, s, seed, batch_size, progress, decode, prior=tokens, known=known,
                         callback=callback, refiner=refiner, draft=draft, precision=precision)  # fmt: skip

    def edit(self, images: Tensor | Sequence[Image.Image] | Image.Image, mask: Tensor, **kwargs) -> Tensor:
        """Edited images (B, C, H, W) in [0, 1]; same arguments as :meth:`sample_edit`."""
        return self.sample_edit(images, mask, **kwargs).images

    def _edit_images(self, images) -> Tensor:
        c = self.tokenizer.config
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)) and images and all(isinstance(p, Image.Image) for p in images):
            return self.tokenizer.pil_to_images(images).add(1).div(2)
        want = f"(B, {c.in_channels}, {c.image_size}, {c.image_size})"
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a float tensor {want} in [0, 1] or PIL images, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must have shape {want}, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got dtype {images.dtype}; convert uint8 with x / 255")
        if images.shape[1] != c.in_channels:
            raise ValueError(f"this model's tokenizer takes {c.in_channels}-channel images {want}, got {images.shape[1]} channels")
        if tuple(images.shape[-2:]) != (c.image_size, c.image_size):
            raise ValueError(f"wrong image size {tuple(images.shape[-2:])}: this model works at {c.image_size}x{c.image_size}; "
                             "resize first, or pass PIL images (resized and centre-cropped for you)")  # fmt: skip
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values")
        if images.min() < -1e-3 or images.max() > 1 + 1e-3:
            raise ValueError(f"images must be in [0, 1], got values in [{images.min().item():.3g}, {images.max().item():.3g}]")
        return images.to(self.device).clamp(0, 1)

    def _edit_mask(self, mask, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a bool tensor (B, 1, {H}, {W}) with True = regenerate, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = regenerate), got dtype {mask.dtype}; use mask > 0.5")
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, B) or tuple(mask.shape[-2:]) != (H, W):
            raise ValueError(f"mask must have shape ({B}, 1, {H}, {W}) or (1, 1, {H}, {W}) to match the images, got {tuple(mask.shape)}")
        return mask.to(self.device).expand(B, 1, H, W)

    def _edit_labels(self, classes, B: int) -> Tensor:
        if classes is None:
            raise ValueError("pass classes=...: the class to generate, one id for all images or one per image")
        ids = self.class_ids(classes)
        if len(ids) not in (1, B):
            raise ValueError(f"classes has {len(ids)} ids for {B} images: pass one id, or one per image")
        return torch.tensor(ids * B if len(ids) == 1 else ids, device=self.device)

    # -- files -----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, *, info: dict | None = None) -> Path:
        out = self.generator.save_pretrained(directory, info=info)
        self.tokenizer.save_pretrained(out / TOKENIZER_DIR)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> "Pipeline":
        from arvision.modeling import load_model

        generator = load_model(directory, map_location=device)
        if not isinstance(generator, Generator):
            raise ModelFileError(f"{directory} holds a {generator.model_type}, not a generator")
        tok_dir = Path(directory) / TOKENIZER_DIR
        if not (tok_dir / "config.json").is_file():
            raise ModelFileError(f"{directory} has no {TOKENIZER_DIR}/ folder: a generator directory needs its tokenizer")
        tokenizer = load_model(tok_dir, map_location=device)
        if not isinstance(tokenizer, Tokenizer):
            raise ModelFileError(f"{tok_dir} holds a {tokenizer.model_type}, not a tokenizer")
        return cls(tokenizer, generator)
