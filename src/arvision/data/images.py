"""Image <-> tensor conversion, resizing, grids and PNG output (no torchvision).

Tensors are float (C, H, W) or (B, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from arvision.errors import DataError
from arvision.outputs import atomic_path


def pil_to_tensor(img: Image.Image, channels: int = 3) -> Tensor:
    """PIL image -> (channels, H, W) float in [-1, 1]; any mode (palette, RGBA, 16-bit) is converted."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bit before converting
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "P") and channels == 3:
        img = img.convert("RGBA")
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).float().div_(127.5).sub_(1.0)
    return t.unsqueeze(0) if channels == 1 else t.permute(2, 0, 1).contiguous()


def tensor_to_pil(x: Tensor) -> Image.Image:
    """(C, H, W) tensor in [-1, 1] with C in {1, 3} -> PIL image ("L" or "RGB")."""
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1 or 3, H, W) tensor, got shape {tuple(x.shape)}")
    arr = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0].numpy(), mode="L")
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def resize_center_crop(img: Image.Image, size: int, *, nearest: bool = False) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to size x size.

    Large downscales first halve with a box filter (as ADM's ``center_crop_arr``) so that the
    final bicubic resize does not alias. ``nearest=True`` (masks) takes the same steps with
    nearest-neighbour resampling, so a mask lands on the same pixels as its image.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    halve, final = (Image.NEAREST, Image.NEAREST) if nearest else (Image.BOX, Image.BICUBIC)
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=halve)
    scale = size / min(img.size)
    if scale != 1:
        img = img.resize(tuple(max(size, round(s * scale)) for s in img.size), resample=final)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file; a clear DataError if it is missing or unreadable."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"image file not found: {p}")
    if p.is_dir():
        raise DataError(f"{p} is a directory, expected an image file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; either way the image is
            # too large to decode safely (a "decompression bomb" takes GBs), so both are refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(p)
            img.load()  # decode now, so truncated files fail here and not later
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{p} is too large to decode safely ({e}); shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS "
                        "if you trust the file") from None  # fmt: skip
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{p} is not a readable image (corrupt, truncated or unsupported format: {e})") from e
    return img


def load_image(path: str | os.PathLike, size: int | None = None, channels: int = 3) -> Tensor:
    """Read an image file as (channels, H, W) in [-1, 1], resized + centre-cropped to ``size`` if given."""
    img = open_image(path)
    if size is not None:
        img = resize_center_crop(img, size)
    return pil_to_tensor(img, channels)


def load_mask(path: str | os.PathLike, size: int) -> Tensor:
    """Read a mask image as (1, 1, size, size) bool, True where a pixel is nonzero (white = edit);
    resized and centre-cropped as :func:`load_image` does, with nearest-neighbour resampling."""
    img = open_image(path).convert("L")
    return torch.from_numpy(np.asarray(resize_center_crop(img, size, nearest=True)) > 0)[None, None]


REGIONS = ("bottom", "top", "left", "right", "center", "border")


def region_mask(region: str, size: int, batch: int = 1) -> Tensor:
    """(batch, 1, size, size) bool mask of a preset region, True = regenerate: a half of the image
    (``bottom``, ``top``, ``left``, ``right``), the centre square of side size // 2 (``center``,
    in-painting) or everything but that square (``border``, out-painting)."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}: choose one of {', '.join(REGIONS)}")
    m = torch.zeros(size, size, dtype=torch.bool)
    h, a = size // 2, (size - size // 2) // 2
    if region == "bottom":
        m[size - h :] = True
    elif region == "top":
        m[:h] = True
    elif region == "left":
        m[:, :h] = True
    elif region == "right":
        m[:, size - h :] = True
    else:
        m[a : a + h, a : a + h] = True
        m = m if region == "center" else ~m
    return m.expand(batch, 1, size, size).clone()


def make_grid(images_BCHW: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = -1.0) -> Tensor:
    """Tile (B, C, H, W) images into one (C, H', W') image, ``nrow`` images per row."""
    if images_BCHW.ndim != 4:
        raise ValueError(f"make_grid expects (B, C, H, W) images, got shape {tuple(images_BCHW.shape)}")
    B, C, H, W = images_BCHW.shape
    ncol = max(min(nrow, B), 1)
    nrows = -(-B // ncol)
    grid = images_BCHW.new_full((C, nrows * (H + padding) + padding, ncol * (W + padding) + padding), pad_value)
    for i in range(B):
        r, c = divmod(i, ncol)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top : top + H, left : left + W] = images_BCHW[i]
    return grid


def save_image(images_BCHW: Tensor, path: str | os.PathLike, nrow: int = 8, padding: int = 2) -> Path:
    """Write (B, C, H, W) images in [-1, 1] as one image grid (PNG, or the format of the extension);
    parent folders are created, the file is replaced atomically."""
    p = Path(path)
    img = tensor_to_pil(make_grid(images_BCHW.detach().cpu().float(), nrow=nrow, padding=padding))
    with atomic_path(p) as tmp:  # a complete image or none; the format comes from the extension
        img.save(tmp)
    return p
