"""State-dict key mappings from the official VAR and LlamaGen models to arvision's classes.

Only names change (and LlamaGen's separate q/k/v convs are concatenated into one ``qkv``), so a
converted model computes exactly what the official one does. Buffers the official models keep
for their own bookkeeping (VAR's mask and level ids, zero key bias, usage counters) are dropped:
arvision derives them from the config.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

_VAR = [(r"^blocks\.", "transformer.blocks."), (r"\.attn\.mat_qkv\.", ".attn.qkv."), (r"\.ffn\.", ".mlp."),
        (r"^head_nm\.", "transformer.head_nm."), (r"^shared_ada_lin\.", "transformer.shared_ada_lin.")]  # fmt: skip
_VAR_DROP = re.compile(r"^(lvl_1L|attn_bias_for_masking)$|zero_k_bias$|kv_cache")
_LLAMAGEN_GPT = [(r"^cls_embedding\.embedding_table\.", "class_emb."), (r"^layers\.", "transformer.blocks."),
                 (r"\.attention\.wqkv\.", ".attn.qkv."), (r"\.attention\.wo\.", ".attn.proj."), (r"\.feed_forward\.", ".mlp."),
                 (r"\.attention_norm\.", ".norm1."), (r"\.ffn_norm\.", ".norm2."), (r"^norm\.", "transformer.norm."),
                 (r"^output\.", "head.")]  # fmt: skip
_LLAMAGEN_GPT_DROP = re.compile(r"kv_cache|freqs_cis|causal_mask")


def _rename(state: dict[str, Tensor], rules, drop: re.Pattern | None = None) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        if drop is not None and drop.search(k):
            continue
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def var_vae_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """VAR ``VQVAE`` -> :class:`~arvision.tokenizers.MultiScaleVQTokenizer` (same names; usage buffer dropped)."""
    return {k: v for k, v in state.items() if k != "quantize.ema_vocab_hit_SV"}


def var_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """VAR ``VAR`` -> :class:`~arvision.generators.NextScaleGenerator`."""
    return _rename(state, _VAR, _VAR_DROP)


def llamagen_gpt_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """LlamaGen ``Transformer`` (c2i) -> :class:`~arvision.generators.NextTokenGenerator`."""
    return _rename(state, _LLAMAGEN_GPT, _LLAMAGEN_GPT_DROP)


def llamagen_vq_state(state: dict[str, Tensor], num_levels: int) -> dict[str, Tensor]:
    """LlamaGen ``VQModel`` -> :class:`~arvision.tokenizers.VQTokenizer` (``num_levels`` = len(ch_mult))."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for k, v in state.items():
        if k == "quantize.codebook_used":  # training-time usage statistics
            continue
        m = re.match(r"(encoder|decoder)\.conv_blocks\.(\d+)\.(.*)", k)
        if m:  # LlamaGen's decoder stores its levels lowest resolution first
            part, level, rest = m.group(1), int(m.group(2)), re.sub(r"^res\.", "block.", m.group(3))
            k = f"{part}.down.{level}.{rest}" if part == "encoder" else f"{part}.up.{num_levels - 1 - level}.{rest}"
        for i, name in enumerate(("block_1", "attn_1", "block_2")):
            k = k.replace(f".mid.{i}.", f".mid.{name}.")
        m = re.match(r"(.*)\.([qkv])\.(weight|bias)$", k)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
            continue
        out[k] = v
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
