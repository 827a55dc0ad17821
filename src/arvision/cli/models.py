"""``arvision models`` and ``arvision info DIR``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from arvision.hub import list_models, load, resolve
from arvision.pipeline import Pipeline
from arvision.samplers.config import SamplingConfig


_TRAINING_FIELDS = (("steps", " steps"), ("epochs", " epochs"), ("batch_size", " per batch"), ("seconds", " s"),
                   ("tokens_per_s", " tokens/s"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the models shipped with arvision")
    p.set_defaults(func=run_models)
    p = sub.add_parser("info", help="describe a model: type, sizes, training data and command, metrics")
    p.add_argument("model", help="model directory or shipped model name")
    p.add_argument("--json", action="store_true", help="print the full config.json instead")
    p.set_defaults(func=run_info)


def run_models(args: argparse.Namespace) -> int:
    models = list_models()
    width = max((len(n) for n in models), default=0)
    for name, desc in models.items():
        print(f"{name:<{width}}  {desc}")
    if not models:
        print("no shipped models found in this installation")
    return 0


def run_info(args: argparse.Namespace) -> int:
    path = resolve(args.model)
    loaded = load(path)
    if args.json:
        print((Path(path) / "config.json").read_text())
        return 0
    pipe = loaded if isinstance(loaded, Pipeline) else None
    model = pipe.generator if pipe else loaded
    info, cfg = model.info, model.config
    size_mb = sum(f.stat().st_size for f in Path(path).rglob("*") if f.name in ("config.json", "model.safetensors")) / 1e6
    rows = [
        ("model", f"{model.model_type} ({type(model).__name__})"),
        ("path", str(path)),
        ("description", info.get("description", "")),
        ("parameters", f"{model.num_parameters():,} ({size_mb:.1f} MB on disk)"),
    ]
    if pipe is not None:
        t = cfg.transformer
        tok = pipe.tokenizer
        rows += [
            ("order", f"{model.order}: {model.num_tokens} tokens in {model.num_steps} forward passes"
                      + (" by default (choose with --steps)" if "num_steps" in model.order_class.own_settings else "")
                      + (" by default (fewer with --num-tokens)" if "num_tokens" in model.order_class.own_settings else "")),
            ("backbone", f"depth {t.depth}, width {t.width}, {t.num_heads} heads, {t.conditioning} conditioning, "
                         f"{t.attention} attention, {t.norm}, {t.mlp}"),  # fmt: skip
            ("classes", f"{cfg.num_classes} (null class {model.null_class} for guidance)"),
            ("tokenizer", f"{tok.model_type}: {tok.info.get('description', '')}"),
            ("sampling", ", ".join(f"{k}={v}" for k, v in cfg.sampling.to_dict().items()
                                   if k in ("cfg", "cfg_schedule") or v != SamplingConfig().to_dict()[k])),
        ]
    elif hasattr(model, "num_tokens"):
        c = cfg
        rows += [
            ("images", f"{c.image_size}x{c.image_size}, {c.in_channels} channel(s), values in [-1, 1]"),
            ("tokens", f"{model.num_tokens} per image: {model.layout.describe()}"
                       + (f", codebook {c.codebook_size} x {c.codebook_dim}" if getattr(c, "codebook_size", 0) else "")),
        ]
        if "streams" in info:  # a codec (JPEG bytes): stream lengths on its training images
            st = info["streams"]
            rows.append(("streams", f"quality {st.get('quality')}: {st.get('mean_bytes')} bytes on average "
                                    f"({model.bits_per_image():.0f} bits), at most {st.get('max_bytes')}, "
                                    f"{st.get('too_long')} of {st.get('images')} too long"))  # fmt: skip
        if hasattr(c, "patch_nums"):
            rows.append(("scales", ", ".join(f"{p}x{p}" for p in c.patch_nums)))
    training = info.get("training") or {}
    if training:
        rows += [
            ("trained on", str(training.get("data", ""))),
            ("training", ", ".join(f"{training[k]}{unit}" for k, unit in _TRAINING_FIELDS if training.get(k) is not None)),
            ("command", str(training.get("command", ""))),
        ]
    metrics = info.get("metrics") or {}
    if metrics:
        rows.append(("evaluated on", str(info.get("eval_data", ""))))
        rows += [(f"  {k}", json.dumps(v)) for k, v in metrics.items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
