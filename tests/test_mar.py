"""MAR (continuous tokens, diffusion head): the official fixture (LTH14/mar, ../shared/fixtures/mar)
reproduced through arvision's generator, order and loop; the MAR order's schedule and editing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arvision.checkpoints import read_checkpoint
from arvision.convert.mar import build_mar, infer_mar
from arvision.generators.mar import mar_mask_lengths
from arvision.samplers import SamplingConfig, decode

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mar"
needs_fixture = pytest.mark.skipif(not (FIXTURE / "fixture.pt").is_file(), reason="MAR fixture not present")


def close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """The fixture README's bar for an independent float32 implementation."""
    err = (got.float() - ref.float()).abs().max().item()
    assert err <= 1e-5 + 1e-4 * ref.abs().max().item(), f"max error {err:.3g} (max |ref| {ref.abs().max().item():.3g})"


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURE / "fixture.pt", weights_only=True)


def official(weights: str = "model_ema"):
    state = read_checkpoint(FIXTURE / "mar_state.pth", key=weights)
    return build_mar(state, infer_mar(state, heads=(2, 4)))


@pytest.fixture(scope="module")
def gen():
    return official()


def test_mask_schedule_is_mars() -> None:
    # 16 tokens in 4 steps: 2, 3, 5, 6 tokens filled (the fixture's per-step counts)
    left = [int(m) for m in mar_mask_lengths(16, 4)]
    assert left == [14, 11, 6, 0]
    assert [int(m) for m in mar_mask_lengths(16, 16)][-3:] == [2, 1, 0]  # every step fills at least one


def test_cosine_training_mask_covers_the_shares_sampling_meets() -> None:
    """mask_schedule="cosine": a share cos(pi/2 u) per image, so training also sees the images
    with most tokens known that sampling's last steps meet (MAR's truncated normal on [0.7, 1]
    never shows more than 30 % of them)."""
    import math

    from arvision.generators.mar import MarConfig, MarGenerator, mar_backbone

    def inputs(schedule: str) -> torch.Tensor:
        cfg = MarConfig(transformer=mar_backbone(1, 16, 2), decoder=mar_backbone(1, 16, 2), grid_size=7, token_dim=4,
                        num_classes=2, buffer_size=2, mask_schedule=schedule)  # fmt: skip
        torch.manual_seed(0)
        gen = MarGenerator(cfg)
        tokens, labels = torch.randn(4000, 49, 4), torch.zeros(4000, dtype=torch.long)
        kw, _ = gen.training_inputs(tokens, labels, None, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(gen(**{k: v[:8] if torch.is_tensor(v) else v for k, v in kw.items()}))
        return kw["masked_BL"].sum(1)  # masked tokens per image

    cosine, mar = inputs("cosine"), inputs("mar")
    assert cosine.min() >= 1 and cosine.max() == 49 and len(cosine.unique()) > 40  # per image, the whole range
    assert abs(cosine.float().mean().item() / 49 - 2 / math.pi) < 0.02  # E[cos(pi/2 u)] = 2/pi
    assert (cosine <= 49 * 0.3).float().mean() > 0.15  # P(share <= 0.3) = 1 - acos(0.3) * 2/pi = 0.19
    assert len(mar.unique()) == 1 and mar[0] >= math.ceil(49 * 0.7)  # one share per batch, >= 0.7
    with pytest.raises(ValueError, match="mask_schedule"):
        MarConfig(transformer=mar_backbone(1, 16, 2), decoder=mar_backbone(1, 16, 2), grid_size=7, token_dim=4,
                  num_classes=2, mask_schedule="uniform")  # fmt: skip


@needs_fixture
def test_architecture_is_inferred(gen) -> None:
    c = gen.config
    assert (c.transformer.depth, c.transformer.width, c.decoder.depth, c.decoder.width) == (2, 40, 2, 32)
    assert (c.grid_size, c.token_dim, c.buffer_size, c.num_classes) == (4, 16, 4, 10)
    assert (c.head.width, c.head.depth, c.head.cond_dim) == (32, 2, 32)


@needs_fixture
@pytest.mark.parametrize("mask_key, z_key, enc_key, null", [
    ("mask", "z", "encoder_out", False), ("mask", "z_uncond", None, True), ("mask_half", "z_half", "encoder_out_half", False),
    ("all", "z_all_masked", None, False),
])  # fmt: skip
def test_teacher_forced_conditioning_vectors(gen, fx, mask_key, z_key, enc_key, null) -> None:
    t = fx["mar_tf"]
    labels = torch.full_like(t["labels"], gen.null_class) if null else t["labels"]
    masked = torch.ones(2, 16, dtype=torch.bool) if mask_key == "all" else t[mask_key].bool()
    with torch.no_grad():
        cond = gen.class_emb.encode(labels)
        if not null:
            close(cond, t["class_embedding"])
        if enc_key:
            close(gen.encoder_features(t["x_tokens"], masked, cond)[0], t[enc_key])
        close(gen.features(t["x_tokens"], masked, cond), t[z_key])


@needs_fixture
def test_model_weights_entry(fx) -> None:
    t = fx["mar_tf"]
    with torch.no_grad():
        close(official("model").features(t["x_tokens"], t["mask"].bool(), official("model").class_emb.encode(t["labels"])),
              t["z_model_weights"])  # fmt: skip


@needs_fixture
def test_training_loss(gen, fx) -> None:
    t, tl = fx["mar_tf"], fx["train_loss"]
    with torch.no_grad():
        z = gen.features(t["x_tokens"], tl["mask"].bool(), gen.class_emb.encode(t["labels"]))
        close(z, tl["z"])
        rows = lambda x: x.flatten(0, 1).repeat(4, *[1] * (x.ndim - 2))  # noqa: E731  MAR's diffusion_batch_mul = 4
        terms = gen.head.training_losses(rows(z), rows(t["x_tokens"]), tl["t"], tl["noise"])
        m = rows(tl["mask"])
        close((terms["loss"] * m).sum() / m.sum(), tl["loss"])


def run_official(gen, run: dict, labels: torch.Tensor) -> tuple:
    kw = run["kwargs"]
    s = SamplingConfig(cfg=kw["cfg"], cfg_schedule="mar-linear" if kw["cfg_schedule"] == "linear" else "constant",
                       temperature=kw["temperature"], num_steps=kw["num_iter"], diffusion_steps=100)  # fmt: skip
    steps = []

    def spy(info) -> None:
        if info.step.index == 0:
            info.state.extra["orders"] = run["orders"]  # MAR draws its order with numpy: use the same one
        steps.append((info.cfg_weight, info.state.open_BL.clone()))

    out = decode(gen, None, labels, s, torch.Generator().manual_seed(int(run["torch_seed"])), callback=spy)
    return out, steps


@needs_fixture
@pytest.mark.parametrize("name", ["cfg_linear", "cfg_constant", "nocfg", "uncond"])
def test_seeded_sampling_reproduces_the_official_run(gen, fx, name) -> None:
    run = fx["sampling"][name]
    labels = run["kwargs"]["labels"]
    labels = torch.full((2,), gen.null_class) if labels is None else torch.tensor(labels)
    out, steps = run_official(gen, run, labels)
    for i, ((weight, open_before), ref) in enumerate(zip(steps, run["steps"])):
        filled = open_before & ~(out.state.open_BL if i == len(steps) - 1 else steps[i + 1][1])
        assert torch.equal(filled, ref["mask_to_pred"].bool()), f"step {i}: other positions filled"
        if run["kwargs"]["cfg"] != 1.0:
            assert weight == pytest.approx(float(ref["cfg_iter"]), abs=1e-6)
        else:
            assert weight is None
    close(out.tokens, run["tokens"])


def test_mar_order_fills_every_token_once_and_keeps_known_ones() -> None:
    from test_generators import build

    tok, gen = build("tiny-mar")
    prior = tok.encode(torch.rand(3, 1, 16, 16) * 2 - 1)
    known = torch.zeros(3, gen.num_tokens, dtype=torch.bool)
    known[0, :5], known[2] = True, True  # rows with 5, 0 and every token known
    out = decode(gen, tok, torch.tensor([1, 2, 3]), gen.config.sampling.replace(num_steps=4), torch.Generator().manual_seed(0),
                 prior_BL=prior, known_BL=known)  # fmt: skip
    assert not out.state.open_BL.any()
    assert torch.equal(out.tokens[known], prior[known]) and torch.isfinite(out.tokens).all()
    assert not torch.equal(out.tokens[1], prior[1])


@pytest.fixture(scope="module")
def tiny_kl(tmp_path_factory):
    """A tiny KL tokenizer on disk and its MNIST token cache (continuous tokens, kept as float32)."""
    from arvision.modeling import _sha256
    from arvision.presets import TOKENIZER_PRESETS
    from arvision.train.generator import encode_dataset

    root = tmp_path_factory.mktemp("kl")
    p = TOKENIZER_PRESETS["tiny-kl"]
    torch.manual_seed(0)
    path = p.model_class(p.config).save_pretrained(root / "tok")
    tokens, _, _ = encode_dataset(p.model_class.from_pretrained(path), "mnist", root / "tokens", progress=False,
                                  tokenizer_id=_sha256(path / "model.safetensors"))  # fmt: skip
    assert tokens.dtype == torch.float32 and tokens.shape[1:] == (64, 4)
    return path


@pytest.mark.parametrize("preset", ["tiny-mar", "tiny-raster-continuous"])
def test_continuous_training_resumes_exactly_and_samples(tmp_path, tiny_kl, preset) -> None:
    import shutil

    import arvision
    from arvision.train.generator import TOKEN_CACHE, train_generator

    def run(name: str, **kw):
        out = tmp_path / name
        if not out.exists():
            out.mkdir()
            shutil.copy(tiny_kl.parent / "tokens", out / TOKEN_CACHE)
        return train_generator(out, preset=preset, tokenizer=str(tiny_kl), steps=6, batch_size=16, ema=0.9, progress=False, **kw)

    result = run("straight")
    assert result["final_loss"] == result["final_loss"]  # finite, not NaN
    assert run("killed", stop_after=3) == {"stopped_at": 3}
    train_generator(tmp_path / "killed", resume=True, progress=False)
    a, b = arvision.load(tmp_path / "straight"), arvision.load(tmp_path / "killed")
    for k, v in a.generator.state_dict().items():
        assert torch.equal(v, b.generator.state_dict()[k]), k
    out = a.sample([1, 2], 2, seed=0)
    assert out.images.shape == (4, 1, 16, 16) and out.tokens.shape == (4, 64, 4) and out.tokens.dtype == torch.float32


def test_continuous_and_discrete_parts_do_not_mix() -> None:
    from test_generators import build

    from arvision.pipeline import Pipeline

    vq, raster = build("tiny-raster")
    kl, mar = build("tiny-mar")
    with pytest.raises(ValueError, match="needs a continuous tokenizer"):
        Pipeline(vq, mar)
    with pytest.raises(ValueError, match="needs a discrete tokenizer"):
        Pipeline(kl, raster)
    pipe = Pipeline(kl, mar)
    with pytest.raises(ValueError, match="diffusion_steps must be a positive"):
        pipe.sample([1], diffusion_steps=0)
    with pytest.raises(ValueError, match="top_k=5: this model samples continuous tokens"):
        pipe.sample([1], top_k=5)
    with pytest.raises(ValueError, match="diffusion_steps=3: this model samples discrete tokens"):
        Pipeline(vq, raster).sample([1], diffusion_steps=3)
    _, cont = build("tiny-raster-continuous")
    with pytest.raises(ValueError, match="use decoding='plain'"):
        Pipeline(kl, cont).sample([1], decoding="sjd")
    with pytest.raises(ValueError, match="NaN/inf"):
        mar(torch.full((1, mar.num_tokens, 4), float("nan")), torch.tensor([1]), torch.ones(1, mar.num_tokens, dtype=torch.bool))


@needs_fixture
def test_convert_cli_round_trip_reproduces_official_images(tmp_path, fx, capsys) -> None:
    """`arvision convert mar` -> a model directory whose pipeline gives the official run's latents and images."""
    import arvision
    from arvision.cli import main

    out = tmp_path / "mar"
    assert main(["convert", "mar", "--vae", str(FIXTURE / "vae_state.pth"), "--mar", str(FIXTURE / "mar_state.pth"),
                 "--heads", "2,4", "--out", str(out)]) == 0  # fmt: skip
    assert "4x4 token grid of continuous 16-d tokens" in capsys.readouterr().out
    pipe = arvision.load(out)
    assert pipe.tokenizer.config.image_size == 64 and pipe.defaults.cfg_schedule == "mar-linear"
    run = fx["sampling"]["cfg_linear"]
    got, _ = run_official(pipe.generator, run, torch.tensor([3, 7]))
    close(got.tokens, run["tokens"])
    with torch.no_grad():
        close(pipe.tokenizer.decode(got.tokens), run["images"])  # latent = tokens / 0.2325, decoded (no clamp)


@needs_fixture
def test_bad_mar_files_are_clear_errors(tmp_path) -> None:
    from arvision.convert import from_mar
    from arvision.errors import ModelFileError

    vae, mar = FIXTURE / "vae_state.pth", FIXTURE / "mar_state.pth"
    with pytest.raises(ValueError, match="pass heads="):
        from_mar(vae, mar)  # widths 40/32 are not an official size
    with pytest.raises(ModelFileError, match="MAR transformer checkpoint"):
        from_mar(mar, mar, heads=(2, 4))
    with pytest.raises(ModelFileError, match="does not look like a MAR checkpoint|no entry"):
        from_mar(vae, vae, heads=(2, 4))
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(mar.read_bytes()[:5000])
    with pytest.raises(ModelFileError):
        from_mar(vae, truncated, heads=(2, 4))
    with pytest.raises(ModelFileError):
        from_mar(vae, tmp_path / "missing.pth", heads=(2, 4))
    # a MAR whose tokens are wider than this VAE's latents: trained with another VAE
    state = torch.load(mar, weights_only=True)
    ema = state["model_ema"]
    ema["z_proj.weight"] = torch.cat([ema["z_proj.weight"]] * 2, 1)
    ema["diffloss.net.input_proj.weight"] = torch.cat([ema["diffloss.net.input_proj.weight"]] * 2, 1)
    ema["diffloss.net.final_layer.linear.weight"] = torch.cat([ema["diffloss.net.final_layer.linear.weight"]] * 2, 0)
    ema["diffloss.net.final_layer.linear.bias"] = torch.cat([ema["diffloss.net.final_layer.linear.bias"]] * 2, 0)
    torch.save({"model_ema": ema}, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="trained with another VAE"):
        from_mar(vae, tmp_path / "wide.pth", heads=(2, 4))


@pytest.mark.parametrize("size, depth, width, heads, head_depth, head_width, millions", [
    ("MAR-B", 12, 768, 12, 6, 1024, 208), ("MAR-L", 16, 1024, 16, 8, 1280, 479), ("MAR-H", 20, 1280, 16, 12, 1536, 943),
])  # fmt: skip
def test_official_sizes_on_the_meta_device(size, depth, width, heads, head_depth, head_width, millions) -> None:
    """The released MAR sizes (paper: 208 M, 479 M, 943 M parameters) build from their tensors' shapes
    alone, without allocating memory: official names -> inferred config -> the same model."""
    from arvision.convert.mar import MAR_HEADS
    from arvision.generators.diffusion import DiffusionHeadConfig
    from arvision.generators.mar import MarConfig, MarGenerator, mar_backbone

    cfg = MarConfig(transformer=mar_backbone(depth, width, heads), decoder=mar_backbone(depth, width, heads), num_classes=1000,
                    grid_size=16, token_dim=16, buffer_size=64,
                    head=DiffusionHeadConfig(token_dim=16, cond_dim=width, width=head_width, depth=head_depth))  # fmt: skip
    with torch.device("meta"):
        model = MarGenerator(cfg)
    assert round(model.num_parameters() / 1e6) == pytest.approx(millions, abs=2), size
    official = {}  # arvision names -> the official ones (the inverse of convert.mar.mar_state)
    for k, v in model.state_dict().items():
        for ours, theirs in (("encoder.blocks.", "encoder_blocks."), ("decoder.blocks.", "decoder_blocks."),
                             ("encoder.norm.", "encoder_norm."), ("decoder.norm.", "decoder_norm."), ("head.", "diffloss.")):  # fmt: skip
            if k.startswith(ours):
                k = theirs + k[len(ours):]
        official[k] = v
    official["fake_latent"], official["class_emb.weight"] = official["class_emb.weight"][-1:], official["class_emb.weight"][:-1]
    inferred = infer_mar(official)
    assert MAR_HEADS[width] == heads
    assert inferred.to_dict() == cfg.replace(sampling=inferred.sampling).to_dict()


def test_context_benchmark_runs_on_the_shipped_model() -> None:
    """benchmarks/mar_context.py (the loss vs the masked share, docs/calibration.md) on a few digits."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mar_context.py"
    res = subprocess.run([sys.executable, str(script), "--n", "16", "--shares", "1,0.5"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    row = [line for line in res.stdout.splitlines() if line.startswith("| `mnist-mar`")]
    assert len(row) == 1 and all(0 < float(v) < 2 for v in row[0].strip("| ").split(" | ")[1:])
