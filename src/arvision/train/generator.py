"""Generator training: teacher-forced cross-entropy on cached token sequences.

``train_generator`` is what ``arvision train generator`` runs, single-process or under
``torchrun`` (DDP, or FSDP with ``fsdp=True``, see ``arvision.train.fsdp`` and docs/training.md: each
rank takes its share of every global batch, so N processes reproduce a 1-process run with the same
global batch). The dataset is encoded once with the frozen
tokenizer and cached in ``OUT/tokens.safetensors`` and in the machine's shared cache (a second
run on the same tokenizer weights and data reuses it, ``arvision.cache``). Checkpoints every ``ckpt_every`` steps and on
Ctrl-C; ``resume=True`` continues exactly. At the end OUT holds a pipeline directory
(generator + ``tokenizer/``) that ``arvision.load`` opens.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from arvision.cache import entry_path, load_entry, path_identity, save_entry
from arvision.data import get_dataset
from arvision.devices import check_device
from arvision.evaluate import ordered_batches
from arvision.generators import Generator
from arvision.hub import list_models, load, resolve
from arvision.modeling import _REGISTRY, _sha256, write_safetensors
from arvision.pipeline import TOKENIZER_DIR, Pipeline, same_weights
from arvision.presets import TOKENIZER_PRESETS, GeneratorTrainConfig, get_generator_preset
from arvision.tokenizers import Tokenizer
from arvision import distributed as D
from arvision.train.fsdp import Parallelism, load_optimizer, model_state, optimizer_state, parallelize, unsharded
from arvision.train.curve import TrainingCurve, check_curve_data
from arvision.train.common import (CHECKPOINT_NAME, StepBatchSampler, card_description, make_adamw, save_checkpoint, set_lr,
                                   start_or_resume)

TOKEN_CACHE = "tokens.safetensors"


def encode_dataset(tokenizer: Tokenizer, data: str, cache: Path, *, tokenizer_id: str, progress: bool = True,
                   shared: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:  # fmt: skip
    """(tokens (N, L) int64, labels (N,), num_classes), from ``cache`` when it was made by the same
    tokenizer (``tokenizer_id``, e.g. its weights' sha256) from the same data.

    ``shared``: also look in (and fill) the cache shared by every run on this machine
    (``arvision.cache.cache_dir("tokens")``), keyed on the tokenizer weights and the data files'
    identity (path, size, modification time), so a second run on the same tokenizer and data does
    not encode the data set again; ``cache`` then gets the run's own copy."""
    key = {"tokenizer": tokenizer_id, "data": data}
    hit = load_entry(cache, key, _valid_tokens)
    if hit is None and shared:
        c = tokenizer.config
        shared_key = {**key, "files": _data_identity(data), "image_size": c.image_size, "channels": c.in_channels}
        hit = load_entry(entry_path("tokens", shared_key), shared_key, _valid_tokens)
        if hit is not None:
            write_safetensors(hit[0], cache, metadata={"key": json.dumps(key), "num_classes": hit[1]["num_classes"]})
    if hit is not None:
        t, meta = hit
        return (t["tokens"] if t["tokens"].is_floating_point() else t["tokens"].long()), t["labels"].long(), int(meta["num_classes"])
    c = tokenizer.config
    ds = get_dataset(data, split="train", image_size=c.image_size, channels=c.in_channels)
    num_classes = int(getattr(ds, "num_classes", 0))
    labels = torch.as_tensor(getattr(ds, "labels"), dtype=torch.long)
    if num_classes == 0:  # a folder without class sub-folders: one class
        num_classes, labels = 1, torch.zeros_like(labels)
    elif (labels < 0).any():
        raise ValueError(f"{data}: some images are not in a class sub-folder; put every image in one")
    device = tokenizer.device
    chunks = []
    with torch.no_grad():
        for x in tqdm(ordered_batches(ds, 512), total=-(-len(ds) // 512), desc="encoding dataset", disable=not progress):
            chunks.append(tokenizer.encode(x.to(device)).cpu())
    tokens = torch.cat(chunks)
    if tokens.is_floating_point():  # continuous tokens (a KL autoencoder's latents)
        dtype = torch.float32
    else:
        dtype = torch.int16 if tokenizer.layout.vocab_size <= 32767 else torch.int32
    write_safetensors({"tokens": tokens.to(dtype), "labels": labels}, cache,
                      metadata={"key": json.dumps(key), "num_classes": str(num_classes)})  # fmt: skip
    if shared:
        save_entry(entry_path("tokens", shared_key), shared_key, {"tokens": tokens.to(dtype), "labels": labels},
                   {"num_classes": str(num_classes)})  # fmt: skip
    return tokens, labels, num_classes


def _valid_tokens(t: dict[str, torch.Tensor]) -> bool:
    """A token cache worth trusting: tokens (N, ...) and labels (N,) of the same length."""
    tokens, labels = t.get("tokens"), t.get("labels")
    return tokens is not None and labels is not None and tokens.ndim >= 2 and labels.ndim == 1 and len(tokens) == len(labels) > 0


def _data_identity(data: str) -> dict:
    """The files behind a training data spec: the built-in MNIST file or the image folder."""
    from arvision.data.mnist import default_mnist_path

    return path_identity(default_mnist_path() if data == "mnist" else data)


def load_init(model: Generator, name: str, tokenizer: Tokenizer) -> None:
    """Copy the weights of generator ``name`` (shipped name or directory) into ``model``: a clear
    error when it was trained with another tokenizer or its weights do not fit."""
    init = load(name, device=next(model.parameters()).device)
    if not isinstance(init, Pipeline):
        raise ValueError(f"init={name} is not a generator")
    if not same_weights(init.tokenizer, tokenizer):
        raise ValueError(f"init={name} was trained with another tokenizer than this run's; start from a generator of this tokenizer")
    try:
        model.load_state_dict(init.generator.state_dict())
    except RuntimeError as e:
        raise ValueError(f"init={name}: its weights do not fit this model (another architecture?): {e}") from None


def train_generator(
    out_dir: str | Path,
    *,
    preset: str | None = None,
    tokenizer: str | None = None,
    data: str = "mnist",
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    ema: float | None = None,
    init: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    fsdp: bool = False,
    mixed_precision: str = "none",
    activation_checkpointing: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    command: str | None = None,
    eval_every: int | None = None,
    eval_samples: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) a class-conditional generator; returns training statistics.

    Args:
        preset: generator preset (``mnist-raster``, ``mnist-scale``, ...); not needed with ``resume``.
        tokenizer: tokenizer directory or shipped name (default: the preset's).
        data: "mnist" or a folder of images (class labels from sub-folders).
        steps, batch_size, lr, ema, init: override the preset's settings (batch_size is global under
            DDP; init: a generator whose weights to start from).
        fsdp, mixed_precision, activation_checkpointing: how this launch uses its processes
            (:class:`arvision.train.fsdp.Parallelism`); not part of the run, so a resume may change them.
        stop_after: stop with a checkpoint after this step, as if killed (tests).
        eval_every, eval_samples: the training curve (:mod:`arvision.train.curve`): MNIST-FID and class
            accuracy of ``eval_samples`` samples every ``eval_every`` steps and at the end.
    """
    check_device(device)  # a clear error before anything is loaded
    parallel = Parallelism(fsdp=fsdp, mixed_precision=mixed_precision, activation_checkpointing=activation_checkpointing)
    parallel.check_device(device)
    info, device = D.init(device)
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME

    def new_run() -> dict[str, Any]:
        p = get_generator_preset(preset)
        overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, ema=ema, init=init, eval_every=eval_every,
                                           eval_samples=eval_samples).items() if v is not None}  # fmt: skip
        return {"preset": preset, "tokenizer": str(tokenizer or p.tokenizer), "data": data,
                "train": p.train.replace(**overrides).to_dict(), "seconds": 0.0,
                "command": command or f"arvision train generator --preset {preset} --out {out}"}  # fmt: skip

    run, ckpt = start_or_resume(out, resume=resume, preset=preset, steps=steps, new_run=new_run, overwrite=overwrite, own=(TOKEN_CACHE,))
    tc = GeneratorTrainConfig.from_dict(run["train"])
    if tc.batch_size % info.world_size:
        raise ValueError(f"batch size {tc.batch_size} must be divisible by the number of processes ({info.world_size})")

    name = run["tokenizer"]
    if name in TOKENIZER_PRESETS and name not in list_models() and not Path(name).exists():  # e.g. mnist-jpeg-rst's codec
        raise ValueError(f"the tokenizer '{name}' is a preset that is not shipped: make it first with `arvision train tokenizer "
                         f"--preset {name} --out DIR`, then pass --tokenizer DIR")  # fmt: skip
    tok = load(name, device=device)
    tok_dir = resolve(name)
    if isinstance(tok, Pipeline):  # a generator directory: train on its tokenizer (mnist-tokenbridge ships it only there)
        tok, tok_dir = tok.tokenizer, tok_dir / TOKENIZER_DIR
    if not isinstance(tok, Tokenizer):
        raise ValueError(f"--tokenizer {run['tokenizer']} is not a tokenizer")
    # Can the order use this tokenizer (grid vs scales, ids vs vectors)? Checked before encoding the data set.
    (_REGISTRY[run["model_type"]] if "model" in run else get_generator_preset(run["preset"]).model_class).layout_fields(tok.layout)
    if tc.eval_every:  # the curve's metric: checked before the data set is encoded
        check_curve_data(tok.config.image_size, tok.config.in_channels)
    tok_id = _sha256(tok_dir / "model.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:  # rank 0 encodes and caches; the others then read the cache
        tokens_all, labels_all, num_classes = encode_dataset(tok, run["data"], out / TOKEN_CACHE, tokenizer_id=tok_id, progress=progress,
                                                             shared=True)
    D.barrier(info)
    if not info.is_main:
        tokens_all, labels_all, num_classes = encode_dataset(tok, run["data"], out / TOKEN_CACHE, tokenizer_id=tok_id, progress=False,
                                                             shared=True)

    if "model" not in run:
        run["model_type"] = get_generator_preset(run["preset"]).model_class.model_type
        run["model"] = get_generator_preset(run["preset"]).build_config(tok, num_classes).to_dict()
    cls = _REGISTRY[run["model_type"]]
    torch.manual_seed(tc.seed)  # model init; everything after uses explicit generators
    model: Generator = cls(cls.config_class.from_dict(run["model"]))
    if tc.init and ckpt is None:
        load_init(model, tc.init, tok)
    ema_model = copy.deepcopy(model).requires_grad_(False) if tc.ema > 0 else None
    drop_rng = torch.Generator().manual_seed(tc.seed + 1)
    mask_rng = torch.Generator(device=device)  # order-specific randomness (masking), reseeded per step: resumable
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        drop_rng.set_state(ckpt["drop_rng"])
        if ema_model is not None:
            ema_model.load_state_dict(ckpt["ema"])
        start = int(ckpt["step"])
    model.to(device).train()
    if ema_model is not None:
        ema_model.to(device)
    ddp, info = parallelize(model, ema_model, info, device, parallel)
    opt = make_adamw(model, tc, no_decay=lambda name, p: p.ndim < 2 or "emb" in name or "pos_" in name)  # after: FSDP swaps parameters
    if ckpt is not None:
        load_optimizer(model, opt, ckpt["optimizer"])

    def checkpoint(step: int) -> None:  # whole tensors whatever the world size (FSDP gathers them on rank 0)
        state = {"model": model_state(model), "optimizer": optimizer_state(model, opt),
                 **({"ema": model_state(ema_model)} if ema_model is not None else {})}  # fmt: skip
        if info.is_main:
            save_checkpoint(ckpt_path, {
                "run": run, "step": step, **state, "drop_rng": drop_rng.get_state(),
            })  # fmt: skip
        D.barrier(info)

    curve = None
    if tc.eval_every and info.is_main:
        curve = TrainingCurve(out, run.setdefault("curve", []), n=tc.eval_samples, progress=progress)

    def evaluate(step: int) -> None:  # every rank gathers the weights (FSDP), rank 0 scores them
        weights = unsharded(ema_model if ema_model is not None else model)
        if curve is not None:
            curve.measure(step, tok, weights)
        D.barrier(info)

    sampler = StepBatchSampler(len(tokens_all), tc.batch_size, seed=tc.seed, start_step=start, total_steps=tc.steps)
    bar = tqdm(total=tc.steps, initial=start, desc=f"train {model.order}", disable=not (progress and info.is_main), dynamic_ncols=True)
    step, t0, tokens_seen, last = start, time.time(), 0, {}
    try:
        for idx in sampler:
            set_lr(opt, step, tc)
            idx_t = torch.tensor(idx)
            labels = model.drop_labels(labels_all[idx_t], drop_rng)[info.rank :: info.world_size].to(device)
            tokens = tokens_all[idx_t][info.rank :: info.world_size].to(device)
            mask_rng.manual_seed(tc.seed * 1_000_003 + step * 1009 + info.rank)
            inputs, extra = model.training_inputs(tokens, labels, tok, mask_rng)
            loss, acc = model.training_loss(ddp(**inputs), tokens, {**extra, "progress": step / tc.steps})
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            if ema_model is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema_model.parameters(), model.parameters()):
                        pe.lerp_(pm, 1 - tc.ema)
            step += 1
            tokens_seen += tokens.numel() * info.world_size
            if step % 10 == 0 or step == tc.steps:
                rate = tokens_seen / max(time.time() - t0, 1e-9)
                mean = D.mean_over_ranks(torch.stack([loss.detach().float(), acc.detach().float()]), info)  # the global batch's
                last = {"loss": mean[0].item(), "token_accuracy": mean[1].item(), "tokens_per_s": rate}
                shown = {"acc": f"{100 * last['token_accuracy']:.1f}%"} if math.isfinite(last["token_accuracy"]) else {}
                bar.set_postfix(loss=f"{last['loss']:.3f}", **shown, tok_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
            scored = tc.eval_every > 0 and (step % tc.eval_every == 0 or step == tc.steps)
            if scored:  # before the checkpoint, so that the checkpoint holds the point
                t_eval = time.time()
                evaluate(step)
                t0 += time.time() - t_eval  # training time and tokens/s leave the evaluation out
            if step % tc.ckpt_every == 0 or step == tc.steps or scored or (stop_after is not None and step >= stop_after):
                run["seconds"] = run.get("seconds", 0.0) + time.time() - t0
                run["tokens_per_s"] = tokens_seen / max(time.time() - t0, 1e-9)
                t0, tokens_seen = time.time(), 0
                drift = D.check_in_sync(model, info)
                if drift > 0:
                    raise RuntimeError(f"processes out of sync at step {step} (max parameter difference {drift:g})")
                checkpoint(step)
            if stop_after is not None and step >= stop_after and step < tc.steps:
                bar.close()
                D.shutdown(info)
                return {"stopped_at": step}
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step)
        if info.is_main:
            print(f"\ninterrupted at step {step}; checkpoint saved. Continue with: arvision train generator --resume --out {out}")
        raise
    bar.close()
    final = unsharded(ema_model if ema_model is not None else model)  # FSDP: gathered on rank 0 (every rank calls)
    result = {"steps": tc.steps, "seconds": round(run["seconds"], 1), "tokens_per_s": round(run.get("tokens_per_s", 0.0)),
              "final_loss": round(last.get("loss", math.nan), 4), "processes": info.world_size,
              **({"fsdp": True, "mixed_precision": mixed_precision} if fsdp else {})}  # fmt: skip
    if math.isfinite(last.get("token_accuracy", math.nan)):  # continuous tokens have none (and JSON has no NaN)
        result["final_token_accuracy"] = round(last["token_accuracy"], 4)
    if run.get("curve"):
        result["curve"] = run["curve"]
    if info.is_main:
        gen_info = {
            "description": card_description(get_generator_preset(run["preset"]).description, kind=f"{model.order} generator",
                                            preset=run["preset"], data=run["data"], tokenizer=run["tokenizer"],
                                            preset_tokenizer=str(get_generator_preset(run["preset"]).tokenizer)),
            "preset": run["preset"],
            "training": {"command": run["command"], "data": run["data"], "tokenizer": run["tokenizer"], "steps": tc.steps,
                         "batch_size": tc.batch_size, "lr": tc.lr, "ema": tc.ema, **({"init": tc.init} if tc.init else {}),
                         **result},  # fmt: skip
        }
        Pipeline(tok, final.eval()).save_pretrained(out, info=gen_info)
    D.shutdown(info)
    return result
