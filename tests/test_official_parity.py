"""The shared backbone reproduces the official VAR and LlamaGen transformers (../shared/fixtures).

The official state dicts load into arvision's classes by renaming keys only, which proves that
the backbone options (AdaLN chunk order, cosine attention, q/v biases, 2D RoPE with a zero prefix
rotation, RMSNorm, SwiGLU) and both samplers (VAR's linear guidance ramp and multinomial call
sequence, LlamaGen's cfg interval) match the anchors. The models here are built from the fixtures'
own constructor arguments (config.json), independently of the converters' architecture inference,
which ``tests/test_convert.py`` checks against the same fixtures.
"""

from __future__ import annotations

import json

import pytest
import torch

from arvision.convert import llamagen_gpt_state, llamagen_vq_state, var_state, var_vae_state
from arvision.generators import NextScaleConfig, NextScaleGenerator, NextTokenConfig, NextTokenGenerator, SamplingConfig
from arvision.presets import llamagen_backbone, var_backbone
from arvision.samplers import sample_next_scale, sample_next_token
from arvision.tokenizers import MultiScaleVQConfig, MultiScaleVQTokenizer

from conftest import shared_path

@pytest.fixture(scope="module")
def var():
    cfg = json.loads(shared_path("fixtures", "var", "config.json").read_text())
    vk, kw = cfg["var_kwargs"], cfg["vqvae_kwargs"]
    gen = NextScaleGenerator(NextScaleConfig(
        transformer=var_backbone(vk["depth"], vk["embed_dim"], vk["num_heads"]), vocab_size=kw["vocab_size"],
        num_classes=vk["num_classes"], patch_nums=tuple(vk["patch_nums"]), code_dim=kw["z_channels"],
    )).eval()  # fmt: skip
    state = torch.load(shared_path("fixtures", "var", "var_state.pth"), weights_only=True)
    gen.load_state_dict(var_state(state), strict=True)
    tok = MultiScaleVQTokenizer(MultiScaleVQConfig(
        image_size=cfg["image_size"], ch=kw["ch"], z_channels=kw["z_channels"], codebook_size=kw["vocab_size"],
        codebook_dim=kw["z_channels"], quant_conv_kernel=kw["quant_conv_ks"], patch_nums=tuple(kw["v_patch_nums"]),
    )).eval()  # fmt: skip
    vae = torch.load(shared_path("fixtures", "var", "vae_state.pth"), weights_only=True)
    tok.load_state_dict(var_vae_state(vae), strict=True)
    return gen, tok, torch.load(shared_path("fixtures", "var", "fixture.pt"), weights_only=True)


def test_var_teacher_forced_logits(var) -> None:
    gen, _, fx = var
    with torch.no_grad():
        torch.testing.assert_close(gen(fx["labels"], fx["x_BLCv_wo_first_l"]), fx["logits_teacher_forced"], atol=1e-4, rtol=1e-4)
        null = torch.full_like(fx["labels"], gen.null_class)
        torch.testing.assert_close(gen(null, fx["x_BLCv_wo_first_l"]), fx["logits_teacher_forced_uncond"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("run", ["greedy_cfg1.5", "greedy_cfg0", "multinomial_seed0", "fid_setting_seed0"])
def test_var_sampling_runs(var, run: str) -> None:
    gen, tok, fx = var
    ref = fx["sampling"][run]
    k = ref["kwargs"]
    s = SamplingConfig(cfg=k["cfg"], cfg_schedule="linear", top_k=k["top_k"], top_p=k["top_p"])
    tokens, f_hat, stats = sample_next_scale(gen, tok, fx["labels"], s, torch.Generator().manual_seed(k["g_seed"]))
    assert torch.equal(tokens, torch.cat(ref["idx_Bl"], 1))
    torch.testing.assert_close(tok.fhat_to_images(f_hat).add(1).div(2), ref["images"], atol=2e-4, rtol=0)
    assert stats.forward_passes == len(gen.config.patch_nums)


@pytest.fixture(scope="module")
def llamagen():
    cfg = json.loads(shared_path("fixtures", "llamagen", "config.json").read_text())["gpt"]["ModelArgs"]
    gen = NextTokenGenerator(NextTokenConfig(
        transformer=llamagen_backbone(cfg["n_layer"], cfg["dim"], cfg["n_head"]), vocab_size=cfg["vocab_size"],
        num_classes=cfg["num_classes"], grid_size=int(cfg["block_size"] ** 0.5),
    )).eval()  # fmt: skip
    state = torch.load(shared_path("fixtures", "llamagen", "gpt_state.pth"), weights_only=True)
    gen.load_state_dict(llamagen_gpt_state(state), strict=True)
    return gen, torch.load(shared_path("fixtures", "llamagen", "fixture.pt"), weights_only=True)


def test_llamagen_teacher_forced_logits_and_loss(llamagen) -> None:
    gen, fx = llamagen
    with torch.no_grad():
        logits = gen(fx["vq_indices"], fx["labels"])
    torch.testing.assert_close(logits, fx["gpt_tf_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gen.loss(logits, fx["vq_indices"])[0], fx["gpt_tf_loss"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("run,cfg,interval", [("gen_greedy_nocfg", 1.0, -1), ("gen_greedy_cfg", 4.0, -1), ("gen_greedy_cfg_interval", 4.0, 5)])
def test_llamagen_greedy_generation(llamagen, run: str, cfg: float, interval: int) -> None:
    gen, fx = llamagen
    tokens, stats = sample_next_token(gen, fx["labels"], SamplingConfig(cfg=cfg, cfg_interval=interval, top_k=1))
    assert torch.equal(tokens, fx[run].long())
    assert stats.forward_passes == 16


def test_llamagen_vq_tokenizer_loads_and_reproduces_the_official_outputs() -> None:
    from arvision.tokenizers import VQConfig, VQTokenizer

    cfg = json.loads(shared_path("fixtures", "llamagen", "config.json").read_text())["vq"]
    enc, args = cfg["encoder"], cfg["ModelArgs"]
    tok = VQTokenizer(VQConfig(
        image_size=64, ch=enc["ch"], ch_mult=tuple(enc["ch_mult"]), num_res_blocks=enc["num_res_blocks"],
        z_channels=args["z_channels"], codebook_size=args["codebook_size"], codebook_dim=args["codebook_embed_dim"],
        l2_norm=args["codebook_l2_norm"], beta=args["commit_loss_beta"], clamp_output=False,
    )).eval()  # fmt: skip
    state = torch.load(shared_path("fixtures", "llamagen", "vq_state.pth"), weights_only=True)
    tok.load_state_dict(llamagen_vq_state(state, len(enc["ch_mult"])), strict=True)
    fx = torch.load(shared_path("fixtures", "llamagen", "fixture.pt"), weights_only=True)
    x = fx["images"]
    torch.testing.assert_close(tok.encode_latent(x), fx["vq_prequant"], atol=1e-5, rtol=0)
    tokens = tok.encode(x)
    assert torch.equal(tokens, fx["vq_indices"].long())
    torch.testing.assert_close(tok.quantize.embed(tokens, 4, 4), fx["vq_quant"], atol=1e-6, rtol=0)
    torch.testing.assert_close(tok.decode(tokens), fx["vq_recon"], atol=2e-4, rtol=0)
