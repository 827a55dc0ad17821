"""Pieces every training loop shares: deterministic batches, LR schedule, resumable checkpoints.

Exact resume rests on two rules: the batch of step s is a pure function of (seed, s), and every
source of randomness the loop uses is a ``torch.Generator`` whose state goes into the checkpoint.
Checkpoints hold only tensors and plain containers, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Dataset

from arvision.errors import ModelFileError, OutputError
from arvision.outputs import check_dir, check_run_dir

CHECKPOINT_NAME = "checkpoint.pt"


class StepBatchSampler:
    """Yields index batches for steps ``start_step, start_step + 1, ...``.

    Each epoch is a fresh permutation drawn from ``Generator().manual_seed(seed + epoch)``; the
    incomplete last batch is dropped. Restarting at step s yields exactly what step s would have.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, start_step: int = 0, total_steps: int) -> None:
        if num_items < 1:
            raise ValueError("the training set is empty")
        self.num_items = num_items
        self.batch_size = min(batch_size, num_items)
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.steps_per_epoch = max(num_items // self.batch_size, 1)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while step < self.total_steps:
            epoch, b = divmod(step, self.steps_per_epoch)
            perm = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            for i in range(b, self.steps_per_epoch):
                if step >= self.total_steps:
                    return
                yield perm[i * self.batch_size : (i + 1) * self.batch_size].tolist()
                step += 1


def batch_iterator(dataset: Dataset, sampler: StepBatchSampler, *, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches in the sampler's order; in-memory datasets are sliced directly."""
    images = getattr(dataset, "images", None)
    labels = getattr(dataset, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        for idx in sampler:
            t = torch.tensor(idx)
            yield images[t], labels[t]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)
    for x, y in loader:
        yield x, torch.as_tensor(y)


def cosine_lr(step: int, *, base_lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``base_lr * min_ratio``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic write: a run killed while saving keeps its previous checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(f"no checkpoint to resume at {path}; start without --resume, or pass the --out of the run to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileError(f"checkpoint {path} is truncated or corrupt ({e}); delete it and restart training") from e


def start_or_resume(out: Path, *, resume: bool, preset: str | None, steps: int | None,
                    new_run: Callable[[], dict[str, Any]], overwrite: bool = False,
                    own: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any] | None]:  # fmt: skip
    """(run description, checkpoint or None): resume the run in ``out`` or start a new one.

    Resuming takes every setting from the checkpoint. Starting refuses, before any work, a folder
    that cannot be written or that already holds a run, a model or other files (only ``own``:
    intermediate files of this kind of run such as a token cache, may be there) unless
    ``overwrite``; then the old checkpoint is removed so that a later ``--resume`` cannot pick it up.
    """
    ckpt_path = out / CHECKPOINT_NAME
    if resume:
        check_dir(out, "--out")
        ckpt = load_checkpoint(ckpt_path)
        started = ckpt["run"]["train"]["steps"]
        if steps is not None and steps != started:
            raise ValueError(f"the checkpoint was started with --steps {started}; resume with the same value")
        return ckpt["run"], ckpt
    if preset is None:
        raise ValueError("a --preset is needed to start training (or pass --resume to continue a run)")
    if check_run_dir(out, "--out", overwrite=overwrite, marker=CHECKPOINT_NAME, own=own, what="training run"):
        if not overwrite:
            raise OutputError(f"{out} already holds a training run; pass --resume to continue it, --overwrite to start "
                              "again from scratch, or choose another --out")  # fmt: skip
        if int(os.environ.get("RANK", "0")) == 0:
            ckpt_path.unlink(missing_ok=True)
    return new_run(), None


def make_adamw(model: torch.nn.Module, tc, *, no_decay: Callable[[str, torch.nn.Parameter], bool]) -> torch.optim.AdamW:
    """AdamW with weight decay only on the parameters ``no_decay`` rejects (biases, norms, embeddings...)."""
    decay, other = [], []
    for name, p in model.named_parameters():
        (other if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas))


def set_lr(opt: torch.optim.Optimizer, step: int, tc) -> float:
    lr = cosine_lr(step, base_lr=tc.lr, warmup=tc.warmup_steps, total=tc.steps, min_ratio=tc.min_lr_ratio)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def card_description(preset_description: str, *, kind: str, preset: str, data: str, tokenizer: str | None = None,
                     preset_tokenizer: str | None = None) -> str:  # fmt: skip
    """The ``description`` of a trained model's card.

    A preset's description names the preset's own data (MNIST) and tokenizer; a model trained on
    another data set or tokenizer describes itself instead of inheriting words that are not true of it.
    """
    if data == "mnist" and tokenizer == preset_tokenizer:
        return preset_description
    on = f" on {tokenizer}" if tokenizer else ""
    return f"{kind}{on}, trained on {data} with the settings of the {preset} preset"
