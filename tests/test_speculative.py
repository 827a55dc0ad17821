"""Speculative decoding of the next-token order (issue 13): SJD, a draft model, LANTERN.

Greedy speculative decoding reproduces greedy decoding exactly; with the exact acceptor the
sampled distribution is that of plain sampling (a chi-square test against the model's exact
distribution, which a deliberately wrong acceptor fails).
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2

import arvision
from arvision.data import MnistDataset
from arvision.generators import NextTokenConfig, NextTokenGenerator, SamplingConfig
from arvision.pipeline import Pipeline
from arvision.presets import llamagen_backbone
from arvision.samplers import apply_guidance, decode
from arvision.samplers.speculative import latent_neighbours, relaxed_prob, speculative_decode, target_probs

from test_generators import build


@pytest.fixture(scope="module")
def raster() -> Pipeline:
    return arvision.load("mnist-raster")


@pytest.mark.parametrize("decoding,window,init", [("sjd", 3, "random"), ("sjd", 8, "spatial"), ("sjd", 49, "random"),
                                                  ("lantern", 8, "random")])  # fmt: skip
def test_greedy_speculative_decoding_is_greedy_decoding(raster: Pipeline, decoding: str, window: int, init: str) -> None:
    labels = torch.arange(10).repeat(2)
    s = raster.defaults.replace(top_k=1)
    plain = raster.sample(labels.tolist(), 1, top_k=1, decode=False).tokens
    s = s.replace(decoding=decoding, window=window, lantern_delta=0.0, jacobi_init=init)
    fast = speculative_decode(raster.generator, raster.tokenizer, labels, s, torch.Generator().manual_seed(0))
    assert torch.equal(fast.tokens, plain)
    assert fast.stats.forward_passes < raster.generator.num_tokens


def test_greedy_decoding_with_a_draft_model_is_greedy_decoding(raster: Pipeline) -> None:
    plain = raster.sample([1, 4, 9], 2, top_k=1, decode=False).tokens
    out = raster.sample([1, 4, 9], 2, top_k=1, decode=False, decoding="speculative", window=4, draft=raster)
    assert torch.equal(out.tokens, plain)
    assert out.stats.forward_passes == raster.generator.num_tokens // 5 + 1  # the model drafts for itself: all accepted
    assert out.stats.draft_passes > 0 and out.stats.mean_accepted_length > 4


def test_greedy_speculative_editing_keeps_the_known_tokens(raster: Pipeline) -> None:
    x = MnistDataset("test", limit=4).images.add(1).div(2)
    mask = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    mask[..., 14:, :] = True
    plain = raster.sample_edit(x, mask, classes=[7, 2, 1, 0], top_k=1)
    fast = raster.sample_edit(x, mask, classes=[7, 2, 1, 0], top_k=1, decoding="sjd", window=6)
    assert torch.equal(fast.tokens, plain.tokens)


def tiny_model(vocab: int = 6) -> NextTokenGenerator:
    torch.manual_seed(0)
    gen = NextTokenGenerator(NextTokenConfig(transformer=llamagen_backbone(1, 16, 2), vocab_size=vocab, num_classes=2, grid_size=2))
    with torch.no_grad():
        for p in gen.parameters():
            p.mul_(0).add_(torch.randn_like(p) * 0.7)  # spread-out, non-uniform distributions
    return gen.eval()


def exact_joint(gen: NextTokenGenerator, label: int, s: SamplingConfig) -> torch.Tensor:
    """(V, V) probability of the first two tokens under plain sampling with settings ``s``."""
    V = gen.config.vocab_size
    t0 = torch.arange(V)
    tokens = torch.stack([t0, t0, t0, t0], 1)
    with torch.no_grad():
        cond = gen(tokens, torch.full((V,), label))
        uncond = gen(tokens, torch.full((V,), gen.null_class))
    logits = apply_guidance(cond, uncond, s.cfg, s.cfg_schedule) if s.guided() else cond
    p = target_probs(logits[:, :2], s)  # row t0: p(t0) at position 0 (same for every row), p(t1 | t0) at position 1
    return p[0, 0][:, None] * p[:, 1]


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    keep = probs.flatten() > 0
    n = counts.sum()
    expected = probs.flatten()[keep] * n
    stat = float(((counts.flatten()[keep] - expected) ** 2 / expected).sum())
    return stat, int(keep.sum()) - 1


@pytest.mark.parametrize("s", [SamplingConfig(cfg=2.0, decoding="sjd", window=3),
                               SamplingConfig(cfg=1.0, temperature=0.8, top_k=4, decoding="sjd", window=2),
                               SamplingConfig(cfg=1.5, decoding="lantern", window=3, lantern_k=3, lantern_delta=0.0)])  # fmt: skip
def test_exact_acceptance_samples_the_plain_distribution(s: SamplingConfig) -> None:
    gen, V, N = tiny_model(), 6, 6000
    rng = torch.Generator().manual_seed(1)
    tok = build("tiny-raster")[0]  # only its codebook (for LANTERN's neighbours) is used
    tok.quantize.embedding.weight.data = torch.randn(V, tok.quantize.embedding.weight.shape[1])
    tok.config = tok.config.replace(codebook_size=V)
    out = speculative_decode(gen, tok, torch.full((N,), 1), s, rng)
    counts = torch.zeros(V, V)
    counts.index_put_((out.tokens[:, 0], out.tokens[:, 1]), torch.ones(N), accumulate=True)
    stat, df = chi_square(counts, exact_joint(gen, 1, s))
    assert stat < chi2.ppf(0.999, df), f"chi-square {stat:.1f} with {df} degrees of freedom: not the plain distribution"


def test_a_wrong_acceptor_fails_the_distribution_test() -> None:
    """LANTERN with every code a neighbour and delta = 1 accepts every draft: not the plain distribution."""
    gen, V, N = tiny_model(), 6, 6000
    tok = build("tiny-raster")[0]
    tok.quantize.embedding.weight.data = torch.randn(V, tok.quantize.embedding.weight.shape[1])
    tok.config = tok.config.replace(codebook_size=V)
    s = SamplingConfig(cfg=2.0, decoding="lantern", window=3, lantern_k=V, lantern_delta=1.0)
    out = speculative_decode(gen, tok, torch.full((N,), 1), s, torch.Generator().manual_seed(1))
    counts = torch.zeros(V, V)
    counts.index_put_((out.tokens[:, 0], out.tokens[:, 1]), torch.ones(N), accumulate=True)
    stat, df = chi_square(counts, exact_joint(gen, 1, s))
    assert stat > chi2.ppf(0.999, df)


def test_lantern_pools_the_nearest_codes_within_delta() -> None:
    codes = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    nb = latent_neighbours(codes, 3)
    assert nb.tolist()[0] == [0, 1, 2] and nb.tolist()[3] == [3, 2, 1]
    p = torch.tensor([[[0.1, 0.05, 0.3, 0.55]]])
    d = torch.tensor([[0]])
    assert relaxed_prob(p, d, nb, 0.0).item() == pytest.approx(0.1)
    assert relaxed_prob(p, d, nb, 0.1).item() == pytest.approx(0.15)  # + code 1; code 2 would exceed delta
    assert relaxed_prob(p, d, nb, 0.4).item() == pytest.approx(0.45)
    with pytest.raises(ValueError, match="larger than the codebook"):
        latent_neighbours(codes, 5)


def test_bad_speculative_settings_are_clear_errors(raster: Pipeline) -> None:
    masked = arvision.load("mnist-masked")
    cases = [
        (raster, dict(decoding="speculative"), ValueError, "needs a draft model"),
        (raster, dict(decoding="sjd", draft="mnist-raster"), ValueError, "drafts with the model itself"),
        (raster, dict(draft="mnist-raster"), ValueError, "pass decoding='speculative'"),
        (raster, dict(decoding="speculative", draft="mnist-masked"), ValueError, "draft model decodes in the masked order"),
        (raster, dict(decoding="lantern", lantern_k=300), ValueError, "larger than the codebook"),
        (raster, dict(decoding="sjd", window=0), ValueError, "window"),
        (raster, dict(decoding="lantern", lantern_delta=1.5), ValueError, "lantern_delta"),
        (raster, dict(decoding="fast"), ValueError, "decoding must be one of"),
        (raster, dict(decoding="sjd", draft=3), TypeError, "draft must be"),
        (masked, dict(decoding="sjd"), ValueError, "masked order does not use decoding"),
    ]
    for pipe, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            pipe.sample([1], 1, **kwargs)
    tok, tiny = build("tiny-raster")
    with pytest.raises(ValueError, match="vocab_size|grid_size"):
        raster.sample([1], 1, decoding="speculative", draft=tiny)
    with pytest.raises(ValueError, match="speculative_decode"):
        decode(raster.generator, raster.tokenizer, torch.tensor([1]), raster.defaults.replace(decoding="sjd"))


def test_stats_report_what_speculative_decoding_bought(raster: Pipeline) -> None:
    out = raster.sample(list(range(10)), 1, decode=False, decoding="sjd", window=8)
    s = out.stats
    assert s.forward_passes < 49 and s.draft_passes == 0
    assert 1 < s.mean_accepted_length and s.mean_passes_per_image <= s.forward_passes
    plain = raster.sample(list(range(10)), 1, decode=False).stats
    assert plain.mean_accepted_length == 1 and plain.mean_passes_per_image == 49


def test_later_tokens_follow_the_plain_distribution_too() -> None:
    """Rows run ahead, carried Jacobi drafts, bonus tokens: the late positions of a 3x3 grid sampled
    with SJD are indistinguishable from plain sampling (two-sample chi-square, same model)."""
    from scipy.stats import chi2_contingency

    torch.manual_seed(0)
    V, N = 4, 6000
    gen = NextTokenGenerator(NextTokenConfig(transformer=llamagen_backbone(1, 16, 2), vocab_size=V, num_classes=2, grid_size=3))
    with torch.no_grad():
        for p in gen.parameters():
            p.mul_(0).add_(torch.randn_like(p) * 0.7)
    gen.eval()
    s, labels = SamplingConfig(cfg=2.0), torch.full((N,), 1)
    plain = decode(gen, None, labels, s, torch.Generator().manual_seed(1)).tokens
    fast = speculative_decode(gen, None, labels, s.replace(decoding="sjd", window=3), torch.Generator().manual_seed(2)).tokens
    for a, b in ((6, 7), (2, 8)):
        ca, cb = (torch.bincount(t[:, a] * V + t[:, b], minlength=V * V) for t in (plain, fast))
        keep = (ca + cb) > 0
        assert chi2_contingency(torch.stack([ca[keep], cb[keep]]).numpy())[1] > 1e-3, (a, b)
