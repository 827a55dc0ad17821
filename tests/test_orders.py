"""The masked, next-neighbour and Markovian next-scale orders: masks, caches, schedules, settings."""

from __future__ import annotations

import math

import pytest
import torch

from arvision.generators import MarkovScaleGenerator, MaskedGenerator, NeighborGenerator, SamplingConfig
from arvision.generators.masked import cosine_mask_ratio
from arvision.pipeline import Pipeline
from arvision.presets import GENERATOR_PRESETS
from arvision.samplers import Sampler, decode, mask_schedule, reveal_step, row_schedules

from test_generators import build

NEW_ORDERS = ["tiny-masked", "tiny-neighbor", "tiny-markov-scale"]


def random_tokens(gen, B: int = 3) -> torch.Tensor:
    return torch.randint(0, gen.config.vocab_size, (B, gen.num_tokens), generator=torch.Generator().manual_seed(1))


def test_neighbor_ring_order_mask_and_dependencies_equal_a_naive_loop() -> None:
    _, gen = build("tiny-neighbor")
    n, L = gen.config.grid_size, gen.num_tokens
    order = gen.order_L.tolist()
    # order: rings of growing i + j, row-major inside a ring; starts at the corner
    naive = [c for d in range(2 * n - 1) for c in range(L) if c // n + c % n == d]
    assert order == naive and gen.num_steps == 2 * n - 1 == len(gen.ring_ranges)
    ring = [c // n + c % n for c in order]
    mask = [[ring[q] <= ring[p] for q in range(L)] for p in range(L)]
    assert gen.attn_mask.tolist() == mask
    # every cell's logits depend on the class and the tokens of earlier rings only
    tokens, labels = random_tokens(gen), torch.tensor([1, 2, 3])
    with torch.no_grad():
        base = gen(tokens, labels)
        for cell in (0, n + 1, L - 1):
            d = cell // n + cell % n
            same, earlier = tokens.clone(), tokens.clone()
            later_cells = [c for c in range(L) if c // n + c % n >= d]
            same[:, later_cells] = (same[:, later_cells] + 1) % gen.config.vocab_size
            torch.testing.assert_close(gen(same, labels)[:, cell], base[:, cell], atol=1e-5, rtol=0)
            if d > 0:
                before = [c for c in range(L) if c // n + c % n == d - 1]
                earlier[:, before] = (earlier[:, before] + 1) % gen.config.vocab_size
                assert not torch.allclose(gen(earlier, labels)[:, cell], base[:, cell], atol=1e-4)


def test_markov_scale_mask_is_block_diagonal_and_scales_see_only_their_input() -> None:
    tok, gen = build("tiny-markov-scale")
    lvl = gen.lvl_1L[0].tolist()
    assert gen.attn_mask.tolist() == [[a == b for b in lvl] for a in lvl]
    assert gen.new_cache(2) is None
    tokens, labels = tok.encode(torch.rand(2, 1, 16, 16) * 2 - 1), torch.tensor([4, 10])
    with torch.no_grad():
        x = tok.teacher_forcing_input(tokens)
        full = gen(labels, x)
        seen = []  # one scale at a time, nothing cached, every token known
        decode(gen, tok, labels, SamplingConfig(cfg=0.0, cfg_schedule="linear"), prior_BL=tokens, known_BL=tokens >= 0,
               callback=lambda info: seen.append(info.logits))  # fmt: skip
        torch.testing.assert_close(torch.cat(seen, 1), gen(labels, x, tokens), atol=1e-5, rtol=1e-5)
        # changing the input of the last scale leaves every other scale unchanged
        x2 = x.clone()
        x2[:, -gen.config.patch_nums[-1] ** 2 :] += 1
        start = gen.scale_ranges[-1][0]
        torch.testing.assert_close(gen(labels, x2)[:, :start], full[:, :start], atol=1e-5, rtol=0)


def test_markov_scale_without_refinement_is_one_pass_per_scale() -> None:
    gp = GENERATOR_PRESETS["tiny-markov-scale"]
    tok, _ = build("tiny-markov-scale")
    gen = MarkovScaleGenerator(gp.build_config(tok, 10).replace(refine=False)).eval()
    out = decode(gen, tok, torch.tensor([1, 2]), SamplingConfig(cfg=1.5, cfg_schedule="linear"))
    assert out.stats.forward_passes == len(gen.config.patch_nums) and out.tokens.shape == (2, gen.num_tokens)
    assert not hasattr(gen, "tok_embeddings")
    with pytest.raises(ValueError, match="trained without refinement"):
        decode(gen, tok, torch.tensor([1]), SamplingConfig(num_steps=2))


def test_masked_order_is_bidirectional_and_training_masks_a_cosine_share() -> None:
    tok, gen = build("tiny-masked")
    tokens, labels = random_tokens(gen, 64), torch.arange(64) % 10
    inputs, extra = gen.training_inputs(tokens, labels, tok, torch.Generator().manual_seed(0))
    masked = extra["masked_BL"]
    assert torch.equal(inputs["tokens_BL"] == gen.mask_id, masked)
    assert torch.equal(inputs["tokens_BL"][~masked], tokens[~masked])
    # the same draws, by a naive loop: u ~ U(0,1) per row, ceil(L cos(pi u / 2)) masked positions
    g = torch.Generator().manual_seed(0)
    u = torch.rand(64, 1, generator=g)
    for b in range(64):
        want = min(max(math.ceil(gen.num_tokens * math.cos(math.pi / 2 * float(u[b]))), 1), gen.num_tokens)
        assert int(masked[b].sum()) == want
    assert torch.allclose(cosine_mask_ratio(torch.tensor([0.0, 1.0])), torch.tensor([1.0, 0.0]), atol=1e-6)
    # bidirectional: the first position's logits depend on the last token
    with torch.no_grad():
        t2 = tokens[:2].clone()
        a = gen(t2, labels[:2])
        t2[:, -1] = (t2[:, -1] + 1) % gen.config.vocab_size
        assert not torch.allclose(gen(t2, labels[:2])[:, 0], a[:, 0], atol=1e-5)


@pytest.mark.parametrize("L,S", [(49, 8), (49, 49), (4, 4), (64, 1), (85, 12)])
def test_mask_schedule(L: int, S: int) -> None:
    sched = mask_schedule(L, S)
    assert len(sched) == S and sched[-1] == 0
    prev = L
    for t, m in enumerate(sched):
        assert m < prev, "every step reveals at least one token"
        cosine = math.floor(L * math.cos(math.pi / 2 * (t + 1) / S))
        assert m <= cosine or m == S - 1 - t  # the cosine schedule, kept strictly decreasing
        prev = m


def test_reveal_step_keeps_the_least_confident_masked() -> None:
    logits = torch.tensor([[[5.0, 0.0], [0.0, 0.1], [0.0, 9.0], [1.0, 0.0]]])
    tokens = torch.tensor([[7, 7, 1, 7]])  # 7 = mask id here; position 2 already known
    unknown = torch.tensor([[True, True, False, True]])
    s = Sampler(SamplingConfig(top_k=1, choice_temperature=0.0))
    new, still = reveal_step(logits, tokens, unknown, 1, 0.5, s)
    assert new.tolist() == [[0, 7, 1, 0]] and still.tolist() == [[False, True, False, False]]
    new, still = reveal_step(logits, new, still, 0, 1.0, s)
    assert new.tolist() == [[0, 1, 1, 0]] and not still.any()


def test_row_schedules_follow_each_rows_open_tokens() -> None:
    """Editing leaves rows with different numbers of open tokens: each follows its own cosine schedule."""
    table = row_schedules(torch.tensor([49, 10, 3, 0]), 8)
    assert table.shape == (8, 4)
    assert table[:, 0].tolist() == mask_schedule(49, 8) and table[:, 1].tolist() == mask_schedule(10, 8)
    assert table[-1].tolist() == [0, 0, 0, 0] and table[:, 3].tolist() == [0] * 8
    assert all(a >= b for a, b in zip(table[:, 2].tolist(), table[1:, 2].tolist())) and table[0, 2] <= 3


@pytest.mark.parametrize("name", NEW_ORDERS)
def test_seeded_sampling_is_deterministic_and_saved_pipelines_reload(name: str, tmp_path) -> None:
    tok, gen = build(name)
    pipe = Pipeline(tok, gen)
    a = pipe.sample([1, 2], 2, seed=3)
    assert torch.equal(a.tokens, pipe.sample([1, 2], 2, seed=3).tokens)
    assert not torch.equal(a.tokens, pipe.sample([1, 2], 2, seed=4).tokens)
    assert a.images.shape == (4, 1, 16, 16) and a.stats.forward_passes_per_image == gen.num_steps
    pipe.save_pretrained(tmp_path / name)
    again = Pipeline.from_pretrained(tmp_path / name)
    assert type(again.generator) is type(gen) and torch.equal(again.sample([1, 2], 2, seed=3).tokens, a.tokens)


def test_steps_are_chosen_at_sampling_time() -> None:
    tok, gen = build("tiny-masked")
    pipe = Pipeline(tok, gen)
    assert pipe.sample([1], 2, num_steps=3).stats.forward_passes_per_image == 3
    assert pipe.sample([1], 2, num_steps=gen.num_tokens).stats.forward_passes_per_image == gen.num_tokens
    tok, gen = build("tiny-markov-scale")
    passes = sum(min(3, p * p) for p in gen.config.patch_nums)
    assert Pipeline(tok, gen).sample([1], 2, num_steps=3).stats.forward_passes_per_image == passes


def test_bad_settings_are_clear_errors() -> None:
    tok_vq, masked = build("tiny-masked")
    tok_ms, markov = build("tiny-markov-scale")
    _, neighbor = build("tiny-neighbor")
    with pytest.raises(ValueError, match="num_steps must be a positive"):
        Pipeline(tok_vq, masked).sample([1], 1, num_steps=0)
    with pytest.raises(ValueError, match="more than the 64 tokens"):
        Pipeline(tok_vq, masked).sample([1], 1, num_steps=65)
    with pytest.raises(ValueError, match="more than the 64 tokens of the largest scale"):
        Pipeline(tok_ms, markov).sample([1], 1, num_steps=65)
    with pytest.raises(ValueError, match="next-neighbor order always takes 15 steps"):
        Pipeline(tok_vq, neighbor).sample([1], 1, num_steps=4)
    with pytest.raises(ValueError, match="choice_temperature"):
        SamplingConfig(choice_temperature=-1)
    with pytest.raises(ValueError, match="markov-scale order needs a multi-scale tokenizer"):
        Pipeline(tok_vq, markov)
    for name in ("tiny-masked", "tiny-neighbor"):
        with pytest.raises(ValueError, match="order needs a VQ grid tokenizer"):
            GENERATOR_PRESETS[name].build_config(tok_ms, 10)
    with pytest.raises(ValueError, match="multi-scale tokenizer"):
        GENERATOR_PRESETS["tiny-markov-scale"].build_config(tok_vq, 10)
    assert isinstance(masked, MaskedGenerator) and isinstance(neighbor, NeighborGenerator)


def test_cli_bad_steps_fail_before_any_work(tmp_path, capsys) -> None:
    from arvision.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "generator", "mnist-raster", "-n", "10", "--steps", "3", "--out", str(out), "--no-progress"]) == 2
    assert "next-token order always takes 49 steps" in capsys.readouterr().err and not out.exists()
    assert main(["generate", "mnist-masked", "--steps", "0", "-o", str(tmp_path / "x.png")]) == 2
    assert "num_steps must be a positive" in capsys.readouterr().err
    assert main(["generate", "mnist-masked", "--classes", "3", "-n", "2", "--steps", "2", "-o", str(tmp_path / "x.png")]) == 0
    assert "2.00 forward passes/image" in capsys.readouterr().out


def test_a_known_raster_prefix_is_teacher_forced_in_one_pass(monkeypatch) -> None:
    """Editing with the top rows kept: the known prefix is one forward pass, and (greedy) the result
    equals decoding it token by token."""
    from arvision.generators.next_token import NextTokenOrder

    tok, gen = build("tiny-raster")
    prior = tok.encode(torch.rand(2, 1, 16, 16) * 2 - 1)
    known = torch.zeros_like(prior, dtype=torch.bool)
    known[:, :20] = True
    known[0, 30] = True  # not a prefix in every row: decoded token by token
    s = SamplingConfig(cfg=2.0, top_k=1)
    fast = decode(gen, tok, torch.tensor([1, 2]), s, prior_BL=prior, known_BL=known)
    assert fast.stats.forward_passes == gen.num_tokens - 20
    monkeypatch.setattr(NextTokenOrder, "skip_known", lambda self, plan, known_BL: plan)
    slow = decode(gen, tok, torch.tensor([1, 2]), s, prior_BL=prior, known_BL=known)
    assert slow.stats.forward_passes == gen.num_tokens and torch.equal(fast.tokens, slow.tokens)
    assert torch.equal(fast.tokens[known], prior[known])


def test_every_row_of_the_orders_benchmark_measures_a_distinct_setting(monkeypatch) -> None:
    """benchmarks/orders.py's rows with overrides name settings that differ from the model's defaults
    (when mnist-mar's default became 16 steps, its "16 steps" row repeated the default row)."""
    import importlib
    import sys
    from pathlib import Path

    import arvision

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    orders = importlib.import_module("orders")
    monkeypatch.setitem(sys.modules, "orders", orders)  # forgotten again after the test
    label_of = {}  # (model, effective sampling settings) -> the row that measures them
    for label, name, overrides in orders.ROWS:
        key = (name, arvision.load(name).sampling_config(**overrides))
        assert key not in label_of, f"row {label!r} repeats row {label_of[key]!r}"
        label_of[key] = label
