"""Data layer: built-in MNIST, image folders (labels, formats, corrupt files), grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.data import (
    ImageFolder,
    MnistDataset,
    get_dataset,
    load_image,
    load_mnist,
    make_grid,
    resize_center_crop,
    save_image,
    split_dataset,
)
from arvision.errors import DataError


def test_mnist_splits_labels_and_ranges() -> None:
    x, y = load_mnist("train")
    assert x.shape == (60_000, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    xt, yt = load_mnist("test")
    assert xt.shape == (10_000, 28, 28) and set(yt.tolist()) == set(range(10))
    ds = MnistDataset("test", limit=5)
    img, label = ds[0]
    assert len(ds) == 5 and img.shape == (1, 28, 28) and label == int(yt[0])
    assert img.min() >= -1 and img.max() <= 1 and img.min() == -1


def test_mnist_resize_and_channels() -> None:
    ds = MnistDataset("test", image_size=32, channels=3, limit=4)
    assert ds.images.shape == (4, 3, 32, 32)
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])
    assert ds.images.min() >= -1 and ds.images.max() <= 1


def test_mnist_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="unknown MNIST split"):
        load_mnist("validation")
    bad = tmp_path / "mnist.npz"
    np.savez(bad, train_images=np.zeros((3, 5, 5), np.uint8))
    with pytest.raises(DataError, match="corrupt"):
        load_mnist("train", path=bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable MNIST"):
        load_mnist("train", path=junk)
    with pytest.raises(DataError, match="not found"):
        load_mnist("train", path=tmp_path / "missing.npz")


def _png(path, size=(20, 12), color=(255, 0, 0), mode="RGB", fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "cat" / "a.png")
    _png(root / "cat" / "deep" / "b.JPG", fmt="JPEG")
    _png(root / "dog" / "c.webp", color=(0, 255, 0), fmt="WEBP")
    _png(root / "dog" / "d.bmp", mode="L", color=128)
    _png(root / "dog" / "e.png", mode="RGBA", color=(0, 0, 255, 128))
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_folder_labels_from_subfolders(folder) -> None:
    ds = ImageFolder(folder, image_size=8)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert len(ds) == 5 and ds.labels == [0, 0, 1, 1, 1]
    x, y = ds[2]
    assert x.shape == (3, 8, 8) and y == 1
    assert x[1].mean() > 0.9 and x[0].mean() < -0.9  # the green webp
    grey = ImageFolder(folder, image_size=8, channels=1)
    assert grey[0][0].shape == (1, 8, 8)


def test_folder_without_classes(tmp_path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    ds = ImageFolder(tmp_path, image_size=4)
    assert ds.num_classes == 0 and ds.labels == [-1, -1]


def test_corrupt_files_are_skipped_and_counted(folder) -> None:
    (folder / "cat" / "random.png").write_bytes(np.random.default_rng(0).bytes(300))
    good = (folder / "cat" / "a.png").read_bytes()
    (folder / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match="skipped 2 unreadable, corrupt or too large"):
        ds = ImageFolder(folder, image_size=8)
    assert len(ds) == 5 and len(ds.skipped) == 2


def test_file_broken_after_the_scan_is_skipped(folder) -> None:
    ds = ImageFolder(folder, image_size=8)
    ds.paths[0].write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        x, y = ds[0]
    assert x.shape == (3, 8, 8)


def test_empty_missing_or_unreadable_folders(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        ImageFolder(tmp_path / "missing", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolder(tmp_path / "empty", image_size=8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"xx")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="could be read"):
        ImageFolder(tmp_path / "bad", image_size=8)
    with pytest.raises(DataError, match="unknown data"):
        get_dataset("no/such/folder", image_size=8, channels=3)


def test_resize_center_crop_non_square() -> None:
    img = Image.new("RGB", (300, 100), (10, 20, 30))
    assert resize_center_crop(img, 64).size == (64, 64)
    assert resize_center_crop(Image.new("L", (5, 9)), 16).size == (16, 16)


def test_load_image_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="directory"):
        load_image(tmp_path)
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DataError, match="not a readable image"):
        load_image(tmp_path / "x.jpg")


def test_grid_and_png_round_trip(tmp_path) -> None:
    x = torch.rand(5, 3, 6, 7) * 2 - 1
    grid = make_grid(x, nrow=3, padding=1)
    assert grid.shape == (3, 2 * 7 + 1, 3 * 8 + 1)
    path = save_image(x, tmp_path / "sub" / "g.png", nrow=3, padding=1)
    back = load_image(path)
    assert back.shape == grid.shape
    assert (back - grid).abs().max() <= 1 / 127.5 + 1e-6  # 8-bit quantisation only
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        make_grid(torch.zeros(3, 4, 4))


def test_split_dataset_is_deterministic() -> None:
    ds = MnistDataset("test", limit=100)
    a, b = split_dataset(ds, 0.1, seed=3)
    a2, b2 = split_dataset(ds, 0.1, seed=3)
    assert len(b) == 10 and len(a) == 90 and a.indices == a2.indices and b.indices == b2.indices
    assert not set(a.indices) & set(b.indices)
    with pytest.raises(DataError, match="at least 2"):
        split_dataset(MnistDataset("test", limit=1), 0.5)
