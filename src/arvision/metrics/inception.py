"""The FID Inception-v3 (TF graph of 2015-12-05) in pure PyTorch, loaded from a local weight file.

This is the network behind every published FID, IS, KID and precision/recall number: pool3
(2048-d) features and 1008-way logits, with TF1's bilinear resize to 299x299 and ``(x-128)/128``
normalisation (``preprocess="tf"``, identical to torch-fidelity and the TF reference code).
``preprocess="pytorch-fid"`` reproduces pytorch-fid's PyTorch resize and ``2x-1`` normalisation
instead, which is *not* numerically TF-compatible (kept to compare with numbers made by it).

Weights are never downloaded. Both published files hold the same tensors under the same names
(torchvision's ``Inception3`` names); either loads:

- torch-fidelity: ``weights-inception-2015-12-05-6726825d.pth``
- pytorch-fid:    ``pt_inception-2015-12-05-6726825d.pth``

Pass the path explicitly or set ``ARVISION_INCEPTION_WEIGHTS``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision.errors import ModelFileError

WEIGHT_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_ENV = "ARVISION_INCEPTION_WEIGHTS"
FEATURE_NAMES = ("64", "192", "768", "2048", "logits_unbiased", "logits")
Preprocess = Literal["tf", "pytorch-fid"]


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, as in the TF graph) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b/5c/5d
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)  # fmt: skip


class InceptionB(nn.Module):  # Mixed_6a: grid reduction 35 -> 17
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)  # fmt: skip


class InceptionC(nn.Module):  # Mixed_6b..6e: factorised 7x7
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a: grid reduction 17 -> 8
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (average-pool branch) and Mixed_7c (max-pool branch)
    def __init__(self, cin: int, pool: Literal["avg", "max"]) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pooled),
        ], 1)  # fmt: skip


def tf_resize_299(x_BCHW: Tensor) -> Tensor:
    """TF1 ``ResizeBilinear`` to 299x299 (no half-pixel centres, no antialiasing), bit-exact.

    Source positions are ``i * float32(n_in / 299)``, computed in the input's precision (float32
    as in the TF graph; float64 keeps the float32-rounded scale); the result is neither rounded nor
    clamped. At 299x299 it is the identity.
    """
    h, w = x_BCHW.shape[-2:]
    pos_dtype = torch.float64 if x_BCHW.dtype == torch.float64 else torch.float32

    def axis(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        scale = torch.tensor(n_in / 299, dtype=torch.float32).to(pos_dtype)
        pos = torch.arange(299, dtype=pos_dtype) * scale
        lo = pos.trunc()
        frac = (pos - lo).to(x_BCHW.dtype)
        lo = lo.long()
        return lo, (lo + 1).clamp(max=n_in - 1), frac

    ly, hy, fy = (t.to(x_BCHW.device) for t in axis(h))
    lx, hx, fx = (t.to(x_BCHW.device) for t in axis(w))
    top_rows, bot_rows = x_BCHW[..., ly, :], x_BCHW[..., hy, :]
    top = top_rows[..., lx] + (top_rows[..., hx] - top_rows[..., lx]) * fx
    bot = bot_rows[..., lx] + (bot_rows[..., hx] - bot_rows[..., lx]) * fx
    return top + (bot - top) * fy[:, None]


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the TF FID graph; ``forward`` returns the features named in ``FEATURE_NAMES``.

    Input: ``torch.uint8`` images (B, 3, H, W), RGB, any size (grey (B, 1, H, W) is repeated to RGB).
    Float input must be in [0, 1] (as arvision pipelines return images) and is mapped to 0..255.
    """

    def __init__(self, *, preprocess: Preprocess = "tf") -> None:
        super().__init__()
        if preprocess not in ("tf", "pytorch-fid"):
            raise ValueError(f"preprocess must be 'tf' or 'pytorch-fid', got {preprocess!r}")
        self.preprocess = preprocess
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)
        self.eval()

    def prepare(self, images: Tensor) -> Tensor:
        """Resize and normalise ``images`` to the network's (B, 3, 299, 299) input."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception takes (B, 3, H, W) RGB images (uint8 0..255 or float in [0, 1]), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        dtype = self.fc.weight.dtype
        x = images.to(self.fc.weight.device)
        x = x.to(dtype) if x.dtype == torch.uint8 else x.to(dtype) * 255
        if self.preprocess == "tf":
            x = (tf_resize_299(x) - 128) / 128
        else:
            x = 2 * F.interpolate(x / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
        channels_last = self.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def forward(self, images: Tensor, names: tuple[str, ...] = ("2048",)) -> dict[str, Tensor]:
        unknown = set(names) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown Inception features {sorted(unknown)}; choose from {FEATURE_NAMES}")
        out: dict[str, Tensor] = {}
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(self.prepare(images))))
        x = F.max_pool2d(x, 3, stride=2)
        out["64"] = x.mean((2, 3))
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        out["192"] = x.mean((2, 3))
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        out["768"] = x.mean((2, 3))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool3 = x.mean((2, 3))
        out["2048"] = pool3
        out["logits_unbiased"] = pool3 @ self.fc.weight.T
        out["logits"] = out["logits_unbiased"] + self.fc.bias
        return {k: out[k].float() for k in names}


def _pytorch_fid_wrapper_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """pytorch-fid's ``InceptionV3`` wrapper regroups the modules into ``blocks.i.j``; undo that."""
    groups = [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"], ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
              ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
              ["Mixed_7a", "Mixed_7b", "Mixed_7c"]]  # fmt: skip
    out = {}
    for k, v in state.items():
        m = re.match(r"blocks\.(\d+)\.(\d+)\.(.*)", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            if i >= len(groups) or j >= len(groups[i]):
                continue  # the wrapper's parameter-free pooling layers
            k = f"{groups[i][j]}.{m.group(3)}"
        out[k] = v
    return out


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The weight file to use: ``path``, else ``$ARVISION_INCEPTION_WEIGHTS``; a clear error otherwise."""
    hint = (f"Download one of {' / '.join(WEIGHT_FILES)} (the same bytes, sha256 6726825d...) on a machine with network, "
            f"then pass --inception-weights FILE or set {WEIGHTS_ENV}. arvision never downloads it.")  # fmt: skip
    if path is None:
        path = os.environ.get(WEIGHTS_ENV)
        if not path:
            raise ModelFileError(f"no FID Inception weights given. {hint}")
    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / f for f in WEIGHT_FILES if (p / f).is_file()]
        if not found:
            raise ModelFileError(f"{p} holds none of {', '.join(WEIGHT_FILES)}. {hint}")
        p = found[0]
    if not p.is_file():
        raise ModelFileError(f"FID Inception weights not found: {p}. {hint}")
    return p


def load_inception(path: str | os.PathLike | None = None, *, preprocess: Preprocess = "tf",
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> FIDInceptionV3:  # fmt: skip
    """Build :class:`FIDInceptionV3` from a local torch-fidelity or pytorch-fid weight file."""
    p = find_inception_weights(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise ModelFileError(f"{p} is not a readable PyTorch weight file ({type(e).__name__}: {e}); "
                             f"it may be truncated: download {WEIGHT_FILES[0]} again") from None  # fmt: skip
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelFileError(f"{p} does not hold a state dict (found {type(state).__name__})")
    state = _pytorch_fid_wrapper_names(state)
    model = FIDInceptionV3(preprocess=preprocess)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    bad = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
           for k in expected if k in state and state[k].shape != expected[k].shape]  # fmt: skip
    if missing or unexpected or bad:
        parts = [f"{len(missing)} missing: {', '.join(missing[:6])}" if missing else "",
                 f"{len(unexpected)} unexpected: {', '.join(unexpected[:6])}" if unexpected else "",
                 f"wrong shapes: {', '.join(bad[:6])}" if bad else ""]  # fmt: skip
        raise ModelFileError(f"{p} is not the FID Inception (2015-12-05) weight file: "
                             + "; ".join(x for x in parts if x) + f". Expected {' or '.join(WEIGHT_FILES)}.")  # fmt: skip
    for k, v in expected.items():
        src = state.get(k)
        if src is not None:
            v.copy_(src.to(v.dtype) if v.is_floating_point() else src)
        elif k.endswith("num_batches_tracked"):
            v.zero_()
    model = model.to(device=device, dtype=dtype).eval()
    if model.fc.weight.device.type == "cpu":  # ~25% faster convolutions on CPU; changes features by ~1e-5 relative
        model = model.to(memory_format=torch.channels_last)
    return model
