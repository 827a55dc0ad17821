"""Reading an official checkpoint's architecture from its state dict: required keys with a clear
error, counts of indexed blocks, the conv autoencoder's levels and widths. (Reading the files
themselves safely is :mod:`arvision.checkpoints`.)"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from arvision.errors import ModelFileError


def require(state: dict[str, Tensor], key: str, source: str, what: str) -> Tensor:
    """``state[key]``, or a clear error saying that ``source`` does not look like ``what``."""
    if key not in state:
        raise ModelFileError(f"{source} has no tensor '{key}': it does not look like {what} ({len(state)} tensors, e.g. "
                             f"{', '.join(list(state)[:4])})")  # fmt: skip
    return state[key]


def count_indexed(state: dict[str, Tensor], prefix: str) -> int:
    """Number of sub-modules ``prefix.0.``, ``prefix.1.``, ... (an error if the indices have gaps)."""
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
    if idx and idx != set(range(max(idx) + 1)):
        raise ModelFileError(f"'{prefix}.N' sub-modules have gaps ({sorted(idx)}): the checkpoint is incomplete")
    return len(idx)


def encoder_levels(state: dict[str, Tensor], source: str, what: str) -> dict[str, Any]:
    """``in_channels``, ``ch``, ``ch_mult`` and ``num_res_blocks`` of a conv encoder (taming / LDM key
    names ``encoder.conv_in``, ``encoder.down.N.block.M``), from the tensor shapes."""
    conv_in = require(state, "encoder.conv_in.weight", source, what)
    ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    levels = count_indexed(state, "encoder.down")
    if levels == 0:
        raise ModelFileError(f"{source} has no encoder levels ('encoder.down.N'): it does not look like {what}")
    ch_mult = []
    for i in range(levels):
        width = int(require(state, f"encoder.down.{i}.block.0.conv1.weight", source, what).shape[0])
        if width % ch:
            raise ModelFileError(f"{source}: encoder level {i} has width {width}, not a multiple of ch={ch}")
        ch_mult.append(width // ch)
    return dict(in_channels=in_channels, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=count_indexed(state, "encoder.down.0.block"))


def autoencoder_arch(state: dict[str, Tensor], source: str, what: str) -> dict[str, Any]:
    """Conv autoencoder sizes of a state dict in arvision's (= VAR's / taming's) key names:
    the keyword arguments of :class:`~arvision.tokenizers.base.AutoencoderConfig` that the
    tensors determine (``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``, ``in_channels``,
    ``attn_lowest``, ``attn_mid``, ``quant_conv_kernel``, ``codebook_size``, ``codebook_dim``)."""
    arch = encoder_levels(state, source, what)
    levels = len(arch["ch_mult"])
    z_channels = require(state, "encoder.conv_out.weight", source, what).shape[0]
    codebook = require(state, "quantize.embedding.weight", source, what)
    quant_conv = require(state, "quant_conv.weight", source, what)
    if quant_conv.shape[1] != z_channels or quant_conv.shape[0] != codebook.shape[1]:
        raise ModelFileError(
            f"{source}: quant_conv maps {quant_conv.shape[1]} -> {quant_conv.shape[0]} channels, but the encoder gives "
            f"{z_channels} and the codebook has dim {codebook.shape[1]}"
        )
    return dict(
        **arch, z_channels=int(z_channels), attn_lowest=any(k.startswith(f"encoder.down.{levels - 1}.attn.") for k in state),
        attn_mid="encoder.mid.attn_1.norm.weight" in state, quant_conv_kernel=int(quant_conv.shape[-1]),
        codebook_size=int(codebook.shape[0]), codebook_dim=int(codebook.shape[1]),
    )  # fmt: skip
