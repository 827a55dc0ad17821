"""Official LlamaGen class-conditional checkpoints (FoundationVision/LlamaGen) -> a :class:`~arvision.Pipeline`.

    pipe = from_llamagen("vq_ds16_c2i.pt", "c2i_XL_384.pt")      # 384 px read from the file name
    pipe = from_llamagen("vq_ds16_c2i.pt", "gpt.pt", image_size=256)

What the tensors say (reference: ../shared/reference/llamagen.md):

* GPT: depth = number of ``layers.N``; width = ``tok_embeddings`` columns; vocabulary = its rows
  (= ``output`` rows); classes = ``cls_embedding.embedding_table`` rows - 1 (null class last);
  one class token (c2i). Heads: from a saved KV cache or ``freqs_cis`` when the file has them,
  else the official table B 12x768/12, L 24x1024/16, XL 36x1280/20, XXL 48x1536/24,
  3B 24x3200/32 (head_dim 100), else head_dim 64 with a warning (pass ``heads`` to be sure).
* Token grid: from ``freqs_cis`` if present; otherwise ``image_size`` / downsampling, where
  ``image_size`` is the override or the resolution in the GPT file name (``c2i_L_384.pt``).
  LlamaGen bakes the resolution into training (16x16 tokens at 256 px, 24x24 at 384 px with
  VQ-16), and the released 256 and 384 px files have identical shapes, so this cannot come from
  the weights.
* VQ: ch, ch_mult (so VQ-16 = 5 levels vs VQ-8 = 4), res blocks, z channels, codebook size and
  dim from the shapes; codes are l2-normalised (``codebook_l2_norm``, every release).

The converted pipeline samples with LlamaGen's convention by default: constant guidance scale 4.0
(``sample_c2i.py``), top-k 2000, top-p 1.0 (off), temperature 1.0; ``cfg_interval`` available.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from arvision.checkpoints import read_checkpoint
from arvision.convert.checkpoint import autoencoder_arch, count_indexed, require
from arvision.convert.keys import llamagen_gpt_state, llamagen_vq_state
from arvision.errors import ModelFileError
from arvision.generators import NextTokenConfig, NextTokenGenerator, SamplingConfig
from arvision.modeling import load_state_dict_checked
from arvision.pipeline import Pipeline
from arvision.presets import llamagen_backbone
from arvision.tokenizers import VQConfig, VQTokenizer

# (layers, width) -> heads of the GPT_models in autoregressive/models/gpt.py.
OFFICIAL_HEADS: dict[tuple[int, int], int] = {
    (12, 768): 12,  # GPT-B
    (24, 1024): 16,  # GPT-L
    (36, 1280): 20,  # GPT-XL
    (48, 1536): 24,  # GPT-XXL
    (24, 3200): 32,  # GPT-3B (head_dim 100)
    (48, 2560): 40,  # GPT-XXXL
    (22, 2048): 32,  # GPT-1B
    (32, 4096): 32,  # GPT-7B
}
LLAMAGEN_SAMPLING = SamplingConfig(cfg=4.0, cfg_schedule="constant", top_k=2000, top_p=1.0, temperature=1.0)
_VQ = "a LlamaGen VQ checkpoint (e.g. vq_ds16_c2i.pt)"
_GPT = "a LlamaGen class-conditional GPT checkpoint (e.g. c2i_B_256.pt)"


def infer_llamagen(vq: dict[str, Tensor], gpt: dict[str, Tensor], *, image_size: int | None = None,
                   heads: int | None = None, l2_norm: bool = True, sampling: SamplingConfig = LLAMAGEN_SAMPLING,
                   vq_source: str = "the VQ", gpt_source: str = "the GPT") -> tuple[VQConfig, NextTokenConfig]:  # fmt: skip
    """The tokenizer and generator configs of an official VQ + GPT pair of state dicts (official key
    names). ``image_size`` is required unless the GPT holds ``freqs_cis``; ``gpt_source`` may carry
    the file name, whose ``_256``/``_384``/``_512`` suffix is used when nothing else tells the size."""
    if "cls_embedding.embedding_table.weight" in vq and "encoder.conv_in.weight" in gpt:
        raise ModelFileError(f"{vq_source} is a GPT and {gpt_source} a VQ tokenizer: the two files are swapped")
    if any(k.startswith("cls_embedding.cap_proj.") for k in gpt):
        raise ModelFileError(f"{gpt_source} is a text-to-image GPT (caption projection); only class-conditional (c2i) models convert")
    # -- VQ ------------------------------------------------------------------------------------
    levels = count_indexed(vq, "encoder.conv_blocks")
    if levels == 0:
        require(vq, "encoder.conv_blocks.0.res.0.conv1.weight", vq_source, _VQ)
    if count_indexed(vq, "decoder.conv_blocks") != levels:
        raise ModelFileError(f"{vq_source}: encoder and decoder have different numbers of levels; not a VQModel layout arvision supports")
    ae = autoencoder_arch(llamagen_vq_state(vq, levels), vq_source, _VQ)
    downsample = 2 ** (levels - 1)
    # -- GPT -----------------------------------------------------------------------------------
    tok_emb = require(gpt, "tok_embeddings.weight", gpt_source, _GPT)
    vocab, width = int(tok_emb.shape[0]), int(tok_emb.shape[1])
    num_classes = int(require(gpt, "cls_embedding.embedding_table.weight", gpt_source, _GPT).shape[0]) - 1
    depth = count_indexed(gpt, "layers")
    if depth == 0:
        raise ModelFileError(f"{gpt_source} has no 'layers.N': it does not look like {_GPT}")
    wqkv = require(gpt, "layers.0.attention.wqkv.weight", gpt_source, _GPT)
    if wqkv.shape[0] != 3 * width:
        raise ModelFileError(f"{gpt_source} uses grouped-query attention (wqkv {tuple(wqkv.shape)}), which arvision does not support")
    heads = _heads(gpt, depth, width, heads, gpt_source)
    if ae["codebook_size"] != vocab:
        raise ModelFileError(
            f"{vq_source} and {gpt_source} are not a pair: the VQ has {ae['codebook_size']} codes, the GPT a vocabulary of {vocab}"
        )
    grid = _grid_size(gpt, image_size, downsample, gpt_source)
    backbone = llamagen_backbone(depth, width, heads)
    hidden = int(require(gpt, "layers.0.feed_forward.w1.weight", gpt_source, _GPT).shape[0])
    if hidden != backbone.mlp_hidden:
        raise ModelFileError(
            f"{gpt_source} has an FFN of width {hidden}, but LlamaGen's rule gives {backbone.mlp_hidden} for width {width} "
            "(custom ffn_dim_multiplier is not supported)"
        )
    tok_cfg = VQConfig(image_size=grid * downsample, **ae, l2_norm=l2_norm, clamp_output=False)
    gen_cfg = NextTokenConfig(transformer=backbone, vocab_size=vocab, num_classes=num_classes, grid_size=grid,
                              positions="rope2d", sampling=sampling)  # fmt: skip
    return tok_cfg, gen_cfg


def build_llamagen(tok_cfg: VQConfig, gen_cfg: NextTokenConfig, vq: dict[str, Tensor], gpt: dict[str, Tensor], *,
                   device: str | torch.device = "cpu", vq_source: str = "the VQ",
                   gpt_source: str = "the GPT") -> Pipeline:  # fmt: skip
    """Build the arvision models for these configs on ``device`` and load the official weights
    (strict: missing, unexpected or mis-shaped keys are listed in a :class:`ModelFileError`)."""
    with torch.device(device):
        tok = VQTokenizer(tok_cfg)
        gen = NextTokenGenerator(gen_cfg)
    load_state_dict_checked(tok, llamagen_vq_state(vq, len(tok_cfg.ch_mult)), source=vq_source)
    load_state_dict_checked(gen, llamagen_gpt_state(gpt), source=gpt_source)
    return Pipeline(tok, gen)


def from_llamagen(vq: str | os.PathLike, gpt: str | os.PathLike, *, image_size: int | None = None,
                  heads: int | None = None, l2_norm: bool = True, ema: bool = False,
                  device: str | torch.device = "cpu") -> Pipeline:  # fmt: skip
    """Convert an official LlamaGen VQ file and c2i GPT file into a :class:`~arvision.Pipeline`.

    Args:
        vq, gpt: local paths of e.g. ``vq_ds16_c2i.pt`` and ``c2i_B_256.pt``; training checkpoints
            (``{"model", "optimizer", "args", ...}``), DeepSpeed ``{"module"}`` and raw FSDP state
            dicts all work, read without running pickled code (see :func:`read_checkpoint`).
        image_size: output side in pixels (the GPT's training resolution: 256 or 384 for the
            releases). Needed when the file name does not end in ``_256``/``_384``/``_512``.
        heads: attention heads, for GPT sizes outside the official table.
        l2_norm: cosine code lookup (``codebook_l2_norm``; True in every release).
        ema: take ``ckpt["ema"]`` instead of ``ckpt["model"]``.
        device: where to build the models.
    """
    vq_p, gpt_p = Path(vq), Path(gpt)
    vq_state = read_checkpoint(vq_p, what=_VQ, ema=ema)
    gpt_state = read_checkpoint(gpt_p, what=_GPT, ema=ema)
    if image_size is None and "freqs_cis" not in gpt_state:
        image_size = image_size_from_name(gpt_p.name)
    src = dict(vq_source=f"'{vq_p.name}'", gpt_source=f"'{gpt_p.name}'")
    tok_cfg, gen_cfg = infer_llamagen(vq_state, gpt_state, image_size=image_size, heads=heads, l2_norm=l2_norm, **src)
    pipe = build_llamagen(tok_cfg, gen_cfg, vq_state, gpt_state, device=device, **src)
    t = gen_cfg.transformer
    pipe.generator.info = {
        "description": f"LlamaGen GPT ({t.depth} layers, width {t.width}) with VQ-{tok_cfg.downsample}, "
        f"{tok_cfg.image_size} px, converted from the official checkpoints",
        "source": {"format": "FoundationVision/LlamaGen", "vq": vq_p.name, "gpt": gpt_p.name},
    }
    return pipe


def image_size_from_name(name: str) -> int | None:
    """256 for ``c2i_B_256.pt``, 384 for ``c2i_XL_384.pt``; None when the name carries no size."""
    m = re.search(r"(?:^|[_\-.])(256|384|512|1024)(?=[_\-.]|$)", Path(name).stem)
    return int(m.group(1)) if m else None


# -- helpers -----------------------------------------------------------------------------------
def _heads(gpt: dict[str, Tensor], depth: int, width: int, given: int | None, source: str) -> int:
    found, how = None, ""
    cache = gpt.get("layers.0.attention.kv_cache.k_cache")  # (B, H, S, head_dim), saved after generate()
    if cache is not None and cache.dim() == 4:
        found, how = int(cache.shape[1]), "its KV-cache buffer"
    elif (f := gpt.get("freqs_cis")) is not None and f.dim() == 3:  # (T, head_dim / 2, 2)
        found, how = width // (2 * int(f.shape[1])), "its freqs_cis table"
    elif (depth, width) in OFFICIAL_HEADS:
        found, how = OFFICIAL_HEADS[(depth, width)], "the official GPT sizes"
    if given is not None:
        if found is not None and given != found:
            raise ModelFileError(f"heads={given} was given but {source} has {found} heads (from {how})")
        found = given
    elif found is None:
        if width % 64:
            raise ModelFileError(f"cannot infer the attention heads of {source} (width {width}, {depth} layers): pass heads=...")
        found = width // 64
        warnings.warn(
            f"{source} ({depth} layers, width {width}) is not an official LlamaGen size; assuming head_dim 64, i.e. "
            f"{found} heads. Pass heads=... (--heads) if it was trained with another number",
            stacklevel=3,
        )
    if width % found:
        raise ModelFileError(f"width {width} of {source} is not divisible by {found} heads")
    return found


def _grid_size(gpt: dict[str, Tensor], image_size: int | None, downsample: int, source: str) -> int:
    f = gpt.get("freqs_cis")
    from_table = None
    if f is not None:  # (cls_token_num + n*n, head_dim / 2, 2); c2i has one class token
        n = round((f.shape[0] - 1) ** 0.5)
        if n * n == f.shape[0] - 1:
            from_table = n
    if image_size is None:
        if from_table is None:
            raise ModelFileError(
                f"cannot tell the resolution of {source}: LlamaGen's weights do not store it (c2i_*_256 and c2i_*_384 have "
                "the same shapes). Pass image_size=256 or 384 (--image-size), the resolution the GPT was trained at"
            )
        return from_table
    if image_size % downsample:
        raise ModelFileError(f"image_size {image_size} is not a multiple of the VQ downsampling factor {downsample}")
    grid = image_size // downsample
    if from_table is not None and grid != from_table:
        raise ModelFileError(f"image_size {image_size} gives a {grid}x{grid} grid but {source} was set up for {from_table}x{from_table}")
    return grid
