"""The official MAR VAE (LTH14/mar ``models/vae.py`` ``AutoencoderKL``, ``kl16.ckpt``) -> a
:class:`~arvision.tokenizers.KLTokenizer`.

    tok = load_mar_vae("pretrained_models/vae/kl16.ckpt")     # 256 px, 16x16 tokens of 16 dims
    tok.save_pretrained("mar-vae")                           # arvision.load("mar-vae") opens it

The official class is LDM's KL autoencoder: the same conv stacks as arvision's (names included,
``encoder.down.{i}.block.{j}``, ``encoder.mid.attn_1``, ``quant_conv``, ...), except that its
attention blocks hold separate 1x1 ``q``/``k``/``v`` convs where arvision has one fused ``qkv``
(concatenated here, in that order). Everything is inferred from the tensors:

* ch = ``encoder.conv_in`` outputs, in_channels = its inputs; levels = number of
  ``encoder.down.N``; res blocks = number of ``encoder.down.0.block.N``; ch_mult from the width
  of each level's first conv;
* z_channels = ``decoder.conv_in`` inputs (the encoder's ``conv_out`` has twice as many,
  ``double_z``); embed_dim D = ``post_quant_conv`` inputs (``quant_conv`` maps 2 z -> 2 D);
* attention placement from the ``attn`` keys: the released VAE has it at the lowest encoder
  level and in both middle blocks, none in the decoder's levels;
* what the tensors cannot say: image_size (256, the released model's; overridable), the latent
  scale 0.2325 of ``engine_mar.py`` (the converted tokenizer's ``scale_factor``), GroupNorm with
  32 groups, and no clamping of decoded images (the official ``decode`` does not clamp).

A VAE trained with ``use_variational=False`` (``quant_conv`` with D outputs) is refused: its
official ``encode`` appends a constant log-variance of 1, a posterior no released model uses.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from arvision.checkpoints import read_checkpoint
from arvision.convert.checkpoint import encoder_levels, require
from arvision.errors import ModelFileError
from arvision.modeling import load_state_dict_checked
from arvision.tokenizers.kl import KLConfig, KLTokenizer

MAR_LATENT_SCALE = 0.2325  # engine_mar.py: x = posterior.sample() * 0.2325
_WHAT = "the MAR KL VAE checkpoint (kl16.ckpt of LTH14/mar, {'model': state_dict})"
_QKV = re.compile(r"^(.*\.(?:attn\.\d+|attn_1))\.([qkv])\.(weight|bias)$")
_DROP = re.compile(r"^loss\.")  # LDM training checkpoints keep LPIPS / discriminator weights under loss.*


def mar_vae_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ``AutoencoderKL`` keys -> :class:`KLTokenizer` keys: q/k/v convs fused into ``qkv``."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for k, v in state.items():
        if _DROP.match(k):
            continue
        m = _QKV.match(k)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
            continue
        out[k] = v
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ModelFileError(f"attention '{prefix}' has only {sorted(parts)} {kind} tensors of q, k, v: the checkpoint is incomplete")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def infer_mar_vae(state: dict[str, Tensor], *, image_size: int = 256, source: str = "the VAE") -> KLConfig:
    """The :class:`KLConfig` of an official MAR VAE state dict (official key names)."""
    _check_kind(state, source)
    arch = encoder_levels(state, source, _WHAT)
    in_channels, levels = arch["in_channels"], len(arch["ch_mult"])
    z_channels = int(require(state, "decoder.conv_in.weight", source, _WHAT).shape[1])
    enc_out = int(require(state, "encoder.conv_out.weight", source, _WHAT).shape[0])
    if enc_out != 2 * z_channels:
        raise ModelFileError(f"{source}: the encoder gives {enc_out} channels but the decoder takes {z_channels}; "
                             f"expected {2 * z_channels} (mean and log-variance, double_z)")  # fmt: skip
    embed_dim = int(require(state, "post_quant_conv.weight", source, _WHAT).shape[1])
    quant_conv = require(state, "quant_conv.weight", source, _WHAT)
    if quant_conv.shape[0] == embed_dim and quant_conv.shape[1] == enc_out:
        raise ModelFileError(f"{source} is a non-variational VAE (use_variational=False: quant_conv gives {embed_dim} "
                             "channels, not mean and log-variance); only the variational MAR VAE is supported")  # fmt: skip
    if tuple(quant_conv.shape[:2]) != (2 * embed_dim, enc_out):
        raise ModelFileError(f"{source}: quant_conv maps {quant_conv.shape[1]} -> {quant_conv.shape[0]} channels; expected "
                             f"{enc_out} -> {2 * embed_dim} (2 x embed_dim {embed_dim})")  # fmt: skip
    out_channels = int(require(state, "decoder.conv_out.weight", source, _WHAT).shape[0])
    if out_channels != in_channels:
        raise ModelFileError(f"{source}: the encoder reads {in_channels} image channels but the decoder writes {out_channels}")
    attn = {part: [i for i in range(levels) if any(k.startswith(f"{part}.{i}.attn.") for k in state)]
            for part in ("encoder.down", "decoder.up")}  # fmt: skip
    for part, found in attn.items():
        if found and found != [levels - 1]:
            raise ModelFileError(f"{source} has attention in {part} levels {found}; arvision's conv stacks support it "
                                 f"only at the lowest resolution (level {levels - 1})")  # fmt: skip
    mid = {part: f"{part}.mid.attn_1.norm.weight" in state for part in ("encoder", "decoder")}
    if mid["encoder"] != mid["decoder"]:
        raise ModelFileError(f"{source} has middle-block attention in the {'encoder' if mid['encoder'] else 'decoder'} "
                             "only; arvision's KL tokenizer has it in both or neither")  # fmt: skip
    try:
        return KLConfig(
            image_size=image_size, **arch, z_channels=z_channels, norm_groups=32, attn_lowest=bool(attn["encoder.down"]),
            decoder_attn_lowest=bool(attn["decoder.up"]), attn_mid=mid["encoder"],
            quant_conv_kernel=int(quant_conv.shape[-1]), embed_dim=embed_dim, scale_factor=MAR_LATENT_SCALE,
            clamp_output=False,
        )  # fmt: skip
    except ValueError as e:
        raise ModelFileError(f"{source}: the inferred architecture is not valid here ({e})") from None


def vae_from_mar_state(state_dict: dict[str, Tensor], *, image_size: int = 256, source: str = "the VAE",
                       device: str | torch.device = "cpu") -> KLTokenizer:  # fmt: skip
    """A :class:`KLTokenizer` with the weights of an official MAR VAE state dict (strict loading)."""
    cfg = infer_mar_vae(state_dict, image_size=image_size, source=source)
    with torch.device(device):
        tok = KLTokenizer(cfg)
    load_state_dict_checked(tok, mar_vae_state(state_dict), source=source)
    return tok.eval()


def load_mar_vae(path: str | os.PathLike, *, image_size: int | None = None, grid: int | None = None,
                 device: str | torch.device = "cpu") -> KLTokenizer:  # fmt: skip
    """Read an official MAR VAE file (``kl16.ckpt``: ``{"model": state_dict}``, read with
    ``weights_only=True``) and convert it. The tokenizer is built for ``image_size`` pixels, or for a
    ``grid`` x ``grid`` token grid (image size = grid x the VAE's downsampling), else for 256 px."""
    p = Path(path)
    state, source = read_checkpoint(p, what=_WHAT), f"'{p.name}'"
    if image_size is None:
        image_size = 256 if grid is None else grid * infer_mar_vae(state, source=source).downsample
    tok = vae_from_mar_state(state, image_size=image_size, source=source, device=device)
    c = tok.config
    tok.info = {
        "description": f"MAR KL VAE ({c.image_size} px -> {c.latent_size}x{c.latent_size} tokens of {c.embed_dim} dims, "
                       f"scale {c.scale_factor}) converted from the official checkpoint",
        "source": {"format": "LTH14/mar", "vae": p.name},
        "license": "MIT (LTH14/mar weights)",
    }  # fmt: skip
    return tok


def _check_kind(state: dict[str, Tensor], source: str) -> None:
    if any(k.startswith(("diffloss.", "encoder_blocks.", "decoder_blocks.")) for k in state) or "class_emb.weight" in state:
        raise ModelFileError(f"{source} is a MAR transformer checkpoint (mar_base/large/huge: blocks, diffloss, class_emb), "
                             f"not the VAE: expected {_WHAT}")  # fmt: skip
    if any(k.startswith("quantize.") for k in state):
        raise ModelFileError(f"{source} is a VQ tokenizer checkpoint (it has a codebook, 'quantize.*'), not a KL VAE: "
                             f"expected {_WHAT}; convert VQ models with `arvision convert var` or `llamagen`")  # fmt: skip
