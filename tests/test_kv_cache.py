"""The explicit KV cache of the backbone layer: writes at given positions, commit, truncate,
and the rollback speculative decoding relies on."""

from __future__ import annotations

import pytest
import torch

from arvision.nn.kv_cache import KVCache
from arvision.samplers import DecodeState, Step

from test_generators import build


def small_cache(max_len: int = 6) -> KVCache:
    return KVCache(num_layers=2, batch_size=2, num_heads=1, max_len=max_len, head_dim=3)


def test_writes_go_to_the_given_positions_and_truncate_rolls_back() -> None:
    c = small_cache()
    k = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    keys, values = c.write(0, 0, k, k + 1)
    assert keys.shape == (2, 1, 3, 3) and torch.equal(keys, k) and torch.equal(values, k + 1)
    c.commit(3)
    keys, _ = c.write(0, 3, k[:, :, :2], k[:, :, :2])  # positions 3, 4
    assert keys.shape[2] == 5 and torch.equal(keys[:, :, 3:], k[:, :, :2])
    c.commit(5)
    c.truncate(2)
    assert c.length == 2
    keys, _ = c.write(0, 2, -k[:, :, :1], -k[:, :, :1])  # overwrite position 2 after the rollback
    assert keys.shape[2] == 3 and torch.equal(keys[:, :, 2], -k[:, :, 0])
    with pytest.raises(ValueError, match="cannot truncate"):
        c.truncate(4)


def test_bad_writes_are_clear_errors() -> None:
    c = small_cache(4)
    k = torch.zeros(2, 1, 3, 3)
    with pytest.raises(ValueError, match="cannot write at position 1"):
        c.write(0, 1, k, k)  # a gap: nothing is cached yet
    c.commit(2)
    with pytest.raises(ValueError, match="overflow"):
        c.write(0, 2, k, k)  # positions 2..4 of a 4-position cache
    with pytest.raises(ValueError, match="made for 2 rows"):
        c.write(0, 0, torch.zeros(3, 1, 1, 3), torch.zeros(3, 1, 1, 3))


def raster_steps(gen, tokens: torch.Tensor, cond: torch.Tensor, cache, start: int, end: int) -> torch.Tensor:
    state = DecodeState(tokens_BL=tokens, known_BL=tokens >= 0, open_BL=tokens < 0)
    return gen.step(state, Step(0, start, start, end), cond, cache)


def test_a_rejected_draft_rolled_back_leaves_exactly_the_accepted_prefix() -> None:
    """Verify a window of draft tokens in one pass, reject part of it, truncate, continue: the logits
    equal one full forward pass over the accepted tokens (speculative decoding's contract)."""
    _, gen = build("tiny-raster")
    tokens = torch.randint(0, gen.config.vocab_size, (2, gen.num_tokens), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 8])
    with torch.no_grad():
        full = gen(tokens, labels)
        cond = gen.class_emb(labels)
        cache = gen.new_cache(2)
        got = [raster_steps(gen, tokens, cond, cache, 0, 5)]  # prefill + 4 tokens in one pass
        drafts = tokens.clone()
        drafts[:, 6:9] = (drafts[:, 6:9] + 1) % gen.config.vocab_size  # a window of wrong drafts
        wrong = raster_steps(gen, drafts, cond, cache, 5, 10)
        torch.testing.assert_close(wrong[:, :2], full[:, 5:7], atol=1e-5, rtol=1e-5)  # before the first wrong input
        assert cache.length == 10
        cache.truncate(7)  # accept positions 5, 6 (their inputs were right), reject the rest
        got += [wrong[:, :2], raster_steps(gen, tokens, cond, cache, 7, gen.num_tokens)]
        torch.testing.assert_close(torch.cat(got, 1), full, atol=1e-5, rtol=1e-5)
