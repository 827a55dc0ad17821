"""FlexVAR: the independent multi-scale tokenizer, the flex-scale order with any schedule, the shipped model."""

from __future__ import annotations

import pytest
import torch

import arvision
from arvision.cli import main
from arvision.generators.flexvar import FlexScaleOrder, schedule_ranges
from arvision.pipeline import Pipeline
from arvision.presets import TOKENIZER_PRESETS
from arvision.samplers import decode
from arvision.train.tokenizer import train_tokenizer

from test_generators import build


def images(B: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tokenizer_quantizes_every_scale_on_its_own() -> None:
    tok, _ = build("tiny-flexvar")
    x = images()
    tokens = tok.encode(x)
    assert tokens.shape == (3, 1 + 4 + 16 + 64) and tok.layout.kind == "flex-scales"
    parts = tok.split_scales(tokens)
    for side, part in zip((1, 2, 4, 8), parts):  # a scale's tokens do not depend on the other scales (no residual)
        assert torch.equal(tok.encode(x, scales=(side,)), part)
    assert tok.decode(tokens).shape == (3, 1, 16, 16)
    assert torch.equal(tok.decode(tokens), tok.decode(parts[-1], scales=(8,)))  # the finest scale alone gives the image
    assert tok.decode(tok.encode(x, scales=(1, 4)), scales=(1, 4)).shape == (3, 1, 8, 8)  # side 4 -> 4 x downsample 2
    big = torch.randint(0, tok.codebook_size, (2, 1 + 16 * 16))
    assert tok.decode(big, scales=(1, 16)).shape == (2, 1, 32, 32)  # a latent of twice the side: twice the resolution
    x_in = tok.teacher_forcing_input(tokens)
    assert x_in.shape == (3, 4 + 16 + 64, tok.config.codebook_dim)
    torch.testing.assert_close(x_in[:, :4], tok.next_scale_input(parts[0], 1, 2))


def test_tokenizer_bad_inputs_are_clear_errors() -> None:
    tok, _ = build("tiny-flexvar")
    tokens = tok.encode(images())
    with pytest.raises(ValueError, match=r"take 69 tokens per image, got 85"):
        tok.decode(tokens, scales=(1, 2, 8))
    with pytest.raises(ValueError, match="decode\\(tokens, scales=...\\)"):
        tok.decode(tokens[:, :-1])
    with pytest.raises(ValueError, match="strictly increasing"):
        tok.decode(tokens, scales=(1, 2, 2, 8))
    with pytest.raises(ValueError, match="up to 16"):
        tok.decode(torch.zeros(1, 1 + 17 * 17, dtype=torch.long), scales=(1, 17))
    with pytest.raises(ValueError, match="up to 8"):  # encoding reads the image: sides up to the latent's
        tok.encode(images(), scales=(1, 16))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 32\)"):
        tok.decode(tokens + 100)


def test_tokenizer_training_loss_and_a_short_run(tmp_path) -> None:
    tok, _ = build("tiny-flexvar")
    tok.train()
    for step in (0, 1):  # tiny-flexscale: every 2nd step trains on images upsampled 2x
        loss, rec, out = tok.training_loss(images(4), step, torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss) and 0 < rec < loss and out.indices.shape[0] == 4
    assert out.recon.shape == (4, 1, 32, 32) and out.indices.shape[1] == 16 * 16
    assert all(p.grad is not None for n, p in tok.named_parameters() if "embedding" not in n)
    metrics = train_tokenizer(tmp_path, preset="tiny-flexscale", progress=False, eval_limit=32)
    assert metrics["psnr"] > 0 and arvision.load(tmp_path).layout == TOKENIZER_PRESETS["tiny-flexscale"].model_class(
        TOKENIZER_PRESETS["tiny-flexscale"].config).layout  # fmt: skip


@pytest.mark.parametrize("scales", [(1, 4, 8), (1, 2, 8, 16), (1, 3, 5, 6, 7, 9, 12, 16)])
def test_cached_decoding_equals_the_teacher_forced_forward(scales) -> None:
    """Any schedule, above the training sides too: each step's logits (KV cache) equal one full pass."""
    tok, gen = build("tiny-flexvar")
    L = sum(s * s for s in scales)
    tokens = torch.randint(0, tok.codebook_size, (3, L), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 5, 10])
    s = gen.config.sampling.replace(cfg=0.0, scales=scales)
    seen = []
    out = decode(gen, tok, labels, s, prior_BL=tokens, known_BL=torch.ones(3, L, dtype=torch.bool),
                 callback=lambda info: seen.append((info.step.predicts, info.logits)))  # fmt: skip
    assert torch.equal(out.tokens, tokens) and len(seen) == len(scales)
    with torch.no_grad():
        ref = gen(labels, tok.teacher_forcing_input(tokens, scales), scales)
    for index, logits in seen:
        torch.testing.assert_close(logits, ref[:, index], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scales,side,steps", [(None, 16, 4), ((1, 8), 16, 2), ((1, 2, 4), 8, 3), ((1, 2, 4, 8, 12, 16), 32, 6)])
def test_schedules_and_resolutions_are_chosen_at_sampling(scales, side: int, steps: int) -> None:
    tok, gen = build("tiny-flexvar")
    pipe = Pipeline(tok, gen)
    out = pipe.sample([1, 2], 2, seed=0, scales=scales)
    assert out.images.shape == (4, 1, side, side) and 0 <= out.images.min() and out.images.max() <= 1
    assert out.tokens.shape == (4, sum(s * s for s in scales or (1, 2, 4, 8))) and out.stats.forward_passes_per_image == steps
    assert torch.equal(out.tokens, pipe.sample([1, 2], 2, seed=0, scales=scales, decode=False).tokens)


def test_state_is_batch_first_and_previews_grow_to_the_output_size() -> None:
    """What a test-time search needs: every per-row tensor has the batch as dim 0; preview(state) is the
    latest finished scale decoded, at the output resolution."""
    tok, gen = build("tiny-flexvar")
    order = FlexScaleOrder(gen, tok)
    s = gen.config.sampling.replace(scales=(1, 2, 4, 8, 16))
    plan = order.plan(s)
    state = order.start(3, None, None, torch.device("cpu"))
    assert order.preview(state) is None
    seen = []

    def check(info) -> None:
        for name, t in info.state.extra.items():
            assert t.shape[0] == 3, name
        if info.step.index:
            seen.append(order_in_loop.preview(info.state).shape)

    from arvision.samplers.loop import DecodeRun  # the loop's step-by-step form (used by test-time search)

    run = DecodeRun(gen, tok, torch.tensor([0, 1, 2]), s, torch.Generator().manual_seed(0), callback=check)
    order_in_loop = run.order
    for step in run.plan:
        run.step(step)
    assert seen == [(3, 1, 32, 32)] * (len(plan) - 1)
    final = order_in_loop.images(run.state)
    assert final.shape == (3, 1, 32, 32)
    torch.testing.assert_close(order_in_loop.preview(run.state), final)
    torch.testing.assert_close(final, tok.decode(run.state.tokens_BL, scales=(1, 2, 4, 8, 16)))


def test_training_draws_a_schedule_per_batch() -> None:
    tok, gen = build("tiny-flexvar")
    rng = torch.Generator().manual_seed(0)
    drawn = {gen.draw_schedule(rng) for _ in range(200)}
    assert all(s[0] == 1 and s[-1] == 8 and list(s) == sorted(set(s)) for s in drawn) and len(drawn) == 4  # (1, [2], [4], 8)
    tokens = tok.encode(images(4))
    inputs, extra = gen.training_inputs(tokens, torch.tensor([0, 1, 2, 3]), tok, torch.Generator().manual_seed(3))
    scales = inputs["scales"]
    assert extra["targets"].shape == (4, sum(s * s for s in scales))
    parts = tok.split_scales(tokens)
    assert torch.equal(extra["targets"][:, -64:], parts[-1])
    loss, _ = gen.training_loss(gen(**inputs), tokens, extra)
    loss.backward()
    assert torch.isfinite(loss) and gen.pos_grid.grad is not None and gen.pos_grid.grad.abs().sum() > 0
    assert schedule_ranges((1, 2, 4)) == [(0, 1), (1, 5), (5, 21)]


def test_positions_are_scale_aware() -> None:
    """One grid for every side (no level embedding); above the training sides, the last training side's
    positions upsampled (pos_above="upsample") or the grid itself ("grid")."""
    import torch.nn.functional as F

    _, gen = build("tiny-flexvar")
    assert gen.scale_pos(3).shape == (1, 9, 32) and not hasattr(gen, "lvl_embed")
    up = F.interpolate(gen.pos_grid, size=(8, 8), mode="area")
    torch.testing.assert_close(gen.scale_pos(8), up.flatten(2).transpose(1, 2))
    torch.testing.assert_close(gen.scale_pos(12), F.interpolate(up, size=(12, 12), mode="bicubic").flatten(2).transpose(1, 2))
    grid = type(gen)(gen.config.replace(pos_above="grid"))
    grid.load_state_dict(gen.state_dict())
    torch.testing.assert_close(grid.scale_pos(16), gen.pos_grid.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="pos_above"):
        gen.config.replace(pos_above="nearest")


def test_save_load_round_trip(tmp_path) -> None:
    tok, gen = build("tiny-flexvar")
    pipe = Pipeline(tok, gen)
    pipe.save_pretrained(tmp_path / "m")
    again = arvision.load(tmp_path / "m")
    for scales in (None, (1, 4, 16)):
        a = pipe.sample([3], 2, seed=5, scales=scales)
        b = again.sample([3], 2, seed=5, scales=scales)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)


def test_bad_schedules_are_clear_errors() -> None:
    tok, gen = build("tiny-flexvar")
    pipe = Pipeline(tok, gen)
    cases = [
        ((2, 4, 8), "must start at side 1"),
        ((1, 4, 4, 8), "strictly increasing"),
        ((1, 8, 4), "strictly increasing"),
        ((1, 2, 32), "supports sides up to 16"),
        ((), "positive token-map sides"),
        ((1, 0), "positive token-map sides"),
        (("1", "2"), "positive token-map sides"),
    ]
    for scales, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe.sample([1], 1, scales=scales)
    with pytest.raises(ValueError, match="scales.*next-scale order"):  # another order does not read it
        Pipeline(*build("tiny-scale")).sample([1], 1, scales=(1, 2, 4, 8))
    H = tok.config.image_size
    mask = torch.zeros(1, 1, H, H, dtype=torch.bool)
    mask[..., H // 2 :, :] = True
    with pytest.raises(ValueError, match="edit with the default scales"):
        pipe.edit(torch.rand(1, 1, H, H), mask, classes=1, scales=(1, 2, 8))
    with pytest.raises(ValueError, match="flex-scale order needs.*token scales 1/2/4/8"):  # a residual pyramid is not FlexVAR's
        gen.check_layout(TOKENIZER_PRESETS["tiny-msvq"].model_class(TOKENIZER_PRESETS["tiny-msvq"].config).layout)


def test_cli_takes_a_schedule(tmp_path, capsys) -> None:
    tok, gen = build("tiny-flexvar")
    Pipeline(tok, gen).save_pretrained(tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "--classes", "1", "-n", "2", "--scales", "1,2,4,8,16", "-o",
                 str(tmp_path / "s.png")]) == 0  # fmt: skip
    assert "5.00 forward passes/image" in capsys.readouterr().out and (tmp_path / "s.png").is_file()
    with pytest.raises(SystemExit):
        main(["generate", str(tmp_path / "m"), "--scales", "1,two"])


def test_shipped_flexvar_draws_the_requested_digits() -> None:
    from arvision.metrics.mnist_classifier import class_accuracy

    pipe = arvision.load("mnist-flexvar")
    classifier = arvision.load("mnist-classifier")
    for scales, side in ((None, 28), ((1, 2, 4, 7), 28), ((1, 2, 3, 4, 5, 7, 10, 14), 56)):
        out = pipe.sample(list(range(10)), 3, seed=0, scales=scales)
        assert out.images.shape == (30, 1, side, side)
        assert class_accuracy(classifier, out.images, out.labels) >= 0.8, scales
    assert "arvision train generator --preset mnist-flexvar" in pipe.info["training"]["command"]


@pytest.mark.parametrize("search", ["best-of-n", "tts-var"])
def test_test_time_search_runs_on_any_schedule(search: str) -> None:
    """The search keeps/duplicates rows of the state between scales and scores previews: any schedule works."""
    tok, gen = build("tiny-flexvar")
    pipe = Pipeline(tok, gen)
    for scales, side in ((None, 16), ((1, 2, 8, 16), 32)):
        out = pipe.sample([1, 2], 2, seed=0, scales=scales, search=search, reward=lambda x, y: x.mean((1, 2, 3)), budget=3)
        assert out.images.shape == (4, 1, side, side) and out.scores.shape == (4,)
