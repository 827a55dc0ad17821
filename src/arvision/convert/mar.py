"""Official MAR checkpoints (LTH14/mar) -> an arvision :class:`~arvision.Pipeline`.

    pipe = from_mar("kl16.ckpt", "checkpoint-last.pth")   # the KL-16 VAE + mar_base/large/huge
    pipe.save_pretrained("mar-base")                       # arvision.load("mar-base") opens it again

The MAR file is what the official ``save_model`` writes, ``{"model": state, "model_ema": state}``
(training checkpoints also hold ``optimizer``/``args``, never unpickled as code); the EMA weights
are the ones the authors evaluate and sample with, so they are taken unless ``ema=False``.

Everything but the attention heads is inferred from the tensors: encoder / decoder depth
(``encoder_blocks.N`` / ``decoder_blocks.N``), widths (``z_proj``, ``decoder_embed``), MLP ratio,
token grid (``diffusion_pos_embed_learned``), buffer (the extra rows of
``encoder_pos_embed_learned``), classes (``class_emb``), the diffusion MLP (width, blocks). Heads
are fused into ``qkv``: the official sizes (width 768 -> 12 heads, 1024 and 1280 -> 16) are known,
others are passed as ``heads=(encoder, decoder)``. The sampling defaults are MAR's evaluation
settings: 64 steps (or one per token when the grid has fewer), guidance 3.0 on MAR's linear
schedule, temperature 1.0, 100 diffusion steps (``--num_sampling_steps``, not stored in the file).
"""

from __future__ import annotations

import math
import os
import re

import torch
from torch import Tensor

from arvision.checkpoints import read_checkpoint
from arvision.convert.checkpoint import count_indexed, require
from arvision.convert.mar_vae import load_mar_vae
from arvision.errors import ModelFileError
from arvision.generators.diffusion import DiffusionHeadConfig
from arvision.generators.mar import MarConfig, MarGenerator, mar_backbone
from arvision.modeling import load_state_dict_checked
from arvision.pipeline import Pipeline
from arvision.samplers.config import SamplingConfig

MAR_HEADS = {768: 12, 1024: 16, 1280: 16}  # mar_base, mar_large, mar_huge (encoder = decoder width)
_MAR = "a MAR checkpoint (checkpoint-last.pth of LTH14/mar: {'model', 'model_ema'})"


def mar_sampling(num_tokens: int) -> SamplingConfig:
    """MAR's evaluation settings for a grid of ``num_tokens`` tokens."""
    return SamplingConfig(cfg=3.0, cfg_schedule="mar-linear", num_steps=min(64, num_tokens), diffusion_steps=100)


def mar_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official MAR key names -> :class:`MarGenerator`'s (the null class joins ``class_emb`` as its last row)."""
    out = {}
    for k, v in state.items():
        if k == "fake_latent":
            continue
        k = re.sub(r"^(encoder|decoder)_blocks\.", r"\1.blocks.", k)
        k = re.sub(r"^(encoder|decoder)_norm\.", r"\1.norm.", k)
        k = re.sub(r"^diffloss\.", "head.", k)
        out[k] = v
    out["class_emb.weight"] = torch.cat([state["class_emb.weight"], state["fake_latent"].reshape(1, -1)])
    return out


def infer_mar(state: dict[str, Tensor], *, heads: tuple[int, int] | None = None, source: str = "the MAR file") -> MarConfig:
    """The :class:`MarConfig` of an official MAR state dict (official key names)."""
    for key in ("fake_latent", "class_emb.weight", "z_proj.weight", "decoder_embed.weight", "diffusion_pos_embed_learned",
                "encoder_pos_embed_learned", "diffloss.net.input_proj.weight", "diffloss.net.cond_embed.weight"):  # fmt: skip
        require(state, key, source, _MAR)
    enc_w, token_dim = state["z_proj.weight"].shape
    dec_w = state["decoder_embed.weight"].shape[0]
    L = state["diffusion_pos_embed_learned"].shape[1]
    side = math.isqrt(L)
    if side * side != L:
        raise ModelFileError(f"{source}: {L} token positions do not form a square grid")
    buffer = state["encoder_pos_embed_learned"].shape[1] - L
    if heads is None:
        if enc_w not in MAR_HEADS or dec_w not in MAR_HEADS:
            raise ValueError(f"{source} has widths {enc_w}/{dec_w}, not an official MAR size ({sorted(MAR_HEADS)}): "
                             "pass heads=(encoder heads, decoder heads) (--heads E,D)")  # fmt: skip
        heads = (MAR_HEADS[enc_w], MAR_HEADS[dec_w])

    def blocks(prefix: str, width: int, h: int):
        depth = count_indexed(state, f"{prefix}_blocks")
        if depth == 0:
            raise ModelFileError(f"{source} has no '{prefix}_blocks.N' tensors: it does not look like {_MAR}")
        hidden = require(state, f"{prefix}_blocks.0.mlp.fc1.weight", source, _MAR).shape[0]
        if width % h:
            raise ValueError(f"{prefix} width {width} is not divisible by {h} heads")
        return mar_backbone(depth, width, h).replace(mlp_ratio=hidden / width)

    head = DiffusionHeadConfig(token_dim=token_dim, cond_dim=dec_w, width=state["diffloss.net.input_proj.weight"].shape[0],
                               depth=count_indexed(state, "diffloss.net.res_blocks"), sampling_steps=100)  # fmt: skip
    return MarConfig(transformer=blocks("encoder", enc_w, heads[0]), decoder=blocks("decoder", dec_w, heads[1]),
                     num_classes=state["class_emb.weight"].shape[0], grid_size=side, token_dim=token_dim,
                     buffer_size=buffer, head=head, sampling=mar_sampling(L))  # fmt: skip


def build_mar(state: dict[str, Tensor], config: MarConfig, source: str = "the MAR file") -> MarGenerator:
    model = MarGenerator(config)
    load_state_dict_checked(model, mar_state(state), source=source)
    return model.eval()


def from_mar(vae: str | os.PathLike, mar: str | os.PathLike, *, ema: bool = True,
             heads: tuple[int, int] | None = None, image_size: int | None = None) -> Pipeline:  # fmt: skip
    """A pipeline from the official KL VAE file (``kl16.ckpt``) and a MAR checkpoint.

    Args:
        ema: the ``model_ema`` weights (what MAR samples with); False = ``model``.
        heads: attention heads (encoder, decoder) for non-official widths.
        image_size: output side in pixels (default: token grid x VAE downsampling).
    """
    state = read_checkpoint(mar, what=_MAR, key="model_ema" if ema else "model")
    config = infer_mar(state, heads=heads, source=str(mar))
    tokenizer = load_mar_vae(vae, image_size=image_size, grid=config.grid_size)  # by default sized to MAR's token grid
    if tokenizer.layout.code_dim != config.token_dim:
        raise ValueError(f"{mar} reads {config.token_dim}-channel tokens but the VAE {vae} gives {tokenizer.layout.code_dim}: "
                         "this MAR model was trained with another VAE (MAR with patch size > 1 is not supported)")  # fmt: skip
    if tokenizer.layout.side != config.grid_size:
        raise ValueError(f"{mar} works on a {config.grid_size}x{config.grid_size} token grid but the VAE {vae} gives "
                         f"{tokenizer.layout.describe()} at image size {tokenizer.config.image_size}; pass image_size")  # fmt: skip
    generator = build_mar(state, config, str(mar))
    generator.info = {"description": f"MAR ({config.transformer.depth}+{config.decoder.depth} blocks, width {config.transformer.width}) "
                                     "converted from the official checkpoint",
                      "source": {"format": "LTH14/mar", "vae": os.path.basename(vae), "mar": os.path.basename(mar),
                                 "weights": "model_ema" if ema else "model"}}  # fmt: skip
    return Pipeline(tokenizer, generator)
