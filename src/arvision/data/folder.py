"""Any folder of images as a dataset, with class labels from sub-folder names."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from arvision.data.images import load_image, open_image
from arvision.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolder(Dataset):
    """Every image under ``root`` (recursively), resized + centre-cropped to ``image_size``.

    Labels: when ``root`` has sub-folders holding images, each first-level sub-folder is a class
    (sorted names -> ids 0..K-1) and images directly in ``root`` get label -1; otherwise every
    image has label -1 and ``num_classes`` is 0.

    With ``verify`` (default) every file is decoded once up front; unreadable, corrupt or too large files
    are skipped and reported in one warning, so training never stops on a bad file.
    """

    def __init__(self, root: str | os.PathLike, *, image_size: int, channels: int = 3,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, verify: bool = True) -> None:  # fmt: skip
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(f"image folder not found: {self.root}; pass an existing folder of images (or --data mnist)")
        if not self.root.is_dir():
            raise DataError(f"{self.root} is a file; pass a folder of images")
        exts = tuple(e.lower() for e in extensions)
        paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not paths:
            raise DataError(f"no images ({', '.join(exts)}) found under {self.root} (searched recursively)")
        self.image_size, self.channels = image_size, channels
        classes = sorted({p.relative_to(self.root).parts[0] for p in paths if len(p.relative_to(self.root).parts) > 1})
        self.class_names: list[str] = classes
        self.num_classes = len(classes)
        index = {c: i for i, c in enumerate(classes)}
        self.skipped: list[Path] = []
        if verify:
            good = []
            for p in tqdm(paths, desc="checking images", disable=len(paths) <= 500, leave=False):
                try:
                    open_image(p)
                    good.append(p)
                except DataError:
                    self.skipped.append(p)
            if self.skipped:
                shown = ", ".join(str(p) for p in self.skipped[:3]) + (" ..." if len(self.skipped) > 3 else "")
                warnings.warn(f"skipped {len(self.skipped)} unreadable, corrupt or too large image file(s) under {self.root}: {shown}", stacklevel=2)
            if not good:
                raise DataError(f"none of the {len(paths)} image files under {self.root} could be read")
            paths = good
        self.paths = paths
        self.labels = [index[p.relative_to(self.root).parts[0]] if len(p.relative_to(self.root).parts) > 1 else -1 for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        # A file that became unreadable after the scan is skipped (with a warning), not fatal.
        for k in range(len(self.paths)):
            j = (i + k) % len(self.paths)
            try:
                return load_image(self.paths[j], self.image_size, self.channels), self.labels[j]
            except DataError as e:
                warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
        raise DataError(f"no image under {self.root} is readable any more")
