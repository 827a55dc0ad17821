"""Raster next-token over a 1-D token sequence (layout kind "sequence"): 1-D positions, layout
checks and ``num_tokens`` (stop after the first k tokens). Built from a layout alone, no tokenizer:
the conformance suite runs the order with a tokenizer through its ``tiny-*`` preset."""

from __future__ import annotations

import pytest
import torch

from arvision.generators import NextTokenGenerator, SequenceConfig, SequenceGenerator, rope_1d_table
from arvision.presets import llamagen_backbone
from arvision.samplers import SamplingConfig, decode
from arvision.tokenizers import TokenLayout

SEQ = TokenLayout("sequence", 50, length=12)


def build(positions: str = "rope1d") -> SequenceGenerator:
    torch.manual_seed(0)
    gen = SequenceGenerator(SequenceGenerator.config_for(SEQ, transformer=llamagen_backbone(2, 32, 2), num_classes=10,
                                                         positions=positions))  # fmt: skip
    with torch.no_grad():  # off the near-identity init, so every part matters
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return gen.eval()


def test_config_is_derived_from_the_layout_and_checked_against_it() -> None:
    gen = build()
    assert (gen.config.seq_len, gen.config.vocab_size, gen.num_tokens, gen.order) == (12, 50, 12, "next-token-1d")
    gen.check_layout(SEQ)
    with pytest.raises(ValueError, match="seq_len=16 but the generator was built for seq_len=12"):
        gen.check_layout(TokenLayout("sequence", 50, length=16))
    with pytest.raises(ValueError, match="next-token-1d order needs a tokenizer of 1-D token sequences.*7x7 token grid"):
        gen.check_layout(TokenLayout("grid", 50, grid=(7, 7)))
    with pytest.raises(ValueError, match="next-token order needs a VQ grid tokenizer.*a sequence of 12 tokens"):
        NextTokenGenerator.layout_fields(SEQ)
    with pytest.raises(ValueError, match="positions must be one of"):
        SequenceConfig(transformer=llamagen_backbone(2, 32, 2), vocab_size=50, num_classes=10, positions="rope2d")


def test_rope_1d_depends_on_the_offset_only() -> None:
    table = rope_1d_table(20, 8, 10000.0)
    assert table.shape == (20, 4, 2)
    assert torch.equal(table[0], torch.stack([torch.ones(4), torch.zeros(4)], -1))  # position 0: no rotation
    rot = torch.view_as_complex(table)
    q, k = torch.randn(4, dtype=torch.cfloat), torch.randn(4, dtype=torch.cfloat)
    dot = lambda i, j: (q * rot[i] * (k * rot[j]).conj()).sum().real  # noqa: E731
    torch.testing.assert_close(dot(7, 3), dot(15, 11))
    torch.testing.assert_close(dot(2, 9), dot(10, 17))


@pytest.mark.parametrize("positions", ["rope1d", "learned"])
def test_stepwise_decoding_equals_the_full_forward(positions: str) -> None:
    gen = build(positions)
    tokens = torch.randint(50, (3, 12), generator=torch.Generator().manual_seed(1))
    labels, seen = torch.tensor([1, 4, 10]), []
    out = decode(gen, None, labels, SamplingConfig(), prior_BL=tokens, known_BL=torch.ones(3, 12, dtype=torch.bool),
                 callback=lambda info: seen.append((info.step.predicts, info.logits)))  # fmt: skip
    assert torch.equal(out.tokens, tokens)
    with torch.no_grad():
        ref = gen(tokens, labels)
    for index, logits in seen:
        torch.testing.assert_close(logits, ref[:, index], atol=1e-4, rtol=1e-4)


def test_num_tokens_stops_after_k_tokens_and_gives_the_prefix_of_the_full_run() -> None:
    gen = build()
    labels, s = torch.tensor([1, 2, 3]), SamplingConfig(cfg=2.0)
    full = decode(gen, None, labels, s, torch.Generator().manual_seed(5))
    assert full.tokens.shape == (3, 12) and full.stats.forward_passes == 12
    for k in (1, 5, 12):
        part = decode(gen, None, labels, s.replace(num_tokens=k), torch.Generator().manual_seed(5))
        assert part.tokens.shape == (3, k) and part.stats.forward_passes == k and part.stats.tokens == 3 * k
        assert torch.equal(part.tokens, full.tokens[:, :k])  # raster order: the same draws, stopped early
    # editing with fewer tokens: the known tokens (given over the whole sequence) are cut to the prefix
    known = torch.zeros(3, 12, dtype=torch.bool)
    known[:, 1] = True
    edit = decode(gen, None, labels, s.replace(num_tokens=4), torch.Generator().manual_seed(5), prior_BL=full.tokens, known_BL=known)
    assert edit.tokens.shape == (3, 4) and torch.equal(edit.tokens[:, 1], full.tokens[:, 1])


def test_bad_num_tokens_are_clear_errors() -> None:
    gen = build()
    with pytest.raises(ValueError, match="num_tokens=13: this model generates sequences of at most 12 tokens"):
        decode(gen, None, torch.tensor([1]), SamplingConfig(num_tokens=13))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_tokens must be a positive number"):
            SamplingConfig(num_tokens=bad)
    grid = NextTokenGenerator(NextTokenGenerator.config_for(TokenLayout("grid", 50, grid=(3, 3)), transformer=llamagen_backbone(2, 32, 2),
                                                            num_classes=10))  # fmt: skip
    with pytest.raises(ValueError, match="num_tokens=2: the next-token order does not use num_tokens; num_tokens applies to the next-token-1d"):
        decode(grid, None, torch.tensor([1]), SamplingConfig(num_tokens=2))
