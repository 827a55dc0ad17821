"""Held-out evaluation of a tokenizer: PSNR, SSIM, codebook usage and code perplexity."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from arvision.metrics import CodebookStats, ReconstructionMeter
from arvision.tokenizers import Tokenizer


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: Tokenizer, dataset: Dataset, *, batch_size: int = 256, limit: int | None = None, progress: bool = True
) -> dict[str, float]:
    """Encode + decode ``dataset`` in order and return reconstruction and codebook metrics.

    PSNR and SSIM are means of per-image values on images mapped to [0, 1]; ``codebook_usage`` is
    the percentage of codes used at least once over the whole set; ``code_perplexity`` is
    exp(entropy) of the code frequencies.
    """
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    recon, codes = ReconstructionMeter(), CodebookStats(tokenizer.codebook_size)
    device = next(tokenizer.parameters()).device
    was_training = tokenizer.training
    tokenizer.eval()
    n_batches = -(-len(dataset) // batch_size)
    for x in tqdm(ordered_batches(dataset, batch_size), total=n_batches, desc="evaluate", disable=not progress, leave=False):
        x = x.to(device)
        tokens = tokenizer.encode(x)
        codes.update(tokens)
        recon.update(tokenizer.decode(tokens), x)
    tokenizer.train(was_training)
    return {**recon.compute(), **codes.as_dict()}


def ordered_batches(dataset: Dataset, batch_size: int) -> Iterator[torch.Tensor]:
    """Image batches in dataset order (in-memory datasets are sliced without a DataLoader)."""
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]
        return
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield x
