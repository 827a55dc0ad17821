"""The conformance suite: every registered order passes the same tests (issue 12).

A new order gets all of them by registering (``@register_order``) and shipping a ``tiny-*``
generator preset: cached (step by step) decoding equals the full forward pass, settings it
cannot use are rejected, seeded sampling is deterministic, ``cfg_interval`` means the same for
every order, and editing keeps the known tokens.
"""

from __future__ import annotations

import pytest
import torch

from arvision.pipeline import Pipeline
from arvision.presets import GENERATOR_PRESETS
from arvision.samplers import ORDERS, SamplingConfig, decode
from arvision.samplers.config import ORDER_SETTINGS

from test_generators import build

NAMES = sorted(n for n in GENERATOR_PRESETS if n.startswith("tiny-"))  # every order, and every head on an order


def test_every_registered_order_has_a_tiny_preset() -> None:
    covered = {GENERATOR_PRESETS[n].model_class.order_class.name for n in NAMES}
    assert set(ORDERS) <= covered, f"orders without a tiny-* preset: {sorted(set(ORDERS) - covered)}"
    assert len(ORDERS) >= 5


def unguided(gen) -> SamplingConfig:
    return gen.config.sampling.replace(cfg=0.0 if gen.config.sampling.cfg_schedule == "linear" else 1.0)


def encoded(tok, B: int = 3, seed: int = 0) -> torch.Tensor:
    return tok.encode(torch.rand(B, tok.config.in_channels, tok.config.image_size, tok.config.image_size,
                                 generator=torch.Generator().manual_seed(seed)) * 2 - 1)  # fmt: skip


@pytest.mark.parametrize("preset", NAMES)
def test_stepwise_decoding_equals_the_full_forward(preset: str) -> None:
    """With every token known, each step's logits (KV cache, per-step inputs) equal one full forward pass."""
    tok, gen = build(preset)
    tokens, labels = encoded(tok), torch.tensor([1, 5, 10])  # 10 = the null class
    seen = []
    out = decode(gen, tok, labels, unguided(gen), prior_BL=tokens, known_BL=torch.ones(tokens.shape[:2], dtype=torch.bool),
                 callback=lambda info: seen.append((info.step, info.logits)))  # fmt: skip
    assert torch.equal(out.tokens, tokens)
    with torch.no_grad():
        ref = gen.reference_logits(tokens, labels, tok)
    covered = torch.zeros(tokens.shape[1], dtype=torch.bool)
    for step, logits in seen:  # an order with more than one kind of output (coarse-to-fine) gives a dict
        index = step.predicts
        torch.testing.assert_close(logits, (ref[step.output] if isinstance(ref, dict) else ref)[:, index], atol=1e-4, rtol=1e-4)
        if step.output == "tokens":
            covered[index] = True
    assert covered.all()


@pytest.mark.parametrize("preset", NAMES)
def test_settings_the_order_cannot_use_are_rejected(preset: str) -> None:
    tok, gen = build(preset)
    pipe = Pipeline(tok, gen)
    for name in ORDER_SETTINGS:
        value = {"num_steps": 2, "choice_temperature": 1.0, "decoding": "sjd", "window": 3, "jacobi_init": "spatial", "lantern_k": 2,
                 "lantern_delta": 0.2, "draft_scales": 2, "depth_schedule": (1, 1, 1, 1), "scales": (1, 2),
                 "num_tokens": 2, "constrained": True}[name]  # fmt: skip
        if name == "constrained" and name in gen.order_class.own_settings and tok.grammar() is None:
            with pytest.raises(ValueError, match="constrained=True needs a tokenizer"):
                pipe.sample([1], 1, constrained=True)
        elif name in gen.order_class.own_settings:
            pipe.sampling_config(**{name: value})  # accepted
        else:
            with pytest.raises(ValueError, match=f"{name}.*{gen.order} order"):
                pipe.sample([1], 1, **{name: value})
    if "num_steps" in gen.order_class.own_settings:
        with pytest.raises(ValueError, match="more than the"):
            pipe.sample([1], 1, num_steps=gen.num_tokens + 1)
    if "num_tokens" in gen.order_class.own_settings:
        with pytest.raises(ValueError, match="at most"):
            pipe.sample([1], 1, num_tokens=gen.num_tokens + 1)


@pytest.mark.parametrize("preset", NAMES)
def test_seeded_sampling_is_deterministic(preset: str) -> None:
    tok, gen = build(preset)
    pipe = Pipeline(tok, gen)
    a = pipe.sample([1, 2], 2, seed=3, decode=False)
    assert torch.equal(a.tokens, pipe.sample([1, 2], 2, seed=3, decode=False).tokens)
    assert not torch.equal(a.tokens, pipe.sample([1, 2], 2, seed=4, decode=False).tokens)
    assert a.stats.forward_passes_per_image == gen.num_steps


@pytest.mark.parametrize("preset", NAMES)
def test_an_image_is_the_same_whatever_the_batch_size(preset: str) -> None:
    """Per-image random streams (issue 17): image i of a seeded run is the same in any batch size,
    alone (with its own seed), and with editing; a torch.Generator keeps the one-stream behaviour."""
    from arvision.samplers import image_seeds

    tok, gen = build(preset)
    pipe = Pipeline(tok, gen)
    s = gen.config.sampling.replace(cfg=2.0 if gen.config.sampling.cfg_schedule == "linear" else 3.0)  # guided: both halves
    classes = [1, 2, 3, 4, 5]
    whole = pipe.sample(classes, 1, seed=11, batch_size=5, decode=False, cfg=s.cfg).tokens
    for bs in (1, 2, 3):
        assert torch.equal(pipe.sample(classes, 1, seed=11, batch_size=bs, decode=False, cfg=s.cfg).tokens, whole), bs
    alone = pipe.sample([4], 1, seed=[image_seeds(11, 5)[3]], decode=False, cfg=s.cfg).tokens
    assert torch.equal(alone, whole[3:4])
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    one = pipe.sample(classes, 1, seed=g(), batch_size=5, decode=False).tokens
    assert torch.equal(one, pipe.sample(classes, 1, seed=g(), batch_size=5, decode=False).tokens)


def test_bad_seeds_are_clear_errors() -> None:
    tok, gen = build("tiny-raster")
    pipe = Pipeline(tok, gen)
    with pytest.raises(ValueError, match="2 values for 3 images"):
        pipe.sample([1, 2, 3], 1, seed=[1, 2])
    with pytest.raises(TypeError, match="per-image seeds must be integers"):
        pipe.sample([1, 2], 1, seed=[1, "x"])
    with pytest.raises(TypeError, match="seed must be"):
        pipe.sample([1], 1, seed="zero")


@pytest.mark.parametrize("preset", NAMES)
@pytest.mark.parametrize("interval", [-1, 0, 1])
def test_cfg_interval_guides_the_same_steps_in_every_order(preset: str, interval: int) -> None:
    """cfg_interval = k guides decoding steps 0..k+1 (LlamaGen's count) and no later one; -1 guides all."""
    tok, gen = build(preset)
    s = gen.config.sampling.replace(cfg=3.0, cfg_schedule="constant", cfg_interval=interval)
    seen = []
    decode(gen, tok, torch.tensor([2, 7]), s, torch.Generator().manual_seed(0),
           callback=lambda info: seen.append((info.step.group, info.cfg_weight)))  # fmt: skip
    assert len({g for g, _ in seen}) > 2, "the tiny preset needs more than two decoding steps"
    for group, weight in seen:
        assert (weight is not None) == (interval < 0 or group <= interval + 1), (group, weight)


@pytest.mark.parametrize("preset", NAMES)
def test_guidance_changes_the_first_step(preset: str) -> None:
    """The first step is always guided: its logits differ from the unguided ones (the null rows matter)."""
    tok, gen = build(preset)
    first, tokens = {}, {}
    for cfg, interval in ((3.0, -1), (1.0, -1)):
        s = gen.config.sampling.replace(cfg=cfg, cfg_schedule="constant", cfg_interval=interval)
        tokens[cfg] = decode(gen, tok, torch.tensor([2, 7]), s, torch.Generator().manual_seed(0),
                             callback=lambda i, k=cfg: first.setdefault(k, i.logits)).tokens  # fmt: skip
    if isinstance(first[1.0], torch.Tensor) and isinstance(first[3.0], torch.Tensor):
        assert not torch.allclose(first[3.0], first[1.0])  # guidance changes the logits
    else:  # a head that guides inside its own sampling (diffusion, channel-AR): the first step's samples differ
        assert first[3.0].weight == 3.0 and not torch.allclose(tokens[3.0].float(), tokens[1.0].float())


@pytest.mark.parametrize("preset", NAMES)
def test_editing_keeps_the_known_tokens(preset: str) -> None:
    tok, gen = build(preset)
    prior = encoded(tok, 4, seed=1)
    known = torch.rand(prior.shape[:2], generator=torch.Generator().manual_seed(2)) < 0.5  # (B, L): whole tokens
    s = gen.config.sampling

    def never_changed(info) -> None:
        assert torch.equal(info.state.tokens_BL[known], prior[known]), f"step {info.step.index} changed a known token"

    out = decode(gen, tok, torch.tensor([0, 3, 5, 9]), s, torch.Generator().manual_seed(0), prior_BL=prior, known_BL=known,
                 callback=never_changed)  # fmt: skip
    assert torch.equal(out.tokens[known], prior[known])
    if out.tokens.is_floating_point():
        assert torch.isfinite(out.tokens).all()
    else:
        assert out.tokens.min() >= 0 and out.tokens.max() < gen.config.vocab_size  # no mask ids left
    # the pixel-level entry point: bottom half masked -> the top tokens are the input's own
    pipe = Pipeline(tok, gen)
    H = tok.config.image_size
    images = tok.decode(prior).add(1).div(2).clamp(0, 1)
    mask = torch.zeros(1, 1, H, H, dtype=torch.bool)
    mask[..., H // 2 :, :] = True
    if tok.layout.kind == "sequence":  # 1-D tokens have no place in the image: a pixel mask cannot pick them
        with pytest.raises(ValueError, match="no spatial layout"):
            pipe.sample_edit(images, mask, classes=3, seed=0)
        return
    edit = pipe.sample_edit(images, mask, classes=3, seed=0)
    assert edit.images.shape == images.shape and 0 <= edit.images.min() and edit.images.max() <= 1
    kept = edit.known
    assert kept.any() and not kept.all()
    assert torch.equal(edit.tokens[kept], tok.encode(images * 2 - 1)[kept])
    # an all-False mask gives the tokenizer's reconstruction
    recon = pipe.edit(images, torch.zeros(4, 1, H, H, dtype=torch.bool), classes=[1, 2, 3, 4])
    torch.testing.assert_close(recon, tok.reconstruct(images * 2 - 1).add(1).div(2).clamp(0, 1))


@pytest.mark.parametrize("preset", NAMES)
def test_completion_keeps_a_prefix_and_is_repeatable_for_a_seed(preset: str) -> None:
    """Pipeline.sample_completion: the token-level edit (a first scale, the first rows, a 1-D prefix)
    keeps the known tokens, is repeatable for a seed (a (L,) mask means the same as (B, L)), and
    with every token known returns the tokens and their decoding."""
    tok, gen = build(preset)
    pipe = Pipeline(tok, gen)
    prior = encoded(tok, 2, seed=3)
    L = prior.shape[1]
    known = torch.zeros(L, dtype=torch.bool)
    known[: max(1, L // 4)] = True
    out = pipe.sample_completion(prior, known, classes=[2, 7], seed=0)
    assert out.images.shape == (2, tok.config.in_channels, tok.config.image_size, tok.config.image_size)
    assert torch.equal(out.tokens[:, known], prior[:, known]) and out.known.shape == (2, L)
    again = pipe.sample_completion(prior, known[None].expand(2, L), classes=[2, 7], seed=0, decode=False)
    assert torch.equal(again.tokens, out.tokens)
    whole = pipe.sample_completion(prior, torch.ones(L, dtype=torch.bool), classes=3)
    assert torch.equal(whole.tokens, prior)
    torch.testing.assert_close(whole.images, tok.decode(prior).add(1).div(2).clamp(0, 1))


def test_bad_completion_inputs_are_clear_errors() -> None:
    tok, gen = build("tiny-raster")
    pipe = Pipeline(tok, gen)
    prior = encoded(tok, 2)
    L = prior.shape[1]
    known = torch.zeros(L, dtype=torch.bool)
    cases = [
        (dict(tokens=prior, known=known.float(), classes=1), TypeError, "known must be a bool tensor"),
        (dict(tokens=prior, known=known[:-1], classes=1), ValueError, "known must have shape"),
        (dict(tokens=prior, known=torch.zeros(3, L, dtype=torch.bool), classes=1), ValueError, "known must have shape"),
        (dict(tokens=prior[:, :-1], known=known, classes=1), ValueError, f"uses {L} tokens per image"),
        (dict(tokens=prior + 10_000, known=known, classes=1), ValueError, "token ids must be in"),
        (dict(tokens=prior.float(), known=known, classes=1), TypeError, "must be integers"),
        (dict(tokens=prior, known=known, classes=10), ValueError, "unknown class id 10"),
        (dict(tokens=prior, known=known, classes=None), ValueError, "pass classes"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            pipe.sample_completion(kwargs.pop("tokens"), kwargs.pop("known"), **kwargs)


def test_bad_edit_inputs_are_clear_errors() -> None:
    import numpy as np

    tok, gen = build("tiny-raster")
    pipe = Pipeline(tok, gen)
    H = tok.config.image_size
    x, mask = torch.rand(2, 1, H, H), torch.zeros(1, 1, H, H, dtype=torch.bool)
    mask[..., : H // 2, :] = True
    cases = [
        (dict(images=x, mask=mask.float(), classes=1), TypeError, "bool tensor"),
        (dict(images=x, mask=mask[..., :-1, :], classes=1), ValueError, "mask must have shape"),
        (dict(images=x, mask=torch.ones(3, 1, H, H, dtype=torch.bool), classes=1), ValueError, "mask must have shape"),
        (dict(images=torch.rand(2, 3, H, H), mask=mask, classes=1), ValueError, "1-channel"),
        (dict(images=torch.rand(2, 1, H + 2, H + 2), mask=mask, classes=1), ValueError, "wrong image size"),
        (dict(images=x * 255, mask=mask, classes=1), ValueError, r"in \[0, 1\]"),
        (dict(images=x.clone().fill_(float("nan")), mask=mask, classes=1), ValueError, "NaN"),
        (dict(images=x.byte(), mask=mask, classes=1), TypeError, "float"),
        (dict(images=x, mask=mask, classes=10), ValueError, "unknown class id 10"),
        (dict(images=x, mask=mask, classes=[1, 2, 3]), ValueError, "3 ids for 2 images"),
        (dict(images=x, mask=mask, classes="12"), TypeError, "sequence of class ids"),
        (dict(images=x, mask=mask, classes=True), TypeError, "sequence of class ids"),
        (dict(images=x, mask=mask, classes=None), ValueError, "pass classes"),
        (dict(images=x, mask=mask, classes=1, num_steps=3), ValueError, "next-token order always takes"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            pipe.edit(**kwargs)
    # ids as numpy ints, tensors and one id for all work
    for classes in (np.int64(3), torch.tensor(3), torch.tensor([3, 4]), [np.int64(3)]):
        assert pipe.edit(x, mask, classes=classes).shape == x.shape
