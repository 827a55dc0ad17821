"""TokenBridge: post-training per-channel quantization of a KL tokenizer, and the raster generator
with a channel-autoregressive head (tiny presets; the conformance suite covers tiny-tokenbridge too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import arvision
from arvision.pipeline import Pipeline
from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS
from arvision.samplers import decode
from arvision.samplers.logits import apply_guidance
from arvision.tokenizers import TokenBridgeConfig, TokenBridgeTokenizer
from arvision.tokenizers.tokenbridge import standard_levels

from test_generators import build


def tiny(**changes) -> TokenBridgeTokenizer:
    torch.manual_seed(0)
    p = TOKENIZER_PRESETS["tiny-tokenbridge"]
    return p.model_class(p.config.replace(**changes)).eval()


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- the tokenizer ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gaussian", "uniform"])
def test_round_trip_error_is_at_most_half_a_bin(method: str) -> None:
    tok = tiny(method=method)
    g = torch.Generator().manual_seed(1)
    fit = torch.randn(2, 64, 4, generator=g) * torch.tensor([0.5, 1.0, 2.0, 0.1]) + torch.tensor([0.0, 1.0, -1.0, 3.0])
    tok.fit_tokens([fit[:1], fit[1:]])
    c = tok.centers  # (D, V), ascending per channel
    assert c.shape == (4, 8) and bool((c[:, 1:] > c[:, :-1]).all())
    lo, hi = c[:, 0], c[:, -1]
    x = lo + (hi - lo) * torch.rand(3, 64, 4, generator=g)  # inside the outer centres
    ids = tok.quantize_tokens(x)
    assert ids.dtype == torch.int64 and ids.shape == x.shape and ids.min() >= 0 and ids.max() < 8
    half_bin = (c[:, 1:] - c[:, :-1]).max(1).values / 2
    assert bool(((tok.dequantize(ids) - x).abs() <= half_bin + 1e-6).all())
    assert torch.equal(tok.quantize_tokens(tok.dequantize(ids)), ids)  # centres are fixed points
    far = torch.tensor([-1e3, 1e3]).view(2, 1, 1).expand(2, 64, 4)  # clipped to the outer bins
    assert torch.equal(tok.quantize_tokens(far)[0], torch.zeros(64, 4, dtype=torch.long))
    assert torch.equal(tok.quantize_tokens(far)[1], torch.full((64, 4), 7))


def test_standard_levels_follow_tokenbridge() -> None:
    z = standard_levels(4, "gaussian", 3.0)  # quartiles of N(0, 1), truncated-normal means
    torch.testing.assert_close(z, -z.flip(0))  # symmetric
    # E[X | X > 0.674] ~ 1.27 (a bit less when clipped at 3), E[X | 0 < X < 0.674] ~ 0.32
    assert 1.0 < z[-1] < 1.3 and 0.2 < z[2] < 0.4
    torch.testing.assert_close(standard_levels(4, "uniform", 2.0), torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=torch.float64))


def test_encode_decode_layout_and_checks() -> None:
    tok = tiny()
    x = images()
    ids = tok.encode(x)
    n, D = tok.kl.grid_size, tok.kl.embed_dim
    assert ids.shape == (4, n * n, D) and ids.dtype == torch.int64 and 0 <= ids.min() and ids.max() < 8
    torch.testing.assert_close(tok.dequantize(ids), tok.centers[torch.arange(D), ids])
    assert tok.decode(ids).shape == x.shape
    lay = tok.layout
    assert lay.token_kind == "channel-ids" and lay.channel_bins == lay.vocab_size == 8 and lay.token_shape == (n * n, D)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 8\)"):
        tok.decode(ids + 8)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 8\)"):
        tok.dequantize(ids.index_fill(1, torch.tensor([0]), -1))
    with pytest.raises(TypeError, match="integer ids"):
        tok.decode(ids.float())
    with pytest.raises(ValueError, match=rf"\(B, {n * n}, {D}\)"):
        tok.decode(ids[..., 0])
    with pytest.raises(RuntimeError, match="not trained by gradients"):
        tok(x)


def test_bad_configs_are_clear_errors() -> None:
    kl = TOKENIZER_PRESETS["tiny-kl"].config
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        TokenBridgeConfig(kl=kl, bins=1)
    with pytest.raises(ValueError, match="method must be one of"):
        TokenBridgeConfig(kl=kl, method="lloyd")
    with pytest.raises(ValueError, match="clip_std"):
        TokenBridgeConfig(kl=kl, clip_std=0.0)
    with pytest.raises(TypeError, match="KLConfig"):
        TokenBridgeConfig(kl=TOKENIZER_PRESETS["tiny-vq"].config)
    tok = tiny()
    other = TOKENIZER_PRESETS["tiny-kl"].model_class(kl.replace(embed_dim=2))
    with pytest.raises(ValueError, match="config differs"):
        tok.fit([images()], base=other)


def _folder(root, n: int = 24) -> str:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / str(i % 2)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(d / f"{i}.png")
    return str(root)


def test_fitting_is_deterministic_and_saves_and_loads(tmp_path) -> None:
    from arvision.train.tokenizer import train_tokenizer

    data = _folder(tmp_path / "data")
    metrics = train_tokenizer(tmp_path / "a", preset="tiny-tokenbridge", data=data, progress=False)
    train_tokenizer(tmp_path / "b", preset="tiny-tokenbridge", data=data, progress=False)
    assert "psnr" in metrics and metrics["codebook_usage"] > 0
    a, b = arvision.load(tmp_path / "a"), arvision.load(tmp_path / "b")
    assert isinstance(a, TokenBridgeTokenizer) and torch.equal(a.centers, b.centers)
    assert not torch.equal(a.centers, tiny().centers)  # fitted, not the N(0, 1) default
    assert a.info["quantization"]["bins"] == 8 and len(a.info["quantization"]["std"]) == 4
    x = images()
    ids = a.encode(x)
    a.save_pretrained(tmp_path / "c")
    c = arvision.load(tmp_path / "c")
    assert torch.equal(c.encode(x), ids) and torch.equal(c.decode(ids), a.decode(ids))
    # the same fit from a KL tokenizer object
    kl = a.kl
    again = tiny().fit([x], base=kl)
    assert torch.equal(tiny().fit([x], base=kl).centers, again.centers) and not torch.equal(again.centers, a.centers)
    assert torch.equal(again.kl.state_dict()["decoder.conv_out.weight"], kl.state_dict()["decoder.conv_out.weight"])


# -- the generator ------------------------------------------------------------------------------
def guided_free(gen):
    return gen.config.sampling.replace(cfg=1.0, top_k=1)  # greedy, no guidance


def test_cached_decoding_equals_teacher_forcing() -> None:
    """Every decoding step (KV cache, one token per pass) computes the teacher-forced head input, and
    greedy channel-by-channel sampling picks the argmax of the teacher-forced channel logits."""
    tok, gen = build("tiny-tokenbridge")
    labels = torch.tensor([1, 4, 10])  # 10 = the null class
    seen = {}
    out = decode(gen, tok, labels, guided_free(gen), torch.Generator().manual_seed(0),
                 callback=lambda info: seen.__setitem__(int(info.step.start), info.logits))  # fmt: skip
    tokens = out.tokens
    assert tokens.shape == (3, gen.num_tokens, gen.config.token_dim) and len(seen) == gen.num_tokens
    with torch.no_grad():
        feats = gen.reference_logits(tokens, labels)
        logits = gen(tokens, labels)  # (B, L, D, V), teacher-forced over positions and channels
    for p, f in seen.items():
        torch.testing.assert_close(f, feats[:, p : p + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gen.head.logits(f, tokens[:, p : p + 1]), logits[:, p : p + 1], atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.argmax(-1), tokens)
    loss, acc = gen.training_loss(logits, tokens, {})
    assert loss.ndim == 0 and torch.isfinite(loss) and acc == 1.0


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_guidance_acts_on_every_channels_logits(schedule: str) -> None:
    tok, gen = build("tiny-tokenbridge")
    labels = torch.tensor([2, 7])
    s = gen.config.sampling.replace(cfg=3.0, cfg_schedule=schedule, top_k=1)
    weights = []
    tokens = decode(gen, tok, labels, s, torch.Generator().manual_seed(0),
                    callback=lambda info: weights.append(info.cfg_weight)).tokens  # fmt: skip
    with torch.no_grad():
        cond, uncond = gen(tokens, labels), gen(tokens, torch.full_like(labels, gen.null_class))
    for p, w in enumerate(weights):
        guided = apply_guidance(cond[:, p], uncond[:, p], w, schedule)
        assert torch.equal(guided.argmax(-1), tokens[:, p]), p


def test_seeded_sampling_training_and_bad_pairings(tmp_path) -> None:
    tok, gen = build("tiny-tokenbridge")
    pipe = Pipeline(tok, gen)
    a = pipe.sample([1, 2], 2, seed=3)
    assert a.images.shape == (4, 1, 16, 16) and a.tokens.shape == (4, gen.num_tokens, gen.config.token_dim)
    assert torch.equal(a.tokens, pipe.sample([1, 2], 2, seed=3).tokens)
    assert not torch.equal(a.tokens, pipe.sample([1, 2], 2, seed=4).tokens)
    assert pipe.sample([1], 2, seed=0, top_k=3, top_p=0.9, temperature=0.7).tokens.max() < gen.config.vocab_size
    with pytest.raises(ValueError, match="decoding='sjd'.*channel-ids"):
        pipe.sample([1], 1, decoding="sjd")
    with pytest.raises(ValueError, match="diffusion_steps"):
        pipe.sample([1], 1, diffusion_steps=5)
    # a continuous (diffusion-head) generator with this tokenizer, and this generator with a KL / VQ tokenizer
    kl_tok, continuous = build("tiny-raster-continuous")
    with pytest.raises(ValueError, match="continuous tokenizer.*channel"):
        Pipeline(tok, continuous)
    with pytest.raises(ValueError, match="channel-quantized tokenizer.*continuous"):
        Pipeline(kl_tok, gen)
    vq_tok, _ = build("tiny-raster")
    with pytest.raises(ValueError, match="channel-quantized tokenizer"):
        Pipeline(vq_tok, gen)
    # save / load of the whole pipeline
    pipe.save_pretrained(tmp_path / "pipe")
    again = arvision.load(tmp_path / "pipe")
    assert torch.equal(again.sample([1, 2], 2, seed=3).tokens, a.tokens)


def test_generator_training_loop_runs(tmp_path) -> None:
    from arvision.train.generator import train_generator

    data = _folder(tmp_path / "data")
    tok = tiny()
    tok.save_pretrained(tmp_path / "tok")
    result = train_generator(tmp_path / "run", preset="tiny-tokenbridge", tokenizer=str(tmp_path / "tok"), data=data,
                             progress=False)  # fmt: skip
    assert result["steps"] == GENERATOR_PRESETS["tiny-tokenbridge"].train.steps and np.isfinite(result["final_loss"])
    pipe = arvision.load(tmp_path / "run")
    assert pipe.generator.token_kind == "channel-ids" and pipe.generate([0], 1, seed=0).shape == (1, 1, 16, 16)



def test_shipped_mnist_tokenbridge_uses_its_quantizer() -> None:
    """(Its class accuracy is checked with the other shipped generators, tests/test_shipped_models.py.)"""
    pipe = arvision.load("mnist-tokenbridge")
    assert pipe.generator.token_kind == "channel-ids" and isinstance(pipe.tokenizer, TokenBridgeTokenizer)


def test_training_throughput_benchmark_measures_the_tokenbridge_generator() -> None:
    """`mnist-tokenbridge` names a generator preset and its (fitted, not trained) tokenizer preset:
    benchmarks/training_throughput.py took it for the tokenizer and crashed in its forward pass, and
    `benchmarks/orders.py --only mnist-mar,mnist-tokenbridge` (the README's command) with it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "training_throughput.py"
    res = subprocess.run([sys.executable, str(script), "--one", "mnist-tokenbridge", "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["unit"] == "tokens" and row["rate"] > 0
    assert row["params"] == arvision.load("mnist-tokenbridge").generator.num_parameters()
