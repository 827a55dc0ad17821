"""Contract tests of both tokenizer families on their tiny presets."""

from __future__ import annotations

import pytest
import torch

import arvision
from arvision.errors import ModelFileError
from arvision.presets import TOKENIZER_PRESETS
from arvision.tokenizers import MultiScaleVQTokenizer, Tokenizer, VQTokenizer

TINY = ["tiny-vq", "tiny-msvq", "tiny-fsq", "tiny-lfq", "tiny-bsq", "tiny-fq", "tiny-1d"]


def make(name: str) -> Tokenizer:
    p = TOKENIZER_PRESETS[name]
    return p.model_class(p.config)


def images(tok: Tokenizer, b: int = 3) -> torch.Tensor:
    c = tok.config
    return torch.rand(b, c.in_channels, c.image_size, c.image_size) * 2 - 1


@pytest.mark.parametrize("name", TINY)
def test_shapes_and_ranges(name: str) -> None:
    tok = make(name).eval()
    x = images(tok)
    tokens = tok.encode(x)
    assert tokens.shape == (3, tok.num_tokens) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < tok.codebook_size
    y = tok.decode(tokens)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    out = tok(x)
    assert out.recon.shape == x.shape and out.quant_loss.ndim == 0
    assert torch.equal(out.indices, tokens)  # training pass and encode pick the same codes
    assert torch.isfinite(out.recon).all() and torch.isfinite(out.quant_loss)


@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_every_parameter(name: str) -> None:
    tok = make(name).train()
    x = images(tok, 4)
    # the 1-D tokenizer's "dropped" embedding is in the graph only when nested dropout drops tokens
    out = tok(x, keep_B=torch.tensor([1, 2, 3, tok.num_tokens])) if hasattr(tok, "draw_keep") else tok(x)
    ((out.recon - x).square().mean() + out.quant_loss).backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", TINY)
def test_save_load_round_trip_is_bit_identical(name: str, tmp_path) -> None:
    tok = make(name).eval()
    x = images(tok)
    tok.save_pretrained(tmp_path / "m", info={"description": "test"})
    for loaded in (type(tok).from_pretrained(tmp_path / "m"), arvision.load(tmp_path / "m")):
        assert type(loaded) is type(tok) and loaded.config == tok.config
        assert loaded.info["description"] == "test"
        for (k, a), (k2, b) in zip(tok.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(a, b)
        assert torch.equal(loaded.decode(loaded.encode(x)), tok.decode(tok.encode(x)))


@pytest.mark.parametrize("name", TINY)
def test_deterministic_under_seed(name: str) -> None:
    torch.manual_seed(123)
    a = make(name)
    torch.manual_seed(123)
    b = make(name)
    x = images(a)
    assert torch.equal(a.encode(x), b.encode(x))
    assert torch.equal(a(x).recon, b(x).recon)


def test_from_pretrained_of_another_type_is_a_clear_error(tmp_path) -> None:
    make("tiny-msvq").save_pretrained(tmp_path)
    with pytest.raises(ModelFileError, match="msvq_tokenizer.*not a 'vq_tokenizer'"):
        VQTokenizer.from_pretrained(tmp_path)
    assert isinstance(MultiScaleVQTokenizer.from_pretrained(tmp_path), MultiScaleVQTokenizer)


@pytest.mark.parametrize("name", TINY)
def test_bad_images_give_clear_errors(name: str) -> None:
    tok = make(name)
    s, c = tok.config.image_size, tok.config.in_channels
    with pytest.raises(ValueError, match="wrong image size"):
        tok.encode(torch.zeros(1, c, s + 4, s))
    with pytest.raises(ValueError, match="channels"):
        tok.encode(torch.zeros(1, 3 if c == 1 else 1, s, s))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tok.encode(torch.full((1, c, s, s), 255.0))
    with pytest.raises(TypeError, match="float"):
        tok.encode(torch.zeros(1, c, s, s, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        tok.encode(torch.zeros(c, s, s))
    with pytest.raises(TypeError, match="PIL"):
        tok.encode([[0.0]])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TINY)
def test_bad_tokens_give_clear_errors(name: str) -> None:
    tok = make(name)
    L, V = tok.num_tokens, tok.codebook_size
    with pytest.raises(ValueError, match=r"ids must be in \[0, "):
        tok.decode(torch.full((1, L), V))
    with pytest.raises(ValueError, match=f"{L} tokens per image"):
        tok.decode(torch.zeros(1, L + 1, dtype=torch.long))
    with pytest.raises(TypeError, match="integers"):
        tok.decode(torch.zeros(1, L))


def test_pil_helpers_round_trip() -> None:
    from PIL import Image

    tok = make("tiny-vq").eval()
    pics = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("L", (16, 16), 128)]
    tokens = tok.encode_pil(pics)
    assert tokens.shape == (2, tok.num_tokens)
    out = tok.decode_pil(tokens)
    assert len(out) == 2 and out[0].size == (16, 16) and out[0].mode == "L"


def test_official_architectures_match_published_parameter_counts() -> None:
    # ../shared/reference: VAR VQVAE ch=160 has 108,948,355 parameters; LlamaGen VQ-16 has 71.9M.
    with torch.device("meta"):
        var = make("var-vae")
        llamagen = make("llamagen-vq16")
    assert var.num_parameters() == 108_948_355
    assert round(llamagen.num_parameters() / 1e6, 1) == 71.9
    assert var.num_tokens == 680 and llamagen.num_tokens == 256


def test_config_validation() -> None:
    from arvision.tokenizers import MultiScaleVQConfig, VQConfig

    with pytest.raises(ValueError, match="last scale"):
        MultiScaleVQConfig(image_size=16, ch=8, ch_mult=(1, 2), norm_groups=4, patch_nums=(1, 2, 4))
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiScaleVQConfig(image_size=16, ch=8, ch_mult=(1, 2), norm_groups=4, patch_nums=(2, 1, 8))
    with pytest.raises(ValueError, match="norm_groups"):
        VQConfig(image_size=16, ch=6, ch_mult=(1, 2), norm_groups=4)
    with pytest.raises(ValueError, match="in_channels"):
        VQConfig(in_channels=2)
    with pytest.raises(ValueError, match="unknown VQConfig key"):
        VQConfig.from_dict({"image_size": 16, "future_option": 1})
