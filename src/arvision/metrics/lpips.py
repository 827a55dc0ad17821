"""LPIPS perceptual distance (Zhang et al. 2018, arXiv:1801.03924), VGG-16 variant, loaded offline.

The network: images in [-1, 1] are shifted and scaled per channel, passed through VGG-16's
convolutional stack, and read after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3. Each read-out
is normalised to unit length over channels; the squared difference between the two images is
weighted per channel by a learned non-negative 1x1 conv ("lin" layer), averaged over space and
summed over the five read-outs. Grayscale images are repeated to three channels.

Nothing is downloaded: :func:`load_lpips` takes local files, in the layouts the weights are
published in: torchvision's VGG-16 state dict (``features.N.weight``; ``classifier.*`` is ignored)
and the LPIPS ``vgg.pth`` lin layers (``linK.model.1.weight``), as two files or merged into one
(``.pth`` read with ``weights_only=True``, or ``.safetensors``). LPIPS's own ``net.sliceK.N.*``
names of the VGG layers are accepted too.

Legend: B batch, C channels, H/W image side.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from arvision.checkpoints import read_checkpoint
from arvision.errors import ModelFileError

# VGG-16 "D": conv widths, "M" = 2x2 max pool. Indices of ``features`` follow torchvision.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # features indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_WIDTHS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_WHAT = ("LPIPS weights: torchvision's VGG-16 weights and LPIPS's vgg.pth (lin layers), or one file holding both "
         "(nothing is downloaded)")


class LPIPS(nn.Module):
    """``lpips(x, y) -> (B,)`` distances; x, y (B, C, H, W) in [-1, 1], C in {1, 3}. Frozen."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in _WIDTHS])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always frozen (the lin layers' dropout is off, as at evaluation)

    def _taps(self, x_BCHW: Tensor) -> list[Tensor]:
        if x_BCHW.shape[1] == 1:
            x_BCHW = x_BCHW.expand(-1, 3, -1, -1)
        h = (x_BCHW - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10))
                if i == _TAPS[-1]:
                    break
        return out

    def forward(self, x_BCHW: Tensor, y_BCHW: Tensor) -> Tensor:
        if x_BCHW.shape != y_BCHW.shape or x_BCHW.ndim != 4 or x_BCHW.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS compares two (B, 1 or 3, H, W) batches of one shape, got {tuple(x_BCHW.shape)} "
                             f"and {tuple(y_BCHW.shape)}")  # fmt: skip
        if min(x_BCHW.shape[-2:]) < 16:
            raise ValueError(f"LPIPS needs images of at least 16x16 (VGG-16 halves them four times), got {tuple(x_BCHW.shape[-2:])}")
        total = x_BCHW.new_zeros(x_BCHW.shape[0])
        for lin, a, b in zip(self.lins, self._taps(x_BCHW), self._taps(y_BCHW)):
            total = total + lin((a - b).square()).mean(dim=(1, 2, 3))
        return total


def _rename(key: str) -> str | None:
    """A published key -> this module's key (None: not part of LPIPS, e.g. VGG's classifier)."""
    key = key.removeprefix("net.")
    if m := re.fullmatch(r"slice\d\.(\d+)\.(weight|bias)", key):
        return f"features.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"lin(\d)\.model\.1\.weight", key):
        return f"lins.{m[1]}.weight"
    if re.fullmatch(r"features\.\d+\.(weight|bias)", key):
        return key
    return None


def load_lpips(paths: str | os.PathLike | Sequence[str | os.PathLike], device: str | torch.device = "cpu") -> LPIPS:
    """An :class:`LPIPS` network from local weights files (see the module docstring).

    Raises:
        ModelFileError: a file is missing or unreadable, or the files are not VGG-16 + LPIPS lin
            weights (missing layers or wrong shapes are listed).
    """
    files = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    state: dict[str, Tensor] = {}
    for f in files:
        # the project's safe reader: missing, empty, truncated files and pickled objects are clear errors
        for k, v in read_checkpoint(f, what=_WHAT).items():
            if (name := _rename(k)) is not None:
                state[name] = v
    net = LPIPS()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or wrong:
        have = "VGG-16 conv layers" if any(k.startswith("features.") for k in state) else "no VGG-16 conv layers"
        lins = "LPIPS lin layers" if any(k.startswith("lins.") for k in state) else "no LPIPS lin layers"
        problem = (f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})" if missing else "") + \
                  ("; " if missing and wrong else "") + (f"wrong shapes: {', '.join(wrong[:3])}" if wrong else "")  # fmt: skip
        raise ModelFileError(f"{', '.join(map(str, files))}: not the weights of LPIPS's VGG-16 network ({have}, {lins}): "
                             f"{problem}. Expected torchvision's vgg16 weights (features.N.*) and LPIPS's vgg.pth "
                             "(linK.model.1.weight)")  # fmt: skip
    if any((state[f"lins.{i}.weight"] < 0).any() for i in range(len(_WIDTHS))):
        raise ModelFileError(f"{', '.join(map(str, files))}: LPIPS lin weights must be non-negative; this is not an LPIPS file")
    net.load_state_dict(state)
    return net.to(device)
