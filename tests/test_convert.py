"""User-facing converters (issue #4): official files -> arvision directories that reproduce the
official outputs (../shared/fixtures), architecture inference at the official sizes, and clear,
safe errors for bad files."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

import arvision
from arvision.cli import main
from arvision.convert import build_llamagen, build_var, from_llamagen, from_var, infer_llamagen, infer_var, read_checkpoint
from arvision.convert.llamagen import image_size_from_name
from arvision.errors import ModelFileError

from conftest import shared_path

FX_VAR_LABELS = [3, 7]  # fixture.pt["labels"] of both fixtures


def _state(*parts: str) -> dict[str, torch.Tensor]:
    return torch.load(shared_path("fixtures", *parts), weights_only=True)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------------
# (a) fixture checkpoints in the official containers -> exact official outputs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def var_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("var_official")
    torch.save(_state("var", "vae_state.pth"), d / "vae_ch32v4096z32.pth")  # released files are bare state dicts
    torch.save(_state("var", "var_state.pth"), d / "var_d2.pth")
    return d / "vae_ch32v4096z32.pth", d / "var_d2.pth"


@pytest.fixture(scope="module")
def var_dirs(var_files, tmp_path_factory):
    """The same files converted through the Python API and through the CLI."""
    vae, var = var_files
    out = tmp_path_factory.mktemp("var_converted")
    from_var(vae, var).save_pretrained(out / "api")
    assert main(["convert", "var", "--vae", str(vae), "--var", str(var), "--out", str(out / "cli")]) == 0
    return {"api": out / "api", "cli": out / "cli"}


def _same_weights(a, b) -> None:
    """Two converted directories hold the same config and tensors."""
    from safetensors.torch import load_file

    for sub in (".", "tokenizer"):
        ca, cb = (json.loads((d / sub / "config.json").read_text()) for d in (a, b))
        assert ca["config"] == cb["config"]
        wa, wb = (load_file(str(d / sub / "model.safetensors")) for d in (a, b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_var_converted_reproduces_every_official_sampling_run(var_dirs) -> None:
    _same_weights(var_dirs["api"], var_dirs["cli"])  # the CLI writes what the Python API gives
    pipe = arvision.load(var_dirs["cli"])
    fx = _state("var", "fixture.pt")
    assert fx["labels"].tolist() == FX_VAR_LABELS
    d = pipe.defaults  # VAR's convention: linear ramp, FID setting of the README
    assert (d.cfg, d.cfg_schedule, d.top_k, d.top_p) == (1.5, "linear", 900, 0.96)
    images = pipe.generate(classes=FX_VAR_LABELS, n_per_class=1, cfg=1.5, top_k=1)
    torch.testing.assert_close(images, fx["sampling"]["greedy_cfg1.5"]["images"], atol=2e-4, rtol=0)
    for run in ("greedy_cfg1.5", "greedy_cfg0", "multinomial_seed0", "fid_setting_seed0"):
        ref = fx["sampling"][run]
        k = ref["kwargs"]
        decode = run == "fid_setting_seed0"  # images of the others follow from the same tokens and decoder
        out = pipe.sample(FX_VAR_LABELS, 1, cfg=k["cfg"], top_k=k["top_k"], top_p=k["top_p"], seed=torch.Generator().manual_seed(k["g_seed"]), decode=decode)
        assert torch.equal(out.tokens, torch.cat(ref["idx_Bl"], 1)), run
        if decode:
            torch.testing.assert_close(out.images, ref["images"], atol=2e-4, rtol=0, msg=run)
    with torch.no_grad():
        logits = pipe.generator(fx["labels"], fx["x_BLCv_wo_first_l"])
    torch.testing.assert_close(logits, fx["logits_teacher_forced"], atol=1e-4, rtol=1e-4)


def test_var_cli_prints_the_inferred_architecture(var_files, tmp_path, capsys) -> None:
    vae, var = var_files
    code, out, _ = _cli(capsys, "convert", "var", "--vae", str(vae), "--var", str(var), "--out", str(tmp_path / "m"))
    assert code == 0
    for text in ("depth 2, width 128, heads 2", "(1, 2, 3, 4)", "64 px", "codebook 4096 x 32", "cfg 1.5 (linear)"):
        assert text in out
    code, _, err = _cli(capsys, "convert", "var", "--vae", str(vae), "--var", str(var), "--out", str(tmp_path / "m"))
    assert code == 2 and "--overwrite" in err
    info = json.loads((tmp_path / "m" / "config.json").read_text())["info"]
    assert info["source"] == {"format": "FoundationVision/VAR", "vae": vae.name, "var": var.name}


LLAMAGEN_RUNS = [("gen_greedy_nocfg", 1.0, -1), ("gen_greedy_cfg", 4.0, -1), ("gen_greedy_cfg_interval", 4.0, 5)]


@pytest.fixture(scope="module")
def llamagen_dirs(tmp_path_factory):
    """The fixture GPT in three official containers, converted via the API and the CLI."""
    d = tmp_path_factory.mktemp("llamagen_official")
    vq, gpt = _state("llamagen", "vq_state.pth"), _state("llamagen", "gpt_state.pth")
    torch.save({"model": vq, "steps": 1000}, d / "vq_ds16_c2i.pt")
    torch.save({"model": gpt}, d / "gpt_model.pt")
    args = argparse.Namespace(gpt_model="GPT-B", image_size=64, cfg_scale=4.0, data_path=None, mixed_precision="bf16")
    torch.save({"model": gpt, "optimizer": {"state": {}, "param_groups": []}, "steps": 10, "args": args}, d / "gpt_args.pt")
    torch.save({f"_orig_mod.{k}": v for k, v in gpt.items()}, d / "gpt_compiled.pt")
    out = tmp_path_factory.mktemp("llamagen_converted")
    from_llamagen(d / "vq_ds16_c2i.pt", d / "gpt_model.pt", image_size=64, heads=4).save_pretrained(out / "api")
    for name in ("gpt_args", "gpt_compiled"):
        argv = ["convert", "llamagen", "--vq", str(d / "vq_ds16_c2i.pt"), "--gpt", str(d / f"{name}.pt"),
                "--out", str(out / name), "--image-size", "64", "--heads", "4"]  # fmt: skip
        assert main(argv) == 0
    return {"api": out / "api", "gpt_args": out / "gpt_args", "gpt_compiled": out / "gpt_compiled"}, d


def test_llamagen_converted_reproduces_the_official_greedy_tokens(llamagen_dirs) -> None:
    dirs = llamagen_dirs[0]
    for via in ("gpt_args", "gpt_compiled"):  # Namespace-carrying and torch.compile'd files convert identically
        _same_weights(dirs["api"], dirs[via])
    pipe = arvision.load(dirs["gpt_args"])
    fx = _state("llamagen", "fixture.pt")
    d = pipe.defaults  # LlamaGen's convention: constant scale 4, top-k 2000
    assert (d.cfg, d.cfg_schedule, d.cfg_interval, d.top_k, d.top_p, d.temperature) == (4.0, "constant", -1, 2000, 1.0, 1.0)
    tokens = pipe.generate_tokens(classes=fx["labels"].tolist(), n_per_class=1, cfg=4.0, top_k=1)
    assert torch.equal(tokens, fx["gen_greedy_cfg"].long())
    for run, cfg, interval in LLAMAGEN_RUNS:
        tokens = pipe.generate_tokens(fx["labels"].tolist(), 1, cfg=cfg, cfg_interval=interval, top_k=1)
        assert torch.equal(tokens, fx[run].long()), run
    with torch.no_grad():
        torch.testing.assert_close(pipe.generator(fx["vq_indices"], fx["labels"]), fx["gpt_tf_logits"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pipe.tokenizer.decode(fx["gen_greedy_cfg"].long()), fx["gen_greedy_cfg_decoded"], atol=2e-4, rtol=0)


def test_llamagen_ema_and_explicit_key_selection(llamagen_dirs, tmp_path) -> None:
    gpt = _state("llamagen", "gpt_state.pth")
    noise = {k: torch.randn_like(v) for k, v in gpt.items()}
    torch.save({"model": noise, "ema": gpt}, tmp_path / "both.pt")
    assert torch.equal(read_checkpoint(tmp_path / "both.pt")["norm.weight"], noise["norm.weight"])  # "model" preferred
    assert torch.equal(read_checkpoint(tmp_path / "both.pt", ema=True)["norm.weight"], gpt["norm.weight"])
    assert torch.equal(read_checkpoint(tmp_path / "both.pt", key="ema")["norm.weight"], gpt["norm.weight"])
    torch.save({"module": {f"module.{k}": v for k, v in gpt.items()}}, tmp_path / "ds.pt")  # DeepSpeed
    assert set(read_checkpoint(tmp_path / "ds.pt")) == set(gpt)
    with pytest.raises(ModelFileError, match="no 'ema'"):
        read_checkpoint(tmp_path / "ds.pt", ema=True)


def test_llamagen_image_size_from_the_file_name_or_a_clear_error(llamagen_dirs) -> None:
    assert image_size_from_name("c2i_XL_384.pt") == 384 and image_size_from_name("c2i_B_256.pt") == 256
    assert image_size_from_name("gpt_model.pt") is None
    d = llamagen_dirs[1]
    with pytest.raises(ModelFileError, match="image_size=256 or 384"):
        from_llamagen(d / "vq_ds16_c2i.pt", d / "gpt_model.pt", heads=4)
    with pytest.warns(UserWarning, match="head_dim 64"):  # not an official size: assumption announced
        infer_llamagen(_state("llamagen", "vq_state.pth"), _state("llamagen", "gpt_state.pth"), image_size=64)


# ------------------------------------------------------------------------------------------------
# (b) official sizes: state dicts with the documented key names and shapes (meta tensors)
# ------------------------------------------------------------------------------------------------
def _t(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _resblock(p: str, cin: int, cout: int) -> dict:
    d = {f"{p}.norm1.weight": _t(cin), f"{p}.norm1.bias": _t(cin), f"{p}.conv1.weight": _t(cout, cin, 3, 3),
         f"{p}.conv1.bias": _t(cout), f"{p}.norm2.weight": _t(cout), f"{p}.norm2.bias": _t(cout),
         f"{p}.conv2.weight": _t(cout, cout, 3, 3), f"{p}.conv2.bias": _t(cout)}  # fmt: skip
    if cin != cout:
        d |= {f"{p}.nin_shortcut.weight": _t(cout, cin, 1, 1), f"{p}.nin_shortcut.bias": _t(cout)}
    return d


def _attn(p: str, c: int, fused: bool) -> dict:
    d = {f"{p}.norm.weight": _t(c), f"{p}.norm.bias": _t(c), f"{p}.proj_out.weight": _t(c, c, 1, 1), f"{p}.proj_out.bias": _t(c)}
    if fused:  # VAR's AttnBlock: one qkv conv
        return d | {f"{p}.qkv.weight": _t(3 * c, c, 1, 1), f"{p}.qkv.bias": _t(3 * c)}
    return d | {f"{p}.{n}.{w}": _t(c, c, 1, 1) if w == "weight" else _t(c) for n in "qkv" for w in ("weight", "bias")}


def official_autoencoder(style: str, ch: int, ch_mult: tuple, z: int, vocab: int, dim: int, *, nrb: int = 2) -> dict:
    """The key layout of VAR's VQVAE (style "var") or LlamaGen's VQModel (style "llamagen")."""
    var = style == "var"
    levels, last = len(ch_mult), len(ch_mult) - 1
    blk, res, att = ("down", "block", "attn") if var else ("conv_blocks", "res", "attn")
    mids = ("block_1", "attn_1", "block_2") if var else ("0", "1", "2")
    s = {"encoder.conv_in.weight": _t(ch, 3, 3, 3), "encoder.conv_in.bias": _t(ch)}
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(nrb):
            s |= _resblock(f"encoder.{blk}.{i}.{res}.{j}", cin, ch * m)
            cin = ch * m
            if i == last:
                s |= _attn(f"encoder.{blk}.{i}.{att}.{j}", cin, var)
        if i != last:
            s |= {f"encoder.{blk}.{i}.downsample.conv.weight": _t(cin, cin, 3, 3), f"encoder.{blk}.{i}.downsample.conv.bias": _t(cin)}
    top = ch * ch_mult[-1]
    for part in ("encoder", "decoder"):
        s |= _resblock(f"{part}.mid.{mids[0]}", top, top) | _attn(f"{part}.mid.{mids[1]}", top, var)
        s |= _resblock(f"{part}.mid.{mids[2]}", top, top)
    s |= {"encoder.norm_out.weight": _t(top), "encoder.norm_out.bias": _t(top), "encoder.conv_out.weight": _t(z, top, 3, 3),
          "encoder.conv_out.bias": _t(z), "decoder.conv_in.weight": _t(top, z, 3, 3), "decoder.conv_in.bias": _t(top)}  # fmt: skip
    cin = top
    for i in reversed(range(levels)):  # VAR stores up.{i} by level; LlamaGen stores lowest resolution first
        idx = i if var else last - i
        blk_d = "up" if var else "conv_blocks"
        for j in range(nrb + 1):
            s |= _resblock(f"decoder.{blk_d}.{idx}.{res}.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i == last:
                s |= _attn(f"decoder.{blk_d}.{idx}.{att}.{j}", cin, var)
        if i != 0:
            s |= {f"decoder.{blk_d}.{idx}.upsample.conv.weight": _t(cin, cin, 3, 3), f"decoder.{blk_d}.{idx}.upsample.conv.bias": _t(cin)}
    s |= {"decoder.norm_out.weight": _t(ch), "decoder.norm_out.bias": _t(ch), "decoder.conv_out.weight": _t(3, ch, 3, 3),
          "decoder.conv_out.bias": _t(3), "quantize.embedding.weight": _t(vocab, dim)}  # fmt: skip
    k = 3 if var else 1
    s |= {"quant_conv.weight": _t(dim, z, k, k), "quant_conv.bias": _t(dim), "post_quant_conv.weight": _t(z, dim, k, k),
          "post_quant_conv.bias": _t(z)}  # fmt: skip
    if var:
        s |= {f"quantize.quant_resi.qresi_ls.{i}.{w}": _t(dim, dim, 3, 3) if w == "weight" else _t(dim) for i in range(4) for w in ("weight", "bias")}
        s["quantize.ema_vocab_hit_SV"] = _t(10, vocab)
    else:
        s["quantize.codebook_used"] = _t(65536)
    return s


def official_var(depth: int, patch_nums: tuple, *, shared_aln: bool = False, vocab: int = 4096, cvae: int = 32,
                 classes: int = 1000, lvl_buffer: bool = True) -> dict:  # fmt: skip
    """VAR's ``VAR.state_dict()`` layout (var.md, section f): C = 64 depth, heads = depth."""
    C, L = 64 * depth, sum(p * p for p in patch_nums)
    s = {"pos_start": _t(1, patch_nums[0] ** 2, C), "pos_1LC": _t(1, L, C), "attn_bias_for_masking": _t(1, 1, L, L),
         "word_embed.weight": _t(C, cvae), "word_embed.bias": _t(C), "class_emb.weight": _t(classes + 1, C),
         "lvl_embed.weight": _t(len(patch_nums), C), "head_nm.ada_lin.1.weight": _t(2 * C, C),
         "head_nm.ada_lin.1.bias": _t(2 * C), "head.weight": _t(vocab, C), "head.bias": _t(vocab)}  # fmt: skip
    if lvl_buffer:  # real values: the scale id of every position
        s["lvl_1L"] = torch.cat([torch.full((p * p,), i) for i, p in enumerate(patch_nums)]).view(1, L)
    if shared_aln:
        s |= {"shared_ada_lin.1.weight": _t(6 * C, C), "shared_ada_lin.1.bias": _t(6 * C)}
    for i in range(depth):
        b = f"blocks.{i}"
        s |= {f"{b}.attn.scale_mul_1H11": _t(1, depth, 1, 1), f"{b}.attn.q_bias": _t(C), f"{b}.attn.v_bias": _t(C),
              f"{b}.attn.zero_k_bias": _t(C), f"{b}.attn.mat_qkv.weight": _t(3 * C, C), f"{b}.attn.proj.weight": _t(C, C),
              f"{b}.attn.proj.bias": _t(C), f"{b}.ffn.fc1.weight": _t(4 * C, C), f"{b}.ffn.fc1.bias": _t(4 * C),
              f"{b}.ffn.fc2.weight": _t(C, 4 * C), f"{b}.ffn.fc2.bias": _t(C)}  # fmt: skip
        s |= {f"{b}.ada_gss": _t(1, 1, 6, C)} if shared_aln else {f"{b}.ada_lin.1.weight": _t(6 * C, C), f"{b}.ada_lin.1.bias": _t(6 * C)}
    return s


def official_gpt(depth: int, dim: int, hidden: int, *, vocab: int = 16384, classes: int = 1000) -> dict:
    """LlamaGen's c2i ``Transformer.state_dict()`` layout (llamagen.md, section 1.7)."""
    s = {"cls_embedding.embedding_table.weight": _t(classes + 1, dim), "tok_embeddings.weight": _t(vocab, dim),
         "norm.weight": _t(dim), "output.weight": _t(vocab, dim)}  # fmt: skip
    for i in range(depth):
        b = f"layers.{i}"
        s |= {f"{b}.attention.wqkv.weight": _t(3 * dim, dim), f"{b}.attention.wo.weight": _t(dim, dim),
              f"{b}.feed_forward.w1.weight": _t(hidden, dim), f"{b}.feed_forward.w3.weight": _t(hidden, dim),
              f"{b}.feed_forward.w2.weight": _t(dim, hidden), f"{b}.attention_norm.weight": _t(dim), f"{b}.ffn_norm.weight": _t(dim)}  # fmt: skip
    return s


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_official_layout_builders_match_the_fixture_files() -> None:
    """The generators above follow the official layouts exactly (checked at the fixture sizes)."""
    assert _shapes(official_autoencoder("var", 32, (1, 1, 2, 2, 4), 32, 4096, 32)) == _shapes(_state("var", "vae_state.pth")) | {
        "quantize.ema_vocab_hit_SV": (10, 4096)}  # fmt: skip
    fixture_var = _state("var", "var_state.pth")
    mine = official_var(2, (1, 2, 3, 4), classes=10)
    mine["blocks.0.attn.scale_mul_1H11"] = mine["blocks.1.attn.scale_mul_1H11"] = _t(1, 2, 1, 1)
    assert _shapes(mine) == _shapes(fixture_var)
    vq = official_autoencoder("llamagen", 32, (1, 1, 2, 2, 4), 32, 1024, 8)
    assert _shapes(vq) == _shapes(_state("llamagen", "vq_state.pth"))
    assert _shapes(official_gpt(2, 128, 512, vocab=1024, classes=10)) == _shapes(_state("llamagen", "gpt_state.pth"))


VAE_OFFICIAL = dict(ch=160, ch_mult=(1, 1, 2, 2, 4), z=32, vocab=4096, dim=32)
PN_256, PN_512 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@pytest.mark.parametrize("depth,patch_nums,shared,lvl_buffer,size", [
    (16, PN_256, False, True, 256), (20, PN_256, False, False, 256), (30, PN_256, False, True, 256),
    (36, PN_512, True, True, 512), (36, PN_512, True, False, 512),
])  # fmt: skip
def test_var_official_sizes_are_inferred(depth, patch_nums, shared, lvl_buffer, size) -> None:
    vae = official_autoencoder("var", **VAE_OFFICIAL)
    var = official_var(depth, patch_nums, shared_aln=shared, lvl_buffer=lvl_buffer)
    tok_cfg, gen_cfg = infer_var(vae, var)
    t = gen_cfg.transformer
    assert (t.depth, t.width, t.num_heads, t.shared_adaln, t.attention) == (depth, 64 * depth, depth, shared, "cosine")
    assert gen_cfg.patch_nums == tok_cfg.patch_nums == patch_nums and tok_cfg.image_size == size
    assert (gen_cfg.vocab_size, gen_cfg.num_classes, gen_cfg.code_dim) == (4096, 1000, 32)
    assert (tok_cfg.ch, tok_cfg.z_channels, tok_cfg.codebook_size, tok_cfg.share_quant_resi, tok_cfg.quant_conv_kernel) == (160, 32, 4096, 4, 3)
    if depth in (16, 36):  # every key maps onto the arvision models (built on the meta device, strict load)
        pipe = build_var(tok_cfg, gen_cfg, vae, var, device="meta")
        assert pipe.generator.num_parameters() > 3e8


@pytest.mark.parametrize("name,depth,dim,heads,hidden,vq_mult,image_size,grid", [
    ("B", 12, 768, 12, 2048, (1, 1, 2, 2, 4), 256, 16), ("XL", 36, 1280, 20, 3584, (1, 1, 2, 2, 4), 384, 24),
    ("3B", 24, 3200, 32, 8704, (1, 1, 2, 2, 4), 384, 24), ("B-vq8", 12, 768, 12, 2048, (1, 2, 2, 4), 256, 32),
])  # fmt: skip
def test_llamagen_official_sizes_are_inferred(name, depth, dim, heads, hidden, vq_mult, image_size, grid) -> None:
    vq = official_autoencoder("llamagen", 128, vq_mult, 256, 16384, 8)
    gpt = official_gpt(depth, dim, hidden)
    tok_cfg, gen_cfg = infer_llamagen(vq, gpt, image_size=image_size)
    t = gen_cfg.transformer
    assert (t.depth, t.width, t.num_heads, t.mlp_hidden) == (depth, dim, heads, hidden)
    assert (gen_cfg.grid_size, tok_cfg.image_size, tok_cfg.downsample) == (grid, image_size, 2 ** (len(vq_mult) - 1))
    assert (gen_cfg.vocab_size, gen_cfg.num_classes, tok_cfg.codebook_size, tok_cfg.codebook_dim) == (16384, 1000, 16384, 8)
    assert (tok_cfg.ch, tok_cfg.ch_mult, tok_cfg.z_channels, tok_cfg.l2_norm) == (128, vq_mult, 256, True)
    if name in ("B", "B-vq8"):
        pipe = build_llamagen(tok_cfg, gen_cfg, vq, gpt, device="meta")
        assert 1.0e8 < pipe.generator.num_parameters() < 1.2e8  # GPT-B: 110.9M (llamagen.md)


def test_llamagen_grid_and_heads_from_saved_buffers() -> None:
    vq = official_autoencoder("llamagen", 128, (1, 1, 2, 2, 4), 256, 16384, 8)
    gpt = official_gpt(2, 512, 1536) | {"freqs_cis": _t(1 + 24 * 24, 16, 2), "layers.0.attention.kv_cache.k_cache": _t(8, 16, 584, 32)}
    tok_cfg, gen_cfg = infer_llamagen(vq, gpt)  # no image size needed, no warning
    assert (gen_cfg.grid_size, tok_cfg.image_size, gen_cfg.transformer.num_heads) == (24, 384, 16)
    with pytest.raises(ModelFileError, match="24x24"):
        infer_llamagen(vq, gpt, image_size=256)


# ------------------------------------------------------------------------------------------------
# (c) errors
# ------------------------------------------------------------------------------------------------
def test_not_a_checkpoint_and_missing_files(var_files, tmp_path, capsys) -> None:
    vae, var = var_files
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ModelFileError, match="not a PyTorch checkpoint.*VAR VQVAE"):
        from_var(text, var)
    with pytest.raises(ModelFileError, match=r"no such file .*missing\.pth.*VAR transformer checkpoint"):
        from_var(vae, tmp_path / "missing.pth")
    code, _, err = _cli(capsys, "convert", "var", "--vae", str(text), "--var", str(var), "--out", str(tmp_path / "o"))
    assert code == 2 and "not a PyTorch checkpoint" in err and not (tmp_path / "o").exists()


def test_truncated_file(var_files, tmp_path) -> None:
    data = var_files[1].read_bytes()
    cut = tmp_path / "var_d2.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        from_var(var_files[0], cut)
    legacy = tmp_path / "legacy.pth"  # the pre-zip torch.save format
    torch.save(_state("llamagen", "gpt_state.pth"), legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        read_checkpoint(legacy)


def test_vae_paired_with_a_var_of_another_codebook(var_files, tmp_path) -> None:
    var = _state("var", "var_state.pth")
    var["head.weight"], var["head.bias"] = torch.zeros(8192, 128), torch.zeros(8192)
    torch.save(var, tmp_path / "var_v8192.pth")
    with pytest.raises(ModelFileError, match="not a pair.*4096 codes.*8192 tokens"):
        from_var(var_files[0], tmp_path / "var_v8192.pth")
    with pytest.raises(ModelFileError, match="swapped"):
        from_var(var_files[1], var_files[0])
    gpt = _state("llamagen", "gpt_state.pth")
    gpt["tok_embeddings.weight"], gpt["output.weight"] = torch.zeros(2048, 128), torch.zeros(2048, 128)
    with pytest.raises(ModelFileError, match="not a pair.*1024 codes.*2048"):
        infer_llamagen(_state("llamagen", "vq_state.pth"), gpt, image_size=64, heads=4)


def test_missing_and_unexpected_keys_are_listed(var_files, tmp_path) -> None:
    var = _state("var", "var_state.pth")
    del var["blocks.1.ffn.fc1.bias"]
    var["blocks.0.attn.extra_scale"] = torch.zeros(3)
    torch.save(var, tmp_path / "var_bad.pth")
    with pytest.raises(ModelFileError) as e:
        from_var(var_files[0], tmp_path / "var_bad.pth")
    msg = str(e.value)
    assert "missing keys (1): transformer.blocks.1.mlp.fc1.bias" in msg
    assert "unexpected keys (1): transformer.blocks.0.attn.extra_scale" in msg and "var_bad.pth" in msg
    with pytest.raises(ModelFileError, match="depth=3 was given but .* has 2 blocks"):
        from_var(*var_files, depth=3)
    with pytest.raises(ModelFileError, match="shared_aln=True was given"):
        from_var(*var_files, shared_aln=True)


class _Evil:
    """Pickles as a call of os.system; a safe loader must refuse it without running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path, capsys) -> None:
    marker = tmp_path / "PWNED"
    gpt = _state("llamagen", "gpt_state.pth")
    torch.save({"model": gpt, "args": _Evil(str(marker))}, tmp_path / "c2i_B_256.pt")
    with pytest.raises(ModelFileError, match="system.*never runs arbitrary pickled code"):
        read_checkpoint(tmp_path / "c2i_B_256.pt")
    vq = tmp_path / "vq.pt"
    torch.save({"model": _state("llamagen", "vq_state.pth")}, vq)
    code, _, err = _cli(capsys, "convert", "llamagen", "--vq", str(vq), "--gpt", str(tmp_path / "c2i_B_256.pt"), "--out", str(tmp_path / "o"))
    assert code == 2 and "never runs arbitrary pickled code" in err
    assert not marker.exists()
