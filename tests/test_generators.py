"""Generators on the shared backbone: masks, KV cache, sampling, guidance, pipelines."""

from __future__ import annotations

import math

import pytest
import torch

import arvision
from arvision.generators import NextScaleGenerator, SamplingConfig, rope_2d_table
from arvision.nn.transformer import group_causal_mask
from arvision.pipeline import Pipeline
from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS
from arvision.samplers import decode, filter_top_k, filter_top_p, sample_logits


def build(name: str, num_classes: int = 10):
    gp = GENERATOR_PRESETS[name]
    tp = TOKENIZER_PRESETS[gp.tokenizer]
    tok = tp.model_class(tp.config).eval()
    if hasattr(tok, "quantize"):  # codebook tokenizers: codes far apart
        tok.quantize.embedding.weight.data.normal_()
    gen = gp.model_class(gp.build_config(tok, num_classes)).eval()
    with torch.no_grad():  # move off the near-identity init so that every part matters
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return tok, gen


def teacher_logits(tok, gen, tokens, labels):
    if isinstance(gen, NextScaleGenerator):
        return gen(labels, tok.teacher_forcing_input(tokens))
    return gen(tokens, labels)


ORDERS = ["tiny-raster", "tiny-scale"]


@pytest.mark.parametrize("name", ORDERS)
def test_shapes_and_gradients(name: str) -> None:
    tok, gen = build(name)
    gen.train()
    tokens = tok.encode(torch.rand(3, 1, 16, 16) * 2 - 1)
    labels = torch.tensor([0, 5, 10])  # 10 = null class
    logits = teacher_logits(tok, gen, tokens, labels)
    assert logits.shape == (3, gen.num_tokens, gen.config.vocab_size)
    loss, acc = gen.loss(logits, tokens)
    loss.backward()
    missing = [n for n, p in gen.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing and math.isfinite(loss.item()) and 0 <= acc <= 1


def test_block_causal_mask_equals_naive_loop() -> None:
    _, gen = build("tiny-scale")
    pn = gen.config.patch_nums
    scale_of = [si for si, p in enumerate(pn) for _ in range(p * p)]
    L = len(scale_of)
    naive = torch.tensor([[scale_of[j] <= scale_of[i] for j in range(L)] for i in range(L)])
    assert torch.equal(gen.attn_mask, naive)
    pos = torch.arange(5)
    assert torch.equal(group_causal_mask(pos, pos), torch.ones(5, 5, dtype=torch.bool).tril())
    same = torch.zeros(4, dtype=torch.long)
    assert group_causal_mask(same, same).all()  # one group = bidirectional


def test_rope_table_layout() -> None:
    t = rope_2d_table(grid_size=3, head_dim=8, base=10000.0)
    assert t.shape == (1 + 9, 4, 2) and torch.equal(t[0], torch.zeros(4, 2))  # the class token: zero rotation
    # pair 0 turns with the row, pair 2 with the column (frequency 1 for both at head_dim 8)
    row, col = 1, 2
    cos, sin = t[1 + row * 3 + col, :, 0], t[1 + row * 3 + col, :, 1]
    assert cos[0] == pytest.approx(math.cos(row)) and sin[0] == pytest.approx(math.sin(row))
    assert cos[2] == pytest.approx(math.cos(col)) and sin[2] == pytest.approx(math.sin(col))


def naive_sample(tok, gen, labels, s: SamplingConfig, generator) -> torch.Tensor:
    """Sampling with a full forward pass over the whole prefix at every step (no cache)."""
    B, L = labels.shape[0], gen.num_tokens
    guided = s.guided()
    lab = torch.cat([labels, torch.full_like(labels, gen.null_class)]) if guided else labels
    tokens = torch.zeros(B, L, dtype=torch.long)
    ranges = gen.scale_ranges if isinstance(gen, NextScaleGenerator) else [(i, i + 1) for i in range(L)]
    from arvision.samplers.logits import apply_guidance, guidance_weight

    for k, (a, b) in enumerate(ranges):
        both = torch.cat([tokens, tokens]) if guided else tokens
        logits = teacher_logits(tok, gen, both, lab)[:, a:b]
        if guided:
            w = guidance_weight(s.cfg, s.cfg_schedule, k, len(ranges))
            use = not (s.cfg_interval >= 0 and k - 1 > s.cfg_interval)
            logits = apply_guidance(logits[:B], logits[B:], w, s.cfg_schedule) if use else logits[:B]
        idx = sample_logits(logits.reshape(-1, logits.shape[-1]), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                            generator=generator)  # fmt: skip
        tokens[:, a:b] = idx.view(B, b - a)
    return tokens


SETTINGS = [
    SamplingConfig(cfg=1.0, top_k=1),
    SamplingConfig(cfg=3.0, top_k=5, top_p=0.9, temperature=0.8),
    SamplingConfig(cfg=2.5, cfg_interval=3),
    SamplingConfig(cfg=1.5, cfg_schedule="linear", top_k=0),
]


@pytest.mark.parametrize("name", ORDERS)
@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: f"{s.cfg_schedule}{s.cfg}-k{s.top_k}-i{s.cfg_interval}")
def test_cached_sampling_equals_uncached_sampling(name: str, s: SamplingConfig) -> None:
    tok, gen = build(name)
    labels = torch.tensor([1, 4, 9])
    with torch.no_grad():
        ours = decode(gen, tok, labels, s, torch.Generator().manual_seed(0)).tokens
        ref = naive_sample(tok, gen, labels, s, torch.Generator().manual_seed(0))
    assert torch.equal(ours, ref)


def test_logit_filters() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[True, False, False, True, True]]
    assert torch.isinf(filter_top_k(logits, 3)).sum() == 2  # ties at the k-th value are kept
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isinf(filter_top_p(p, 0.7)).tolist() == [[False, False, True, True]]
    assert not torch.isinf(filter_top_p(p, 0.01))[0, 0]  # the most likely token always survives
    g = torch.Generator().manual_seed(0)
    assert (sample_logits(torch.randn(100, 7), top_k=1, generator=g) >= 0).all()


def pipeline(name: str) -> Pipeline:
    tok, gen = build(name)
    return Pipeline(tok, gen)


@pytest.mark.parametrize("name", ORDERS)
def test_pipeline_generate(name: str, tmp_path) -> None:
    pipe = pipeline(name)
    out = pipe.sample(classes=[3, 7], n_per_class=2, seed=0)
    assert out.images.shape == (4, 1, 16, 16) and 0 <= out.images.min() and out.images.max() <= 1
    assert out.labels.tolist() == [3, 3, 7, 7] and out.tokens.shape == (4, pipe.generator.num_tokens)
    assert out.stats.forward_passes_per_image == pipe.generator.num_steps and out.stats.images == 4
    again = pipe.generate(classes=[3, 7], n_per_class=2, seed=0)
    assert torch.equal(again, out.images)  # deterministic under a seed
    tokens = pipe.generate_tokens(classes=[3, 7], n_per_class=2, seed=0)
    assert torch.equal(tokens, out.tokens)
    split = pipe.sample(classes=[3, 7], n_per_class=2, seed=0, batch_size=3)
    assert split.tokens.shape == out.tokens.shape
    pipe.save_pretrained(tmp_path / "p")
    loaded = arvision.load(tmp_path / "p")
    assert isinstance(loaded, Pipeline)
    assert torch.equal(loaded.generate(classes=[3, 7], n_per_class=2, seed=0), out.images)


def test_pipeline_bad_inputs() -> None:
    pipe = pipeline("tiny-raster")
    with pytest.raises(ValueError, match="unknown class id 10"):
        pipe.generate(classes=[10])
    with pytest.raises(ValueError, match="unknown class id -1"):
        pipe.generate(classes=[-1])
    with pytest.raises(ValueError, match="n_per_class"):
        pipe.generate(classes=[1], n_per_class=0)
    with pytest.raises(ValueError, match="cfg must be"):
        pipe.generate(classes=[1], cfg=-1)
    with pytest.raises(ValueError, match="cfg must be"):
        pipe.generate(classes=[1], cfg=float("nan"))
    with pytest.raises(ValueError, match="top_p"):
        pipe.generate(classes=[1], top_p=2.0)
    with pytest.raises(ValueError, match="cfg_schedule"):
        pipe.generate(classes=[1], cfg_schedule="cosine")
    with pytest.raises(TypeError, match="unknown sampling option"):
        pipe.generate(classes=[1], guidance=2.0)


def test_orders_refuse_the_wrong_tokenizer() -> None:
    tok_ms, gen_scale = build("tiny-scale")
    tok_vq, gen_raster = build("tiny-raster")
    with pytest.raises(ValueError, match="next-scale order needs a multi-scale tokenizer"):
        Pipeline(tok_vq, gen_scale)
    with pytest.raises(ValueError, match="next-token order needs a VQ grid tokenizer"):
        Pipeline(tok_ms, gen_raster)
    with pytest.raises(ValueError, match="multi-scale tokenizer"):
        GENERATOR_PRESETS["tiny-scale"].build_config(tok_vq, 10)


def test_official_sizes_match_published_parameter_counts() -> None:
    # ../shared/reference: VAR-d16 310,283,520 parameters; LlamaGen GPT-B 110.9M (c2i, 1000 classes).
    counts = {}
    for name in ("var-d16", "gpt-b"):
        gp = GENERATOR_PRESETS[name]
        tp = TOKENIZER_PRESETS[gp.tokenizer]
        with torch.device("meta"):
            tok = tp.model_class(tp.config)
            counts[name] = gp.model_class(gp.build_config(tok, 1000)).num_parameters()
    assert counts["var-d16"] == 310_283_520
    assert round(counts["gpt-b"] / 1e5) == 1109
