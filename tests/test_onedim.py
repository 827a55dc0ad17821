"""The 1-D tokenizer (TiTok/FlexTok-style, ``tokenizers/onedim.py``) and sampling fewer tokens."""

from __future__ import annotations

import pytest
import torch

from arvision.pipeline import Pipeline
from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS
from arvision.tokenizers import TokenLayout
from arvision.tokenizers.onedim import OneDimConfig, OneDimTokenizer, patchify, unpatchify

from test_generators import build


FSQ = dict(quantizer="fsq", levels=(4, 4, 2), codebook_size=32, codebook_dim=3)
VARIANTS = {"linear": {}, "conv": dict(stem="conv"), "fsq": FSQ}  # pixel stems and quantizers


def tiny(variant: str = "linear") -> OneDimTokenizer:
    torch.manual_seed(0)
    p = TOKENIZER_PRESETS["tiny-1d"]
    return p.model_class(p.config.replace(**VARIANTS[variant]))


def images(B: int = 4, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_patchify_round_trip() -> None:
    x = torch.randn(2, 3, 12, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 9, 48)
    assert torch.equal(p[0, 1], x[0, :, 0:4, 4:8].reshape(-1))  # patches in raster order, channels first
    assert torch.equal(unpatchify(p, 4, 3), x)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes_and_every_parameter_gets_a_gradient(variant: str) -> None:
    tok = tiny(variant).train()
    x = images()
    loss, rec, out = tok.training_loss(x, 0, torch.Generator().manual_seed(0))
    assert out.recon.shape == x.shape and out.indices.shape == (4, 8)
    assert out.candidates.shape == ((0, 3) if variant == "fsq" else (4 * 8, 4))  # FSQ has no codes to restart
    assert torch.isfinite(loss) and rec <= loss
    loss.backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient: {missing}"
    assert tok.layout == TokenLayout("sequence", 32, length=8, code_dim=3 if variant == "fsq" else 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_nested_dropout_draws_prefixes_and_keeps_the_rest_full(variant: str) -> None:
    tok = tiny(variant)
    keep = tok.draw_keep(4000, torch.Generator().manual_seed(0))
    assert keep.min() == 1 and keep.max() == 8
    assert abs((keep == 8).float().mean().item() - 0.5) < 0.05  # nested_dropout = 0.5 of the images keep all K
    assert (keep < 8).float().mean() > 0.45 and (keep == 1).any() and (keep == 7).any()
    off = OneDimTokenizer(TOKENIZER_PRESETS["tiny-1d"].config.replace(nested_dropout=0.0, **VARIANTS[variant]))
    assert (off.draw_keep(100) == 8).all()
    # dropping tokens in training is the same as decoding the prefix
    tok.eval()
    x = images(2)
    with torch.no_grad():
        recon = tok(x, keep_B=torch.tensor([3, 3])).recon
    torch.testing.assert_close(recon.clamp(-1, 1), tok.decode(tok.encode(x)[:, :3]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefixes_decode_and_bad_tokens_are_clear_errors(variant: str) -> None:
    tok = tiny(variant).eval()
    ids = tok.encode(images())
    assert ids.shape == (4, 8) and ids.dtype == torch.long
    for k in (1, 2, 5, 8):
        y = tok.decode(ids[:, :k])
        assert y.shape == (4, 1, 16, 16) and y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(tok.decode(ids[:, :1]), tok.decode(ids))
    with pytest.raises(ValueError, match="decodes 1 to 8 tokens per image .*got 9"):
        tok.decode(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="decodes 1 to 8 tokens per image .*got 0"):
        tok.decode(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(TypeError, match="integers"):
        tok.decode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 32\)"):
        tok.decode(torch.full((2, 4), 32))
    with pytest.raises(ValueError, match="wrong image size"):
        tok.encode(images(side=28))
    for bad, match in ((dict(patch_size=5), "multiple of patch_size"), (dict(num_latents=0), "num_latents"),
                       (dict(nested_dropout=1.5), "nested_dropout"), (dict(width=30, num_heads=4), "width"),
                       (dict(stem="cnn"), "stem must be 'linear' or 'conv'"),
                       (dict(quantizer="lfq"), "quantizer must be 'vq' or 'fsq'"),
                       (dict(FSQ, levels=(4, 4, 4)), r"fsq levels \(4, 4, 4\) give 64 codes but codebook_size is 32"),
                       (dict(FSQ, levels=(4, 8)), r"fsq levels \(4, 8\) quantize 2 channels but codebook_dim is 3"),
                       (dict(FSQ, levels=()), "fsq needs levels"),
                       (dict(stem="conv", image_size=18, patch_size=3), "powers of 2: patch_size"),
                       (dict(stem="conv", conv_ch=6, conv_groups=4), r"conv_groups=4 must divide every conv width \[6, 12, 24\]")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            OneDimConfig(**{**TOKENIZER_PRESETS["tiny-1d"].config.to_dict(), **bad})


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip(tmp_path, variant: str) -> None:
    tok = tiny(variant).eval()
    tok.save_pretrained(tmp_path / "t", info={"description": "test"})
    again = OneDimTokenizer.from_pretrained(tmp_path / "t").eval()
    assert again.config == tok.config
    x = images()
    assert torch.equal(again.encode(x), tok.encode(x))
    torch.testing.assert_close(again.decode(tok.encode(x)[:, :3]), tok.decode(tok.encode(x)[:, :3]), atol=0, rtol=0)


def test_sampling_fewer_tokens_takes_fewer_passes_and_decodes_the_prefix() -> None:
    tok, gen = build("tiny-1d-raster")
    pipe = Pipeline(tok, gen)
    full = pipe.sample([1, 2], 1, seed=0)
    assert full.images.shape == (2, 1, 16, 16) and full.stats.forward_passes_per_image == 8
    out = pipe.sample([1, 2], 1, seed=0, num_tokens=3)
    assert out.tokens.shape == (2, 3) and out.stats.forward_passes_per_image == 3
    assert torch.equal(out.tokens, full.tokens[:, :3])
    assert out.images.shape == (2, 1, 16, 16) and 0 <= out.images.min() and out.images.max() <= 1
    torch.testing.assert_close(out.images, tok.decode(out.tokens).add(1).div(2).clamp(0, 1))


def test_a_sequence_tokenizer_and_a_grid_generator_do_not_mix() -> None:
    seq_tok, seq_gen = build("tiny-1d-raster")
    grid_tok, grid_gen = build("tiny-raster")
    with pytest.raises(ValueError, match="next-token order needs a VQ grid tokenizer.*a sequence of 8 tokens"):
        Pipeline(seq_tok, grid_gen)
    with pytest.raises(ValueError, match="next-token-1d order needs a tokenizer of 1-D token sequences.*8x8 token grid"):
        Pipeline(grid_tok, seq_gen)
    with pytest.raises(ValueError, match="next-token-1d order needs"):
        GENERATOR_PRESETS["tiny-1d-raster"].build_config(grid_tok, 10)


# -- the shipped models ------------------------------------------------------------------------


def test_shipped_mnist_1d_reconstructs_better_with_every_longer_prefix() -> None:
    """Nested dropout: PSNR grows with the number of tokens kept (300 test digits)."""
    import arvision
    from arvision.data import MnistDataset
    from arvision.evaluate import evaluate_prefixes

    tok = arvision.load("mnist-1d")
    assert tok.layout == TokenLayout("sequence", 256, length=48, code_dim=4)
    table = evaluate_prefixes(tok, MnistDataset("test"), [1, 2, 4, 8, 16, 32, 48], limit=300)
    psnr = [m["psnr"] for m in table.values()]
    assert all(a < b for a, b in zip(psnr, psnr[1:])), psnr
    assert psnr[-1] > psnr[0] + 5, psnr
    recorded = tok.info["psnr_by_tokens"]
    assert set(recorded) >= {"1", "2", "4", "8", "16", "32", "48"} and recorded["48"]["psnr"] >= 24  # issue 15's figure


def test_shipped_mnist_1d_raster_draws_fewer_tokens_in_fewer_passes() -> None:
    import arvision

    pipe = arvision.load("mnist-1d-raster")
    assert pipe.generator.order == "next-token-1d" and pipe.generator.num_steps == 48
    full = pipe.sample([3, 7], 1, seed=0)
    short = pipe.sample([3, 7], 1, seed=0, num_tokens=8)
    assert short.stats.forward_passes_per_image == 8 and short.tokens.shape == (2, 8)
    assert torch.equal(short.tokens, full.tokens[:, :8])
    assert short.images.shape == full.images.shape == (2, 1, 28, 28)
    assert 0 <= short.images.min() and short.images.max() <= 1 and not torch.allclose(short.images, full.images)


def test_cli_num_tokens(tmp_path, capsys) -> None:
    from test_cli import run

    out = tmp_path / "coarse.png"
    code, stdout, err = run(capsys, "generate", "mnist-1d-raster", "--classes", "3,7", "-n", "1", "--num-tokens", "4",
                            "--seed", "0", "-o", str(out))  # fmt: skip
    assert code == 0, err
    assert "4.00 forward passes/image" in stdout and out.is_file()
    code, _, err = run(capsys, "generate", "mnist-1d-raster", "--num-tokens", "49", "-o", str(tmp_path / "x.png"))
    assert code == 2 and "at most 48 tokens" in err and "Traceback" not in err
    code, _, err = run(capsys, "generate", "mnist-raster", "--num-tokens", "4", "-o", str(tmp_path / "y.png"))
    assert code == 2 and "next-token order does not use num_tokens" in err
    code, stdout, _ = run(capsys, "info", "mnist-1d-raster")
    assert code == 0 and "fewer with --num-tokens" in stdout
