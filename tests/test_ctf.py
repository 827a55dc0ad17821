"""Coarse-to-fine labels (generators/ctf.py): the coarse map, the cluster restriction, the loss,
the L + 1 passes, the KV cache, save/load and bad input. The conformance suite runs on tiny-ctf too."""

from __future__ import annotations

import math

import pytest
import torch

from arvision.generators import CTFGenerator
from arvision.generators.ctf import MASKED, coarse_map
from arvision.pipeline import Pipeline
from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS
from arvision.samplers import decode

from test_generators import build


def images(B: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_coarse_map_is_deterministic_and_covers_every_code() -> None:
    codes = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    a = coarse_map(codes, 10, seed=3)
    assert a == coarse_map(codes, 10, seed=3) and len(a) == 64 and set(a) == set(range(10))
    assert a != coarse_map(codes, 10, seed=4) or a == coarse_map(codes, 10, seed=5)  # the seed is used
    # codes near each other share a label: two tight groups, two labels
    two = torch.cat([torch.randn(20, 4) * 0.01 + 5, torch.randn(20, 4) * 0.01 - 5])
    m = coarse_map(two, 2)
    assert len(set(m[:20])) == 1 and len(set(m[20:])) == 1 and m[0] != m[20]
    # duplicate codes (fewer distinct vectors than labels): every label still gets a code
    dup = torch.cat([torch.zeros(10, 4), torch.ones(2, 4)])
    assert set(coarse_map(dup, 5)) == set(range(5))


def test_the_config_carries_the_map_of_the_tokenizer_codes() -> None:
    tok, gen = build("tiny-ctf")
    c = gen.config
    assert c.num_coarse == 4 and len(c.coarse_map) == c.vocab_size == tok.codebook_size
    assert c.coarse_map == coarse_map(tok.quantize.codes(), 4, c.kmeans_seed)
    assert gen.head.out_features == 4 and gen.fine_head.out_features == c.vocab_size


def test_fine_logits_are_restricted_to_the_coarse_cluster() -> None:
    tok, gen = build("tiny-ctf")
    tokens, labels = tok.encode(images()), torch.tensor([1, 5, 10])
    coarse, fine = gen(tokens, labels)
    assert coarse.shape == (3, 64, 4) and fine.shape == (3, 64, 32)
    outside = gen.coarse_of != gen.coarse_of[tokens].unsqueeze(-1)
    assert (fine[outside] == MASKED).all() and (fine[~outside] > MASKED / 2).all()
    # sampled: every code lies in the cluster of its sampled coarse label, guided or not
    pipe = Pipeline(tok, gen)
    for cfg in (1.0, 3.0):
        seen = {}
        out = decode(gen, tok, torch.tensor([0, 3, 7, 9]), gen.config.sampling.replace(cfg=cfg), torch.Generator().manual_seed(1),
                     callback=lambda i: seen.update(coarse=i.state.extra["coarse_BL"].clone()))  # fmt: skip
        assert torch.equal(gen.coarse_of[out.tokens], seen["coarse"])
        assert torch.equal(gen.coarse_of[out.tokens], out.state.extra["coarse_BL"])
    assert pipe.sample([1, 2], 1, seed=0).images.shape == (2, 1, 16, 16)


def test_training_loss_is_finite_with_gradients_everywhere() -> None:
    tok, gen = build("tiny-ctf")
    gen.train()
    tokens = tok.encode(images(4))
    inputs, extra = gen.training_inputs(tokens, torch.tensor([0, 1, 2, 10]), tok)
    loss, acc = gen.training_loss(gen(**inputs), tokens, extra)
    loss.backward()
    assert math.isfinite(loss.item()) and 0 <= acc.item() <= 1
    missing = [n for n, p in gen.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_sampling_takes_L_plus_one_passes_with_K_way_coarse_steps() -> None:
    tok, gen = build("tiny-ctf")
    steps = []
    out = decode(gen, tok, torch.tensor([2, 4]), gen.config.sampling, torch.Generator().manual_seed(0),
                 callback=lambda i: steps.append((i.step.output, i.logits.shape)))  # fmt: skip
    assert out.stats.forward_passes == gen.num_steps == 64 + 1 == len(steps)
    assert steps[:-1] == [("coarse", (2, 1, 4))] * 64 and steps[-1] == ("tokens", (2, 64, 32))


def test_cached_coarse_logits_equal_the_uncached_ones() -> None:
    """Decoding with the KV cache gives each position's coarse logits as a full causal pass over the sampled labels."""
    tok, gen = build("tiny-ctf")
    labels, seen = torch.tensor([1, 6]), []
    out = decode(gen, tok, labels, gen.config.sampling.replace(cfg=1.0), torch.Generator().manual_seed(2),
                 callback=lambda i: seen.append(i.logits))  # fmt: skip
    with torch.no_grad():
        coarse, fine = gen(out.tokens, labels)
    torch.testing.assert_close(torch.cat(seen[:-1], 1), coarse, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(seen[-1], fine, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(tmp_path) -> None:
    tok, gen = build("tiny-ctf")
    path = Pipeline(tok, gen).save_pretrained(tmp_path / "ctf", info={"description": "test"})
    import arvision

    pipe = arvision.load(str(path))
    assert isinstance(pipe.generator, CTFGenerator) and pipe.generator.config == gen.config
    tokens, labels = tok.encode(images()), torch.tensor([0, 1, 2])
    with torch.no_grad():
        for a, b in zip(gen(tokens, labels), pipe.generator(tokens, labels)):
            assert torch.equal(a, b)
    s = dict(seed=5, decode=False)
    assert torch.equal(Pipeline(tok, gen).sample([3, 4], 1, **s).tokens, pipe.sample([3, 4], 1, **s).tokens)


def test_bad_input_is_a_clear_error() -> None:
    gp = GENERATOR_PRESETS["tiny-ctf"]
    tok = TOKENIZER_PRESETS["tiny-vq"].model_class(TOKENIZER_PRESETS["tiny-vq"].config)
    with pytest.raises(ValueError, match=r"num_coarse=33.*32 codes.*num_coarse <= 32"):
        CTFGenerator.config_for_tokenizer(tok, transformer=gp.transformer, num_classes=10, num_coarse=33)
    with pytest.raises(ValueError, match="num_coarse=1"):
        CTFGenerator.config_for_tokenizer(tok, transformer=gp.transformer, num_classes=10, num_coarse=1)
    for name in ("tiny-msvq", "tiny-kl"):  # a pyramid of scales; continuous tokens
        tp = TOKENIZER_PRESETS[name]
        with pytest.raises(ValueError, match="coarse-to-fine order needs|generates ids tokens"):
            gp.build_config(tp.model_class(tp.config), 10)
    cfg = gp.build_config(tok, 10)
    with pytest.raises(ValueError, match="coarse_map must give each of the 32 codes"):
        cfg.replace(coarse_map=(0,) * 32)
    with pytest.raises(ValueError, match="num_steps.*coarse-to-fine order"):
        Pipeline(tok, CTFGenerator(cfg)).sample([1], 1, num_steps=4)
