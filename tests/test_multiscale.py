"""Multi-scale residual VQ: internal consistency, and exactness against the official VAR VQVAE."""

from __future__ import annotations

import json

import pytest
import torch

from arvision.presets import TOKENIZER_PRESETS
from arvision.tokenizers import MultiScaleVQConfig, MultiScaleVQTokenizer, phi_index_table

from conftest import shared_path


def tiny() -> MultiScaleVQTokenizer:
    p = TOKENIZER_PRESETS["tiny-msvq"]
    tok = MultiScaleVQTokenizer(p.config).eval()
    # Spread the codebook so that every scale picks varied codes.
    tok.quantize.embedding.weight.data.normal_()
    return tok


def test_phi_table_reproduces_var_tie_breaking() -> None:
    # ../shared/reference/var.md: the 10-scale 256px schedule maps to [0,0,1,1,1,2,2,3,3,3]
    # (scales 2 and 7 are exact ties broken by float64 rounding), 4 scales to [0,1,2,3].
    assert phi_index_table(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert phi_index_table(4, 4) == [0, 1, 2, 3]
    assert phi_index_table(14, 4) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]


def test_decoding_indices_equals_cumulative_latent_path() -> None:
    tok = tiny()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    scales = tok.encode_scales(x)
    fhats = tok.cumulative_latents(x)
    for k in range(len(tok.patch_nums)):
        torch.testing.assert_close(tok.tokens_to_fhat(scales[: k + 1]), fhats[k], atol=1e-6, rtol=0)
    torch.testing.assert_close(tok.decode(torch.cat(scales, 1)), tok.fhat_to_images(fhats[-1]))


def test_incremental_next_scale_inputs_equal_teacher_forcing() -> None:
    tok = tiny()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    tokens = tok.encode(x)
    teacher = tok.teacher_forcing_input(tokens)
    assert teacher.shape == (3, tok.num_tokens - tok.first_len, tok.config.codebook_dim)
    f_hat, pieces = tok.empty_fhat(3), []
    for si, idx in enumerate(tok.split_scales(tokens)):
        f_hat, nxt = tok.next_scale_input(si, f_hat, idx)
        if si < len(tok.patch_nums) - 1:
            pieces.append(nxt)
    torch.testing.assert_close(torch.cat(pieces, 1), teacher, atol=1e-6, rtol=0)
    torch.testing.assert_close(f_hat, tok.tokens_to_fhat(tokens), atol=1e-6, rtol=0)


def test_per_scale_token_lists_are_checked() -> None:
    tok = tiny()
    with pytest.raises(ValueError, match="per-scale tokens"):
        tok.decode([torch.zeros(1, 2, dtype=torch.long)])


# ------------------------------------------------------------------------------------------
# Official VAR VQVAE (../shared/fixtures/var): the weights load by name and reproduce the
# official indices, latents and reconstructions.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def var_fixture():
    cfg = json.loads(shared_path("fixtures", "var", "config.json").read_text())
    kw = cfg["vqvae_kwargs"]
    internals = cfg["vqvae_fixed_internals"]
    config = MultiScaleVQConfig(
        image_size=cfg["image_size"], in_channels=3, ch=kw["ch"], ch_mult=tuple(internals["ch_mult"]),
        num_res_blocks=internals["num_res_blocks"], z_channels=kw["z_channels"], codebook_size=kw["vocab_size"],
        codebook_dim=kw["z_channels"], quant_conv_kernel=kw["quant_conv_ks"], patch_nums=tuple(kw["v_patch_nums"]),
        quant_resi=kw["quant_resi"], share_quant_resi=kw["share_quant_resi"], beta=kw["beta"], znorm=kw["using_znorm"],
    )  # fmt: skip
    tok = MultiScaleVQTokenizer(config).eval()
    state = torch.load(shared_path("fixtures", "var", "vae_state.pth"), weights_only=True)
    state.pop("quantize.ema_vocab_hit_SV")  # training-time usage statistics, not part of the model
    tok.load_state_dict(state, strict=True)
    return tok, torch.load(shared_path("fixtures", "var", "fixture.pt"), weights_only=True)


def test_official_var_vqvae_indices_latents_reconstructions(var_fixture) -> None:
    tok, fx = var_fixture
    x = fx["images"]
    torch.testing.assert_close(tok.encode_latent(x), fx["f_BChw"], atol=1e-5, rtol=0)
    for ours, ref in zip(tok.encode_scales(x), fx["idx_Bl"]):
        assert torch.equal(ours, ref)
    for ours, ref in zip(tok.cumulative_latents(x), fx["fhat_per_scale"]):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    tokens = tok.encode(x)
    torch.testing.assert_close(tok.decode(tokens), fx["recon_from_idx"], atol=2e-4, rtol=0)
    for k, ref in enumerate(fx["recon_from_idx_per_scale"]):
        torch.testing.assert_close(tok.decode_latent(tok.tokens_to_fhat(tok.split_scales(tokens)[: k + 1])), ref, atol=2e-4, rtol=0)
    torch.testing.assert_close(tok.teacher_forcing_input(tokens), fx["x_BLCv_wo_first_l"], atol=1e-6, rtol=0)


def test_decoding_tokens_equals_decoding_the_sampled_latent_bit_for_bit() -> None:
    """Pipelines decode every order's tokens with tokenizer.decode; for next-scale that must equal
    decoding the f_hat accumulated while sampling (what VAR decodes)."""
    import arvision
    from arvision.samplers import decode

    pipe = arvision.load("mnist-scale")
    out = decode(pipe.generator, pipe.tokenizer, torch.arange(10), pipe.defaults, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(pipe.tokenizer.decode(out.tokens), pipe.tokenizer.fhat_to_images(out.state.extra["f_hat"]))
