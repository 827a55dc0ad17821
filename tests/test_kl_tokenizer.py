"""The KL autoencoder tokenizer (continuous tokens): contract on the tiny preset, training and
resume, and the converted official MAR VAE against the reference outputs (../shared/fixtures/mar)."""

from __future__ import annotations

import pytest
import torch

import arvision
from arvision.convert.mar_vae import MAR_LATENT_SCALE, infer_mar_vae, load_mar_vae, mar_vae_state
from arvision.errors import ModelFileError
from arvision.presets import TOKENIZER_PRESETS
from arvision.tokenizers import KLConfig, KLTokenizer, VQConfig
from arvision.train.tokenizer import train_tokenizer

from conftest import shared_path


def tiny() -> KLTokenizer:
    p = TOKENIZER_PRESETS["tiny-kl"]
    return p.model_class(p.config)


def images(tok: KLTokenizer, b: int = 3) -> torch.Tensor:
    c = tok.config
    return torch.rand(b, c.in_channels, c.image_size, c.image_size) * 2 - 1


# -- contract -----------------------------------------------------------------------------------
def test_shapes_layout_and_token_order() -> None:
    tok = tiny().eval()
    c, x = tok.config, images(tok)
    n = c.latent_size
    assert tok.layout.token_kind == "vectors" and tok.layout.token_shape == (n * n, c.embed_dim)
    assert tok.layout.vocab_size == 0 and tok.num_tokens == n * n
    tokens = tok.encode(x)
    assert tokens.shape == (3, n * n, c.embed_dim) and tokens.dtype == torch.float32
    mean, logvar = tok.encode_posterior(x)
    assert mean.shape == logvar.shape == (3, c.embed_dim, n, n)
    l = 2 * n + 3  # token l = latent position (l // w, l % w), channels last
    torch.testing.assert_close(tokens[:, l], mean[:, :, 2, 3] * c.scale_factor)
    y = tok.decode(tokens)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1  # clamp_output
    torch.testing.assert_close(tok.decode_latent(mean), y)
    out = tok(x)
    assert out.recon.shape == x.shape and out.quant_loss.ndim == 0 and out.quant_loss > 0


def test_scale_factor_and_sampling() -> None:
    torch.manual_seed(1)
    a = tiny().eval()
    b = KLTokenizer(a.config.replace(scale_factor=0.25)).eval()
    b.load_state_dict(a.state_dict())
    x = images(a)
    torch.testing.assert_close(b.encode(x), 0.25 * a.encode(x))
    torch.testing.assert_close(b.decode(b.encode(x)), a.decode(a.encode(x)))  # decode divides the scale out
    s1 = a.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    s2 = a.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and not torch.equal(s1, a.encode(x))
    post = a.encode_posterior(x)
    noise = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(s1, a.latent_to_tokens(post.mean + post.std * noise))


def test_kl_matches_the_closed_form() -> None:
    tok = tiny()
    x = images(tok, 2)
    mean, logvar = tok.encode_posterior(x)
    var = logvar.exp()
    kl = 0.5 * (mean**2 + var - 1 - logvar).flatten(1).sum(1).mean()
    out = tok(x)
    torch.testing.assert_close(out.kl, kl.detach())
    torch.testing.assert_close(out.quant_loss, tok.config.kl_weight * kl / x[0].numel())


def test_gradients_reach_every_parameter() -> None:
    tok = tiny().train()
    x = images(tok, 4)
    out = tok(x, generator=torch.Generator().manual_seed(0))
    ((out.recon - x).square().mean() + 1e3 * out.quant_loss).backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def test_save_load_round_trip_is_bit_identical(tmp_path) -> None:
    tok = tiny().eval()
    x = images(tok)
    tok.save_pretrained(tmp_path / "m", info={"description": "test"})
    for loaded in (KLTokenizer.from_pretrained(tmp_path / "m"), arvision.load(tmp_path / "m")):
        assert type(loaded) is KLTokenizer and loaded.config == tok.config and loaded.info["description"] == "test"
        for (k, a), (k2, b) in zip(tok.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(a, b)
        assert torch.equal(loaded.decode(loaded.encode(x)), tok.decode(tok.encode(x)))


def test_bad_tokens_give_clear_errors() -> None:
    tok = tiny()
    L, D = tok.num_tokens, tok.config.embed_dim
    with pytest.raises(ValueError, match=rf"\(B, {L}, {D}\)"):
        tok.decode(torch.zeros(1, L))  # ids-shaped
    with pytest.raises(ValueError, match=rf"\(B, {L}, {D}\)"):
        tok.decode(torch.zeros(1, L + 1, D))
    with pytest.raises(ValueError, match=rf"\(B, {L}, {D}\)"):
        tok.decode(torch.zeros(1, L, D + 1))
    with pytest.raises(ValueError, match="not ids"):
        tok.decode(torch.zeros(1, L, D, dtype=torch.long))
    with pytest.raises(ValueError, match="float tensor"):
        tok.decode([[0.0]])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_latents_are_a_clear_error(bad: float) -> None:
    tok = tiny()
    tokens = torch.zeros(2, tok.num_tokens, tok.config.embed_dim)
    tokens[1, 5, 2] = bad
    with pytest.raises(ValueError, match="the tokens contain NaN/inf"):
        tok.decode(tokens)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="no codebook"):
        KLConfig(codebook_size=16)
    with pytest.raises(ValueError, match="embed_dim"):
        KLConfig(embed_dim=0)
    with pytest.raises(ValueError, match="scale_factor"):
        KLConfig(scale_factor=0.0)
    with pytest.raises(ValueError, match="kl_weight"):
        KLConfig(kl_weight=-1.0)
    with pytest.raises(ValueError, match="codebook_size must be >= 2"):
        VQConfig(codebook_size=0)  # the VQ configs still insist on a codebook
    c = KLConfig(attn_lowest=True)
    assert c.attn_lowest_decoder and not c.replace(decoder_attn_lowest=False).attn_lowest_decoder


# -- training -----------------------------------------------------------------------------------
def test_training_and_exact_resume(tmp_path) -> None:
    kw = dict(preset="tiny-kl", steps=4, progress=False, eval_limit=16)
    metrics = train_tokenizer(tmp_path / "straight", **kw)
    assert {"psnr", "ssim", "token_std", "token_std_min", "token_std_max"} <= set(metrics)
    assert "codebook_usage" not in metrics and "code_perplexity" not in metrics
    stopped = train_tokenizer(tmp_path / "killed", stop_after=2, **kw)
    assert stopped == {"stopped_at": 2} and not (tmp_path / "killed" / "model.safetensors").exists()
    train_tokenizer(tmp_path / "killed", resume=True, progress=False, eval_limit=16)
    a = arvision.load(tmp_path / "straight").state_dict()
    b = arvision.load(tmp_path / "killed").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # posterior noise included: the generator is checkpointed
    tok = arvision.load(tmp_path / "straight")
    assert isinstance(tok, KLTokenizer) and tok.info["metrics"]["psnr"] == pytest.approx(metrics["psnr"], abs=1e-3)


def test_shipped_mnist_kl() -> None:
    tok = arvision.load("mnist-kl")
    assert isinstance(tok, KLTokenizer) and tok.layout.token_shape == (49, 8)
    m = tok.info["metrics"]
    assert m["psnr"] > 27.5  # mnist-vq's, at the same 7x7x8 latent
    assert 0.5 < m["token_std"] < 2.0
    assert "arvision train tokenizer --preset mnist-kl" in tok.info["training"]["command"]


# -- the official MAR VAE -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def mar():
    path = shared_path("fixtures", "mar", "vae_state.pth")
    fx = torch.load(shared_path("fixtures", "mar", "fixture.pt"), weights_only=True)
    return load_mar_vae(path, image_size=64), fx, path


def close(ref: torch.Tensor, got: torch.Tensor) -> None:
    """The fixture README's bar: max|ref - got| <= 1e-5 + 1e-4 max|ref|."""
    assert got.shape == ref.shape
    err, tol = (ref - got).abs().max().item(), 1e-5 + 1e-4 * ref.abs().max().item()
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


def test_mar_vae_architecture_is_inferred(mar) -> None:
    tok, _, _ = mar
    c = tok.config
    assert (c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.embed_dim) == (32, (2, 1, 1, 1, 1), 2, 16, 16)
    assert c.attn_lowest and not c.decoder_attn_lowest and c.attn_mid and c.quant_conv_kernel == 1
    assert c.scale_factor == MAR_LATENT_SCALE and not c.clamp_output and c.image_size == 64
    assert tok.layout.token_shape == (16, 16)
    state = torch.load(mar[2], weights_only=True)["model"]
    assert infer_mar_vae(state).image_size == 256  # the released model's side unless told otherwise
    assert len(mar_vae_state(state)) == len(tok.state_dict())


def test_mar_vae_reproduces_the_official_outputs(mar) -> None:
    tok, fx, _ = mar
    v = fx["vae"]
    with torch.no_grad():
        close(v["moments"], tok.encode_latent(v["images"]))
        post = tok.encode_posterior(v["images"])
        close(v["posterior_mean"], post.mean)
        close(v["posterior_logvar"], post.logvar)
        close(v["posterior_std"], post.std)
        sample = post.sample(noise=v["posterior_sample_noise"])
        close(v["posterior_sample"], sample)
        close(v["decode_fixed_latent"], tok.decode_latent(v["fixed_latent"]))
        # MAR's tokens: posterior sample x 0.2325, patchified with patch size 1 = our raster tokens.
        close(fx["mar_tf"]["x_tokens"], tok.latent_to_tokens(sample * tok.config.scale_factor))
        close(fx["mar_tf"]["x_tokens"], tok.encode(v["images"]) + tok.latent_to_tokens(post.std * v["posterior_sample_noise"]) * 0.2325)
        close(v["decode_fixed_latent"], tok.decode(tok.latent_to_tokens(v["fixed_latent"] * 0.2325)))


def test_mar_vae_file_errors(mar, tmp_path) -> None:
    _, _, path = mar
    with pytest.raises(ModelFileError, match=r"no such file .*kl16\.ckpt.*MAR KL VAE"):
        load_mar_vae(tmp_path / "kl16.ckpt")
    cut = tmp_path / "cut.pth"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"cut\.pth.*truncated or corrupt.*MAR KL VAE"):
        load_mar_vae(cut)
    transformer = shared_path("fixtures", "mar", "mar_state.pth")
    with pytest.raises(ModelFileError, match=r"'mar_state\.pth' is a MAR transformer checkpoint.*not the VAE"):
        load_mar_vae(transformer)
    var_vae = shared_path("fixtures", "var", "vae_state.pth")
    with pytest.raises(ModelFileError, match=r"VQ tokenizer checkpoint"):
        load_mar_vae(var_vae)
    state = torch.load(path, weights_only=True)["model"]
    del state["decoder.up.2.block.1.conv1.weight"]
    with pytest.raises(ModelFileError, match=r"missing keys \(1\): decoder\.up\.2\.block\.1\.conv1\.weight"):
        from arvision.convert.mar_vae import vae_from_mar_state

        vae_from_mar_state(state, image_size=64)
