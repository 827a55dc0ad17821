"""Official VAR checkpoints (FoundationVision/VAR) -> an arvision :class:`~arvision.Pipeline`.

    pipe = from_var("vae_ch160v4096z32.pth", "var_d16.pth")
    pipe.save_pretrained("var-d16")            # arvision.load("var-d16") opens it again

Everything is inferred from the tensors (reference: ../shared/reference/var.md):

* depth = number of ``blocks.N``; width C = ``class_emb`` columns; classes = its rows - 1 (the
  last row is the null class); vocabulary = ``head`` rows; code dim = ``word_embed`` columns;
* heads = ``blocks.0.attn.scale_mul_1H11`` (1, H, 1, 1) (cosine attention, every released
  model); without it, VAR's rule heads = depth (C = 64 * depth);
* patch_nums from the ``lvl_1L`` buffer (scale id of every position), else from the length of
  ``pos_1LC``: 680 -> the 256 px schedule, 2240 -> 512 px, 9451 -> 1024 px;
* shared AdaLN (VAR-d36) = presence of ``shared_ada_lin``;
* VAE: ch, ch_mult, res blocks, z channels, codebook from the shapes; phi sharing from the
  ``quantize.quant_resi`` keys (``qresi_ls.K`` -> K shared, ``qresi`` -> one, ``N`` -> one per
  scale, none -> identity); image side = VAE downsampling x last patch size.

The converted pipeline samples with VAR's convention by default: guidance ramping linearly over
the scales (``cfg_schedule="linear"``, cfg 1.5), top-k 900, top-p 0.96 (the FID setting of the
README); every option can be overridden per call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from arvision.checkpoints import read_checkpoint
from arvision.convert.checkpoint import autoencoder_arch, count_indexed, require
from arvision.convert.keys import var_state, var_vae_state
from arvision.errors import ModelFileError
from arvision.generators import NextScaleConfig, NextScaleGenerator, SamplingConfig
from arvision.modeling import load_state_dict_checked
from arvision.pipeline import Pipeline
from arvision.presets import var_backbone
from arvision.tokenizers import MultiScaleVQConfig, MultiScaleVQTokenizer

# Scale schedules of the official code, by sequence length L = sum(pn^2).
PATCH_NUMS_BY_LENGTH: dict[int, tuple[int, ...]] = {
    680: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),  # 256 px (var_d16 ... var_d30)
    2240: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),  # 512 px (var_d36)
    9451: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),  # 1024 px (--pn=1024)
}
VAR_SAMPLING = SamplingConfig(cfg=1.5, cfg_schedule="linear", top_k=900, top_p=0.96)
_VAE = "a VAR VQVAE checkpoint (e.g. vae_ch160v4096z32.pth)"
_VAR = "a VAR transformer checkpoint (e.g. var_d16.pth)"


def infer_var(vae: dict[str, Tensor], var: dict[str, Tensor], *, depth: int | None = None, heads: int | None = None,
              patch_nums: Sequence[int] | None = None, shared_aln: bool | None = None, image_size: int | None = None,
              quant_resi: float = 0.5, sampling: SamplingConfig = VAR_SAMPLING, vae_source: str = "the VAE",
              var_source: str = "the VAR") -> tuple[MultiScaleVQConfig, NextScaleConfig]:  # fmt: skip
    """The tokenizer and generator configs of an official VQVAE + VAR pair of state dicts (official key
    names). Overrides that the tensors determine (``depth``, ``shared_aln``, ``patch_nums`` when
    ``lvl_1L`` is present) are checked against them; the others fill in what the tensors cannot say."""
    _check_not_swapped(vae, var, vae_source, var_source)
    # -- transformer ---------------------------------------------------------------------------
    class_emb = require(var, "class_emb.weight", var_source, _VAR)
    width, num_classes = int(class_emb.shape[1]), int(class_emb.shape[0]) - 1
    n_blocks = count_indexed(var, "blocks")
    if n_blocks == 0:
        raise ModelFileError(f"{var_source} has no 'blocks.N' layers: it does not look like {_VAR}")
    if depth is not None and depth != n_blocks:
        raise ModelFileError(f"depth={depth} was given but {var_source} has {n_blocks} blocks")
    has_shared = "shared_ada_lin.1.weight" in var
    if shared_aln is not None and shared_aln != has_shared:
        raise ModelFileError(f"shared_aln={shared_aln} was given but {var_source} {'has' if has_shared else 'has no'} shared_ada_lin")
    scale_mul = var.get("blocks.0.attn.scale_mul_1H11")
    if scale_mul is not None:  # attn_l2_norm=True: one learnable temperature per head
        if heads is not None and heads != scale_mul.shape[1]:
            raise ModelFileError(f"heads={heads} was given but {var_source} has {scale_mul.shape[1]} attention heads")
        heads = int(scale_mul.shape[1])
    elif heads is None:
        heads = n_blocks  # VAR's rule: heads = depth, width = 64 * depth
    if width % heads:
        raise ModelFileError(f"width {width} of {var_source} is not divisible by {heads} heads; pass heads=...")
    vocab = int(require(var, "head.weight", var_source, _VAR).shape[0])
    code_dim = int(require(var, "word_embed.weight", var_source, _VAR).shape[1])
    pn = _patch_nums(var, patch_nums, var_source)
    backbone = var_backbone(n_blocks, width, heads, shared_adaln=has_shared)
    if scale_mul is None:  # attn_l2_norm=False: plain attention with VAR's extra 0.25
        backbone = backbone.replace(attention="plain", attn_scale_mult=0.25)
    hidden = int(require(var, "blocks.0.ffn.fc1.weight", var_source, _VAR).shape[0])
    if hidden != backbone.mlp_hidden:
        backbone = backbone.replace(mlp_ratio=hidden / width)
    # -- VAE -----------------------------------------------------------------------------------
    ae = autoencoder_arch(vae, vae_source, _VAE)
    if ae["codebook_size"] != vocab or ae["codebook_dim"] != code_dim:
        raise ModelFileError(
            f"{vae_source} and {var_source} are not a pair: the VAE has a codebook of {ae['codebook_size']} codes of dim "
            f"{ae['codebook_dim']}, the VAR predicts {vocab} tokens and embeds codes of dim {code_dim}"
        )
    share, quant_resi = _phi_sharing(vae, len(pn), quant_resi, vae_source)
    side = 2 ** (len(ae["ch_mult"]) - 1) * pn[-1]
    if image_size is not None and image_size != side:
        raise ModelFileError(
            f"image_size={image_size} does not fit: the VAE downsamples by {2 ** (len(ae['ch_mult']) - 1)} and the last "
            f"scale is {pn[-1]}x{pn[-1]}, i.e. {side} px (pass patch_nums for another resolution)"
        )
    tok_cfg = MultiScaleVQConfig(image_size=side, **ae, patch_nums=pn, quant_resi=quant_resi, share_quant_resi=share)
    gen_cfg = NextScaleConfig(transformer=backbone, vocab_size=vocab, num_classes=num_classes, patch_nums=pn,
                              code_dim=code_dim, sampling=sampling)  # fmt: skip
    return tok_cfg, gen_cfg


def build_var(tok_cfg: MultiScaleVQConfig, gen_cfg: NextScaleConfig, vae: dict[str, Tensor], var: dict[str, Tensor], *,
              device: str | torch.device = "cpu", vae_source: str = "the VAE",
              var_source: str = "the VAR") -> Pipeline:  # fmt: skip
    """Build the arvision models for these configs on ``device`` and load the official weights
    (strict: missing, unexpected or mis-shaped keys are listed in a :class:`ModelFileError`)."""
    with torch.device(device):
        tok = MultiScaleVQTokenizer(tok_cfg)
        gen = NextScaleGenerator(gen_cfg)
    load_state_dict_checked(tok, var_vae_state(vae), source=vae_source)
    load_state_dict_checked(gen, var_state(var), source=var_source)
    return Pipeline(tok, gen)


def from_var(vae: str | os.PathLike, var: str | os.PathLike, *, depth: int | None = None, heads: int | None = None,
             patch_nums: Sequence[int] | None = None, shared_aln: bool | None = None, image_size: int | None = None,
             quant_resi: float = 0.5, ema: bool = False, device: str | torch.device = "cpu") -> Pipeline:  # fmt: skip
    """Convert an official VQVAE file and VAR file into a :class:`~arvision.Pipeline`.

    Args:
        vae, var: local paths of e.g. ``vae_ch160v4096z32.pth`` and ``var_d16.pth`` (read with
            :func:`~arvision.convert.read_checkpoint`: ``weights_only``, containers unwrapped).
        depth, heads, patch_nums, shared_aln, image_size: overrides; the tensors decide these
            (see the module docstring), and a given value that contradicts them is an error.
            ``patch_nums`` is needed only for a custom scale schedule without the ``lvl_1L`` buffer.
        quant_resi: the VAE's phi mixing ratio (not stored in the file; 0.5 in every release).
        ema: take ``ckpt["ema"]`` instead of the regular weights when a file holds both.
        device: where to build the models.
    """
    vae_p, var_p = Path(vae), Path(var)
    vae_state = read_checkpoint(vae_p, what=_VAE, ema=ema)
    var_state_ = read_checkpoint(var_p, what=_VAR, ema=ema)
    src = dict(vae_source=f"'{vae_p.name}'", var_source=f"'{var_p.name}'")
    tok_cfg, gen_cfg = infer_var(vae_state, var_state_, depth=depth, heads=heads, patch_nums=patch_nums,
                                 shared_aln=shared_aln, image_size=image_size, quant_resi=quant_resi, **src)  # fmt: skip
    pipe = build_var(tok_cfg, gen_cfg, vae_state, var_state_, device=device, **src)
    t = gen_cfg.transformer
    pipe.generator.info = {
        "description": f"VAR-d{t.depth} (width {t.width}, {tok_cfg.image_size} px) converted from the official checkpoints",
        "source": {"format": "FoundationVision/VAR", "vae": vae_p.name, "var": var_p.name},
        "license": "MIT (FoundationVision/VAR weights)",
    }
    return pipe


# -- helpers -----------------------------------------------------------------------------------
def _check_not_swapped(vae: dict, var: dict, vae_source: str, var_source: str) -> None:
    if "class_emb.weight" in vae and "encoder.conv_in.weight" in var:
        raise ModelFileError(f"{vae_source} is a VAR transformer and {var_source} a VQVAE: the two files are swapped")


def _patch_nums(var: dict[str, Tensor], given: Sequence[int] | None, source: str) -> tuple[int, ...]:
    L = int(require(var, "pos_1LC", source, _VAR).shape[1])
    levels = int(require(var, "lvl_embed.weight", source, _VAR).shape[0])
    lvl = var.get("lvl_1L")
    found: tuple[int, ...] | None = None
    if lvl is not None and lvl.device.type != "meta":  # the scale id of every position
        counts = torch.bincount(lvl.flatten().long()).tolist()
        roots = [round(c**0.5) for c in counts]
        if all(r * r == c for r, c in zip(roots, counts)) and all(c > 0 for c in counts):
            found = tuple(roots)
    pn = tuple(int(p) for p in given) if given is not None else found or PATCH_NUMS_BY_LENGTH.get(L)
    if pn is None:
        raise ModelFileError(
            f"cannot infer the scale schedule of {source}: it has {L} positions over {levels} scales, which matches no "
            f"official schedule ({', '.join(f'{k}: {v}' for k, v in PATCH_NUMS_BY_LENGTH.items())}); "
            "pass patch_nums=(1, 2, ...) (--patch-nums 1,2,...)"
        )
    if found is not None and pn != found:
        raise ModelFileError(f"patch_nums={pn} was given but the lvl_1L buffer of {source} says {found}")
    if sum(p * p for p in pn) != L or len(pn) != levels:
        raise ModelFileError(
            f"patch_nums {pn} ({len(pn)} scales, {sum(p * p for p in pn)} positions) do not fit {source}, which has "
            f"{levels} scales and {L} positions"
        )
    return pn


def _phi_sharing(vae: dict[str, Tensor], num_scales: int, quant_resi: float, source: str) -> tuple[int, float]:
    """(share_quant_resi, quant_resi) from the ``quantize.quant_resi`` keys."""
    if (k := count_indexed(vae, "quantize.quant_resi.qresi_ls")) > 0:
        if k == 1:  # VAR builds qresi_ls only for K >= 2; K = 1 would be PhiShared
            raise ModelFileError(f"{source}: one partially shared phi (qresi_ls.0) is not a layout the official VAE builds")
        return k, quant_resi
    if "quantize.quant_resi.qresi.weight" in vae:
        return 1, quant_resi
    if (k := count_indexed(vae, "quantize.quant_resi")) > 0:
        if k != num_scales:
            raise ModelFileError(f"{source} has {k} unshared phi convs but the schedule has {num_scales} scales")
        return 0, quant_resi
    return 4, 0.0  # no phi weights: quant_resi ~ 0, phi is the identity
