"""Tokenizer training: reconstruction + codebook/commitment losses, AdamW, dead-code restarts.

``train_tokenizer`` is what ``arvision train tokenizer`` runs. It writes into ``out_dir``:
``checkpoint.pt`` every ``ckpt_every`` steps (and on Ctrl-C), then at the end the model
(``config.json`` + ``model.safetensors``, with a model card) and ``metrics.json`` (held-out PSNR,
SSIM, and codebook usage and perplexity, or token statistics for continuous tokens).
``resume=True`` continues bit-exactly from the checkpoint.

A tokenizer with a ``training_loss(images, step, generator)`` method (FlexVAR's multi-scale
tokenizer) computes its own loss; the loop does the rest (restarts from its candidates included).
A tokenizer with continuous tokens (the KL autoencoder) has no codebook: its ``quant_loss`` is
the weighted KL, its posterior samples come from a checkpointed generator, and there are no
restarts or usage counts. A post-training tokenizer (one with a ``fit`` method: TokenBridge) takes
no gradient steps: it is fitted on the training images (on the weights of ``train.base``), then
evaluated and saved like the others.

For real images (:mod:`arvision.train.adversarial`): ``perceptual_weight`` adds LPIPS (weights
from local files), ``disc_weight`` a PatchGAN loss with VQGAN's adaptive weight after
``disc_start`` steps, ``ema`` saves an exponential moving average of the weights and
``mixed_precision="bf16"`` runs the forward pass under bf16 autocast (the quantizer in fp32).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from arvision.data import get_dataset, split_dataset
from arvision.devices import check_device
from arvision.evaluate import evaluate_tokenizer, ordered_batches
from arvision.hub import load
from arvision.modeling import _REGISTRY
from arvision.outputs import write_json
from arvision.metrics.lpips import load_lpips
from arvision.presets import TokenizerTrainConfig, get_tokenizer_preset
from arvision.runtime import check_precision
from arvision.tokenizers import Tokenizer
from arvision.train.adversarial import ReconstructionLoss
from arvision.train.common import (
    CHECKPOINT_NAME,
    StepBatchSampler,
    batch_iterator,
    card_description,
    make_adamw,
    save_checkpoint,
    set_lr,
    start_or_resume,
)


def train_tokenizer(
    out_dir: str | Path,
    *,
    preset: str | None = None,
    data: str = "mnist",
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    command: str | None = None,
    eval_limit: int | None = None,
    **train_overrides: Any,
) -> dict[str, Any]:
    """Train (or resume training) a tokenizer; return the held-out metrics.

    Args:
        out_dir: run directory (checkpoint, final model, metrics).
        preset: a tokenizer preset name (see ``arvision.presets``); not needed with ``resume``.
        data: "mnist" or a folder of images.
        steps, batch_size, lr: override the preset's training settings.
        resume: continue from ``out_dir/checkpoint.pt`` with the settings stored in it.
        overwrite: start afresh in an ``out_dir`` that holds a run, a model or other files (refused otherwise).
        stop_after: stop (with a checkpoint) after this global step, as if killed; for tests.
        command: the command line to record in the model card.
        eval_limit: evaluate on at most this many held-out images.
        train_overrides: other :class:`TokenizerTrainConfig` fields (perceptual_weight, perceptual_net,
            disc_weight, disc_start, ema, mixed_precision, ...); None keeps the preset's.
    """
    check_device(device)  # a clear error before anything is loaded
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME

    def new_run() -> dict[str, Any]:
        p = get_tokenizer_preset(preset)
        overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, **train_overrides).items() if v is not None}
        return {
            "preset": preset, "model_type": p.model_class.model_type, "model": p.config.to_dict(),
            "train": p.train.replace(**overrides).to_dict(), "data": data, "seconds": 0.0,
            "command": command or f"arvision train tokenizer --preset {preset} --data {data} --out {out}",
        }  # fmt: skip

    run, ckpt = start_or_resume(out, resume=resume, preset=preset, steps=steps, new_run=new_run, overwrite=overwrite)
    cls = _REGISTRY[run["model_type"]]
    tc = TokenizerTrainConfig.from_dict(run["train"])
    torch.manual_seed(tc.seed)  # model init only; everything after uses explicit generators
    model: Tokenizer = cls(cls.config_class.from_dict(run["model"]))
    mc = model.config
    continuous = model.layout.continuous  # no codebook: no usage counting, no restarts

    if tc.mixed_precision == "bf16":
        check_precision("bf16", device)
    extras = tc.perceptual_weight > 0 or tc.disc_weight > 0
    if extras and (hasattr(model, "fit") or hasattr(model, "training_loss")):
        raise ValueError(f"the {run['model_type']} tokenizer computes its own loss: the perceptual and adversarial losses "
                         "apply to the VQ, FSQ/LFQ/BSQ/FQ and KL tokenizers")  # fmt: skip
    # loaded before the data: a missing or wrong weights file fails at once
    perceptual = load_lpips(tc.perceptual_net, device) if tc.perceptual_weight > 0 else None
    criterion = ReconstructionLoss(mc.in_channels, image_size=mc.image_size, perceptual=perceptual, perceptual_weight=tc.perceptual_weight,
                                   disc_weight=tc.disc_weight, disc_start=tc.disc_start, disc_layers=tc.disc_layers).to(device)  # fmt: skip
    train_set, heldout = _datasets(run["data"], mc.image_size, mc.in_channels, tc)
    if hasattr(model, "fit"):  # post-training quantization (TokenBridge): fitted on the data, no gradient steps
        t0 = time.time()
        base = None if tc.base is None else load(tc.base, device=device)  # the trained tokenizer to quantize
        model.to(device).fit(ordered_batches(train_set, 512), base=base)
        run["seconds"] = time.time() - t0
        training = {"command": run["command"], "data": run["data"],
                    **({"fitted_on": tc.base or "the preset's own KL weights"} if hasattr(model, "kl") else {})}  # a codec has none
        return _finish(model, run, heldout, out, training, eval_limit=eval_limit, progress=progress)
    opt = make_adamw(model, tc, no_decay=lambda name, p: p.ndim < 2 or "embedding" in name)
    restart_rng = torch.Generator().manual_seed(tc.seed + 1)
    noise_rng = torch.Generator(device=device).manual_seed(tc.seed + 2)  # posterior samples (continuous tokens)
    disc = criterion.discriminator
    d_opt = torch.optim.AdamW(disc.parameters(), lr=tc.lr, betas=(0.5, 0.9), weight_decay=0.0) if disc is not None else None
    ema_model = copy.deepcopy(model).requires_grad_(False) if tc.ema > 0 else None
    window_counts = torch.zeros(max(mc.codebook_size, 1), dtype=torch.long)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if disc is not None:
            criterion.load_state_dict(ckpt["criterion"])
            d_opt.load_state_dict(ckpt["d_optimizer"])
        if ema_model is not None:
            ema_model.load_state_dict(ckpt["ema"])
        restart_rng.set_state(ckpt["restart_rng"])
        window_counts = ckpt["window_counts"]
        if "noise_rng" in ckpt:
            noise_rng.set_state(ckpt["noise_rng"])
        start = int(ckpt["step"])
    # channels_last makes the CPU (oneDNN) convolutions ~1.35x faster here; the results are the same.
    model.to(device, memory_format=torch.channels_last).train()
    if ema_model is not None:
        ema_model.to(device)
    out.mkdir(parents=True, exist_ok=True)
    # where VQGAN's adaptive weight compares the gradients (only conv decoders get the adversarial loss)
    last_layer = model.decoder.conv_out.weight if criterion.discriminator is not None else None

    def autocast() -> contextlib.AbstractContextManager:
        if tc.mixed_precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {
            "run": run, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "restart_rng": restart_rng.get_state(), "window_counts": window_counts, "noise_rng": noise_rng.get_state(),
            **({"criterion": criterion.state_dict(), "d_optimizer": d_opt.state_dict()} if disc is not None else {}),
            **({"ema": ema_model.state_dict()} if ema_model is not None else {}),
        })  # fmt: skip

    sampler = StepBatchSampler(len(train_set), tc.batch_size, seed=tc.seed, start_step=start, total_steps=tc.steps)
    bar = tqdm(total=tc.steps, initial=start, desc="train tokenizer", disable=not progress, dynamic_ncols=True)
    step, restarted, t0 = start, 0, time.time()
    shown: dict[str, Any] = {}  # the progress bar's figures
    try:
        for x, _ in batch_iterator(train_set, sampler, num_workers=tc.num_workers):
            set_lr(opt, step, tc)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with autocast():
                if hasattr(model, "training_loss"):  # a loss of its own (FlexVAR's tokenizer: every scale, 2x steps)
                    loss, rec, o = model.training_loss(x, step, restart_rng)
                else:
                    o = model(x, generator=noise_rng) if continuous else model(x)
                    recon = o.recon.float()
                    terms = criterion(recon, x, step=step, last_layer=last_layer)
                    rec = terms.parts["mse"]
                    loss = terms.total + o.quant_loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            if criterion.adversarial_at(step):  # then the discriminator, on the same batch
                with autocast():
                    d_loss = criterion.discriminator_loss(recon, x)
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
            if ema_model is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema_model.parameters(), model.parameters()):
                        pe.lerp_(pm, 1 - tc.ema)
                    for be, bm in zip(ema_model.buffers(), model.buffers()):
                        be.copy_(bm)
            step += 1
            if not continuous:
                window_counts += torch.bincount(o.indices.flatten().cpu(), minlength=mc.codebook_size)
            if not continuous and tc.restart_every and step % tc.restart_every == 0:
                shown["usage"] = f"{100 * (window_counts > 0).float().mean().item():.0f}%"
                if step <= tc.restart_until * tc.steps:
                    restarted += model.quantize.restart_codes(window_counts == 0, o.candidates, restart_rng)
                    shown["restarts"] = restarted
                window_counts.zero_()
            if step % 50 == 0:
                shown.update(loss=f"{loss.item():.4f}", psnr=f"{10 * math.log10(4 / max(rec.item(), 1e-12)):.1f}")
                if continuous:
                    shown["kl"] = f"{o.kl.item():.1f}"
                if criterion.adversarial_at(step - 1):
                    shown.update(gan=f"{terms.parts['gan'].item():.3f}", d=f"{d_loss.item():.3f}")
                bar.set_postfix(shown, refresh=False)
            bar.update(1)
            if step % tc.ckpt_every == 0 or step == tc.steps:
                run["seconds"] = run.get("seconds", 0.0) + time.time() - t0
                t0 = time.time()
                checkpoint(step)
            if stop_after is not None and step >= stop_after and step < tc.steps:
                checkpoint(step)
                bar.close()
                return {"stopped_at": step}
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step)
        print(f"\ninterrupted at step {step}; checkpoint saved. Continue with: arvision train tokenizer --resume --out {out}")
        raise
    bar.close()
    training = {"command": run["command"], "data": run["data"], "steps": tc.steps, "batch_size": tc.batch_size, "lr": tc.lr,
                **{k: v for k, v in tc.to_dict().items() if k in _EXTRA_FIELDS and v != _DEFAULTS[k]}}  # fmt: skip
    final = ema_model if ema_model is not None else model
    return _finish(final, run, heldout, out, training, eval_limit=eval_limit, progress=progress)


_EXTRA_FIELDS = ("perceptual_weight", "perceptual_net", "disc_weight", "disc_start", "ema", "mixed_precision")
_DEFAULTS = TokenizerTrainConfig().to_dict()


def _finish(model: Tokenizer, run: dict[str, Any], heldout, out: Path, training: dict[str, Any], *,
            eval_limit: int | None, progress: bool) -> dict[str, Any]:  # fmt: skip
    """Evaluate on the held-out data, then save the model (with its card) and ``metrics.json``."""
    metrics = evaluate_tokenizer(model.eval(), heldout, limit=eval_limit, progress=progress)
    metrics["train_seconds"] = round(run.get("seconds", 0.0), 1)
    info = {
        **model.info,  # what the model recorded about itself (TokenBridge: the fitted ranges)
        "description": card_description(get_tokenizer_preset(run["preset"]).description, kind=f"{model.model_type} tokenizer",
                                        preset=run["preset"], data=run["data"]) if run.get("preset") else "",
        "preset": run.get("preset"),
        "training": {**training, "seconds": metrics["train_seconds"]},
        "metrics": {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
        "eval_data": _heldout_name(run["data"]),
    }
    model.save_pretrained(out, info=info)
    write_json(out / "metrics.json", info["metrics"])
    return metrics


def _datasets(spec: str, image_size: int, channels: int, tc: TokenizerTrainConfig):
    if spec == "mnist":
        return (get_dataset("mnist", split="train", image_size=image_size, channels=channels),
                get_dataset("mnist", split="test", image_size=image_size, channels=channels))  # fmt: skip
    full = get_dataset(spec, image_size=image_size, channels=channels)
    return split_dataset(full, tc.holdout, seed=tc.seed)


def _heldout_name(spec: str) -> str:
    return "MNIST test split (10,000 images)" if spec == "mnist" else f"held-out split of {spec}"
