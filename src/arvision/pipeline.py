"""Pipelines: tokenizer + generator + default sampling settings -> images.

``arvision.load(dir)`` on a generator directory returns a :class:`Pipeline`. The directory holds
the generator (``config.json`` + ``model.safetensors``) and its tokenizer in ``tokenizer/``.

    pipe = arvision.load("mnist-scale")
    images = pipe.generate(classes=[3, 7], n_per_class=4, cfg=2.0, seed=0)   # (8, C, H, W) in [0, 1]
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from arvision.errors import ModelFileError
from arvision.generators import Generator, SamplingConfig
from arvision.runtime import keep_freed_memory
from arvision.samplers import SamplingStats, check_settings, sample_tokens
from arvision.tokenizers import MultiScaleVQTokenizer, Tokenizer, VQTokenizer

TOKENIZER_DIR = "tokenizer"


@dataclass
class GenerationOutput:
    """Images (N, C, H, W) in [0, 1], their tokens (N, L), class ids (N,) and what it cost."""

    images: Tensor
    tokens: Tensor
    labels: Tensor
    stats: SamplingStats


def check_compatible(tokenizer: Tokenizer, generator: Generator) -> None:
    """A clear error when a generator cannot use this tokenizer."""
    if generator.tokenizer_kind == "multiscale":
        if not isinstance(tokenizer, MultiScaleVQTokenizer):
            raise ValueError(f"the {generator.order} order needs a multi-scale tokenizer (e.g. mnist-msvq), got a {tokenizer.model_type}")
        if tokenizer.patch_nums != generator.config.patch_nums or tokenizer.config.codebook_dim != generator.config.code_dim:
            raise ValueError(
                f"tokenizer scales {tokenizer.patch_nums} / code dim {tokenizer.config.codebook_dim} do not match the "
                f"generator's {generator.config.patch_nums} / {generator.config.code_dim}"
            )
    else:
        if not isinstance(tokenizer, VQTokenizer):
            raise ValueError(f"the {generator.order} order needs a VQ grid tokenizer (e.g. mnist-vq), got a {tokenizer.model_type}")
        if tokenizer.grid_size != generator.config.grid_size:
            raise ValueError(f"tokenizer grid {tokenizer.grid_size} != generator grid {generator.config.grid_size}")
    if tokenizer.codebook_size != generator.config.vocab_size:
        raise ValueError(f"tokenizer codebook {tokenizer.codebook_size} != generator vocabulary {generator.config.vocab_size}")


class Pipeline:
    """Class-conditional image generation with one tokenizer and one generator."""

    def __init__(self, tokenizer: Tokenizer, generator: Generator) -> None:
        check_compatible(tokenizer, generator)
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
        check_settings(self.generator, s)
        return s

    def labels_for(self, classes: Sequence[int] | int | None, n_per_class: int) -> Tensor:
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class <= 0:
            raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
        if classes is None:
            classes = list(range(self.num_classes))
        elif isinstance(classes, int):
            classes = [classes]
        classes = [int(c) for c in classes]
        if not classes:
            raise ValueError("classes is empty: pass at least one class id")
        for c in classes:
            if not 0 <= c < self.num_classes:
                raise ValueError(f"unknown class id {c}: this model knows classes 0..{self.num_classes - 1}")
        return torch.tensor(classes, device=self.device).repeat_interleave(n_per_class)

    @torch.no_grad()
    def sample(self, classes: Sequence[int] | int | None = None, n_per_class: int = 1, *, seed: int | None = 0,
               batch_size: int = 64, progress: bool = False, decode: bool = True,
               **sampling) -> GenerationOutput:  # fmt: skip
        """Generate ``n_per_class`` samples of every class in ``classes`` (all of ``classes[0]`` first).

        Sampling options (``cfg``, ``cfg_schedule``, ``cfg_interval``, ``temperature``, ``top_k``,
        ``top_p``, ``num_steps``, ``choice_temperature``) default to the model's own (``pipe.defaults``). ``seed`` seeds one
        ``torch.Generator`` used for the whole call (None = nondeterministic).
        """
        s = self.sampling_config(**sampling)
        labels = self.labels_for(classes, n_per_class)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed) if seed is not None else gen.seed()
        if self.device.type == "cpu":
            keep_freed_memory()
        stats, tokens, images = SamplingStats(), [], []
        for b in tqdm(range(0, len(labels), batch_size), desc="generate", disable=not progress, leave=False):
            lab = labels[b : b + batch_size]
            tok, f_hat, st = sample_tokens(self.generator, self.tokenizer, lab, s, gen)
            if decode:
                images.append(self.tokenizer.decode(tok) if f_hat is None else self.tokenizer.fhat_to_images(f_hat))
            tokens.append(tok)
            stats += st
        self.last_stats = stats
        imgs = torch.cat(images).add(1).div(2).clamp(0, 1) if decode else torch.empty(0)
        return GenerationOutput(images=imgs, tokens=torch.cat(tokens), labels=labels, stats=stats)

    def generate(self, classes: Sequence[int] | int | None = None, n_per_class: int = 1, **kwargs) -> Tensor:
        """Images (N, C, H, W) in [0, 1]; same arguments as :meth:`sample`. Stats in ``last_stats``."""
        return self.sample(classes, n_per_class, **kwargs).images

    def generate_tokens(self, classes: Sequence[int] | int | None = None, n_per_class: int = 1, **kwargs) -> Tensor:
        """Tokens (N, L), undecoded; same arguments as :meth:`sample`."""
        return self.sample(classes, n_per_class, decode=False, **kwargs).tokens

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
