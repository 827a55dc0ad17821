"""Fast next-scale decoding (issue 13): CoDe (a small refiner takes the later scales) and VARiant
(the later scales run a weight-shared subnet). Equivalences first, then the errors."""

from __future__ import annotations

import math

import pytest
import torch

from arvision.generators import NextScaleGenerator
from arvision.pipeline import Pipeline
from arvision.samplers import decode
from arvision.samplers.order import Step

from test_generators import build

LABELS = torch.tensor([1, 4, 7])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok, gen = build("tiny-scale")
    torch.manual_seed(1)
    _, other = build("tiny-scale")  # same layout, other weights: a stand-in refiner
    return tok, gen, other


def run(gen, tok, s, refiner=None, seed: int = 0, **kw):
    return decode(gen, tok, LABELS, s, torch.Generator().manual_seed(seed), refiner=refiner, **kw)


# -- CoDe ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("guided", [True, False])
def test_code_with_the_model_as_its_own_refiner_gives_the_plain_tokens(tiny, guided) -> None:
    tok, gen, _ = tiny
    s = gen.config.sampling if guided else gen.config.sampling.replace(cfg=0.0)
    plain = run(gen, tok, s)
    for K in range(1, len(gen.config.patch_nums) + 1):
        out = run(gen, tok, s.replace(draft_scales=K), refiner=gen)
        assert torch.equal(out.tokens, plain.tokens), f"draft_scales={K}"
        assert out.stats.forward_passes == plain.stats.forward_passes == len(gen.config.patch_nums)  # the prefill is no extra pass


def test_draft_scales_equal_to_the_number_of_scales_is_plain_decoding(tiny) -> None:
    tok, gen, other = tiny
    s = gen.config.sampling
    S = len(gen.config.patch_nums)
    assert torch.equal(run(gen, tok, s.replace(draft_scales=S), refiner=other).tokens, run(gen, tok, s).tokens)
    assert not torch.equal(run(gen, tok, s.replace(draft_scales=2), refiner=other).tokens, run(gen, tok, s).tokens)


def test_the_refiner_decodes_the_later_scales_after_the_drafter(tiny) -> None:
    """Scales < K come from the drafter's logits, the rest from the refiner's (seen through the callback)."""
    tok, gen, other = tiny
    s = gen.config.sampling.replace(cfg=0.0)
    K, seen = 2, []
    out = run(gen, tok, s.replace(draft_scales=K), refiner=other, callback=lambda i: seen.append((i.step.group, i.logits)))
    drafter = run(gen, tok, s, prior_BL=out.tokens, known_BL=torch.ones_like(out.tokens, dtype=torch.bool),
                  callback=lambda i: seen.append((10 + i.step.group, i.logits)))  # fmt: skip
    refiner = run(other, tok, s, prior_BL=out.tokens, known_BL=torch.ones_like(out.tokens, dtype=torch.bool),
                  callback=lambda i: seen.append((20 + i.step.group, i.logits)))  # fmt: skip
    assert torch.equal(drafter.tokens, out.tokens) and torch.equal(refiner.tokens, out.tokens)
    logits = dict(seen)
    for g in range(len(gen.config.patch_nums)):
        ref = logits[10 + g] if g < K else logits[20 + g]  # step-by-step decoding of the same tokens, by the right model
        torch.testing.assert_close(logits[g], ref, atol=1e-4, rtol=1e-4)


def test_the_refiners_one_pass_prefill_equals_step_by_step(tiny) -> None:
    """The refiner's first pass (positions 0 .. end of scale K) fills its cache as K + 1 single-scale passes do."""
    tok, gen, other = tiny
    s = gen.config.sampling.replace(cfg=0.0)
    state = run(gen, tok, s).state  # holds every scale's input (x_in)
    cond = other.class_emb.encode(LABELS, with_null=False)
    ranges, fl, K = other.scale_ranges, other.first_len, 2
    stepwise, onepass = other.new_cache(3), other.new_cache(3)
    with torch.no_grad():
        for si in range(K + 1):
            a, b = ranges[si]
            if si:
                state.extra["x_next"] = state.extra["x_in"][:, a - fl : b - fl]
            last = other.step(state, Step(si, si, a, b), cond, stepwise)
        a, b = ranges[K]
        merged = other.step(state, Step(K, K, 0, b, targets=torch.arange(a, b)), cond, onepass)
    assert stepwise.length == onepass.length == b
    torch.testing.assert_close(onepass.k[:, :, :, :b], stepwise.k[:, :, :, :b], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(onepass.v[:, :, :, :b], stepwise.v[:, :, :, :b], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, last, atol=1e-5, rtol=1e-5)


def test_pipeline_takes_a_refiner_pipeline_and_editing_works(tiny) -> None:
    tok, gen, other = tiny
    pipe = Pipeline(tok, gen)
    out = pipe.sample([1, 2], 2, seed=3, decode=False, refiner=Pipeline(tok, other), draft_scales=2)
    assert torch.equal(out.tokens, pipe.sample([1, 2], 2, seed=3, decode=False, refiner=other, draft_scales=2).tokens)
    images, mask = torch.rand(2, 1, 16, 16), torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., 8:, :] = True
    edit = pipe.sample_edit(images, mask, classes=3, refiner=other, draft_scales=2, decode=False)
    prior = tok.encode(images * 2 - 1)
    assert edit.known.any() and torch.equal(edit.tokens[edit.known], prior[edit.known])


# -- VARiant ---------------------------------------------------------------------------------------
def test_subnets_are_equidistant_keep_first_and_last_and_nest() -> None:
    _, gen = build("tiny-scale")
    t = gen.transformer
    assert t.subnet(1) == (0,) and t.subnet(2) == (0, 1)
    from arvision.nn.transformer import Transformer

    deep = Transformer(gen.config.transformer.replace(depth=6))
    assert [deep.subnet(d) for d in (2, 3, 6)] == [(0, 5), (0, 2, 5), (0, 1, 2, 3, 4, 5)]
    with pytest.raises(ValueError, match="1..6 blocks"):
        deep.subnet(7)


def test_full_depth_schedule_gives_the_plain_tokens(tiny) -> None:
    tok, gen, _ = tiny
    s = gen.config.sampling
    D, S = gen.config.transformer.depth, len(gen.config.patch_nums)
    assert torch.equal(run(gen, tok, s.replace(depth_schedule=(D,) * S)).tokens, run(gen, tok, s).tokens)


def test_subnet_schedule_runs_differs_and_equals_its_teacher_forced_pass(tiny) -> None:
    """Step-by-step decoding on a subnet (KV cache of the full-depth scales) equals one teacher-forced
    pass with the same schedule (Transformer block_ends), and differs from full depth."""
    tok, gen, _ = tiny
    schedule = (2, 2, 1, 1)
    s = gen.config.sampling.replace(cfg=0.0, depth_schedule=schedule)
    seen = []
    out = run(gen, tok, s, callback=lambda i: seen.append((i.step.predicts, i.logits)))
    assert not torch.equal(out.tokens, run(gen, tok, s.replace(depth_schedule=None)).tokens)
    L = gen.num_tokens
    with torch.no_grad():
        both = gen(LABELS, tok.teacher_forcing_input(out.tokens), gen.block_ends(schedule))
    assert both.shape[1] == 2 * L
    for index, logits in seen:
        torch.testing.assert_close(logits, both[:, L:][:, index], atol=1e-4, rtol=1e-4)
    first_subnet = gen.scale_ranges[2][0]
    torch.testing.assert_close(both[:, :first_subnet], both[:, L : L + first_subnet], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[:, first_subnet:L], both[:, L + first_subnet :])


def test_variant_training_mixes_the_subnet_loss_on_a_progressive_share(tiny) -> None:
    tok, gen, _ = tiny
    cfg = gen.config.replace(subnet_depths=(1,), subnet_from=(1, 2), subnet_loss_share=(0.8, 0.5, 0.2))
    model = NextScaleGenerator(cfg).train()
    assert [model.subnet_share(p) for p in (0.0, 0.34, 0.99, 1.0)] == [0.8, 0.5, 0.2, 0.2]
    tokens = tok.encode(torch.rand(4, 1, 16, 16) * 2 - 1)
    inputs, extra = model.training_inputs(tokens, torch.tensor([0, 1, 2, 10]), tok, torch.Generator().manual_seed(0))
    assert extra["subnet_start"] in (model.scale_ranges[1][0], model.scale_ranges[2][0])
    assert inputs["subnet_ends"][0] == model.num_tokens and inputs["subnet_ends"][1] == extra["subnet_start"]
    logits = model(**inputs)
    full, _ = model.training_loss(logits, tokens, {})
    mixed, _ = model.training_loss(logits, tokens, {**extra, "progress": 0.9})
    sub, _ = model.loss(logits[:, model.num_tokens + extra["subnet_start"] :], tokens[:, extra["subnet_start"] :])
    assert math.isclose(mixed.item(), 0.8 * full.item() + 0.2 * sub.item(), rel_tol=1e-5)
    mixed.backward()
    assert all(p.grad is not None for p in model.parameters())


# -- errors ----------------------------------------------------------------------------------------
def test_bad_refiners_are_clear_errors(tiny) -> None:
    tok, gen, other = tiny
    pipe = Pipeline(tok, gen)
    c = gen.config
    with pytest.raises(ValueError, match="refiner does not fit this tokenizer.*vocab_size"):
        pipe.sample([1], refiner=NextScaleGenerator(c.replace(vocab_size=c.vocab_size + 1)), draft_scales=2)
    with pytest.raises(ValueError, match="refiner does not fit this tokenizer.*patch_nums"):
        pipe.sample([1], refiner=NextScaleGenerator(c.replace(patch_nums=(1, 2, 3, 8))), draft_scales=2)
    with pytest.raises(ValueError, match="knows 5 classes"):
        pipe.sample([1], refiner=NextScaleGenerator(c.replace(num_classes=5)), draft_scales=2)
    _, markov = build("tiny-markov-scale")
    with pytest.raises(ValueError, match="markov-scale order.*next-scale order"):
        pipe.sample([1], refiner=markov, draft_scales=2)
    torch.manual_seed(5)
    tok2, _ = build("tiny-scale")  # same layout, other weights
    with pytest.raises(ValueError, match="another tokenizer"):
        pipe.sample([1], refiner=Pipeline(tok2, other), draft_scales=2)
    with pytest.raises(TypeError, match="refiner must be"):
        pipe.sample([1], refiner=42, draft_scales=2)


def test_bad_draft_scales_are_clear_errors(tiny) -> None:
    tok, gen, other = tiny
    pipe = Pipeline(tok, gen)
    with pytest.raises(ValueError, match="draft_scales=2 needs a refiner"):
        pipe.sample([1], draft_scales=2)
    with pytest.raises(ValueError, match="a refiner needs draft_scales"):
        pipe.sample([1], refiner=other)
    with pytest.raises(ValueError, match="draft_scales=5: this model has 4 scales"):
        pipe.sample([1], refiner=other, draft_scales=5)
    with pytest.raises(ValueError, match="draft_scales must be a positive"):
        pipe.sample([1], refiner=other, draft_scales=0)
    with pytest.raises(ValueError, match="set one of them"):
        pipe.sample([1], refiner=other, draft_scales=2, depth_schedule=(2, 2, 1, 1))
    tok_r, raster = build("tiny-raster")
    with pytest.raises(ValueError, match="draft_scales.*next-token order"):
        Pipeline(tok_r, raster).sample([1], draft_scales=2)
    _, markov = build("tiny-markov-scale")
    with pytest.raises(ValueError, match="depth_schedule.*markov-scale order"):
        Pipeline(tok, markov).sample([1], depth_schedule=(2, 2, 1, 1))


def test_bad_depth_schedules_are_clear_errors(tiny) -> None:
    tok, gen, _ = tiny
    pipe = Pipeline(tok, gen)
    with pytest.raises(ValueError, match=r"one depth per scale, 4 for the scales \(1, 2, 4, 8\)"):
        pipe.sample([1], depth_schedule=(2, 1))
    with pytest.raises(ValueError, match="this model has 2 blocks, so each depth must be 1..2"):
        pipe.sample([1], depth_schedule=(2, 2, 3, 3))
    with pytest.raises(ValueError, match="scale 2 would run blocks .0, 1. but scale 1 ran only .0."):
        pipe.sample([1], depth_schedule=(2, 1, 2, 2))
    with pytest.raises(ValueError, match="depth_schedule must be positive"):
        pipe.sample([1], depth_schedule=(2, 2, 0, 1))
    with pytest.raises(ValueError, match="subnet_depths are subnet depths below the model's 2 blocks"):
        gen.config.replace(subnet_depths=(2,), subnet_from=(1,))
    with pytest.raises(ValueError, match="subnet_from needs"):
        gen.config.replace(subnet_depths=(1,))


def test_training_can_start_from_a_generators_weights(tiny, tmp_path) -> None:
    """``init`` (VARiant fine-tunes mnist-scale): the weights are copied; another tokenizer or architecture is an error."""
    from arvision.train.generator import load_init

    tok, gen, other = tiny
    Pipeline(tok, gen).save_pretrained(tmp_path / "gen")
    fresh = NextScaleGenerator(gen.config.replace(subnet_depths=(1,), subnet_from=(2,)))
    load_init(fresh, str(tmp_path / "gen"), tok)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), gen.state_dict().values()))
    torch.manual_seed(5)
    tok2, _ = build("tiny-scale")
    with pytest.raises(ValueError, match="another tokenizer"):
        load_init(fresh, str(tmp_path / "gen"), tok2)
    with pytest.raises(ValueError, match="do not fit this model"):
        load_init(NextScaleGenerator(gen.config.replace(transformer=gen.config.transformer.replace(depth=3))), str(tmp_path / "gen"), tok)


@pytest.mark.parametrize("name,sampling", [
    ("mnist-scale", {"refiner": "mnist-scale-refiner", "draft_scales": 3}),
    ("mnist-scale-variant", {"depth_schedule": (6, 6, 6, 3, 3, 3)}),
])  # fmt: skip
def test_shipped_fast_decoding_draws_the_requested_digits(name: str, sampling: dict) -> None:
    import arvision
    from arvision.metrics.mnist_classifier import class_accuracy

    out = arvision.load(name).sample(list(range(10)), 10, seed=123, batch_size=100, **sampling)
    assert out.stats.forward_passes_per_image == 6
    assert class_accuracy(arvision.load("mnist-classifier"), out.images, out.labels) >= 0.9
