"""``arvision edit``: in/out-painting from the command line on the shipped models, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.cli import main
from arvision.data import MnistDataset
from arvision.data.images import load_image, load_mask, region_mask, save_image

MODEL = "mnist-markov-scale"  # the fastest shipped order


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["edit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Three real test digits (7, 2, 1) as PNGs, a bottom-half mask at 4x the model's size, junk."""
    d = tmp_path_factory.mktemp("edit")
    test = MnistDataset("test")
    digits = []
    for i in range(3):
        digits.append(str(save_image(test.images[i : i + 1], d / f"digit{i}.png", padding=0)))
    mask = np.zeros((112, 112), np.uint8)
    mask[56:] = 255
    Image.fromarray(mask).save(d / "mask.png")
    (d / "junk.png").write_bytes(b"not an image")
    return {"digits": digits, "mask": str(d / "mask.png"), "junk": str(d / "junk.png"), "dir": d,
            "labels": test.labels[:3].tolist()}  # fmt: skip


def size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_edit_one_image_with_a_mask_file(files, tmp_path, capsys) -> None:
    out = tmp_path / "out.png"
    code, stdout, err = run(capsys, "mnist-raster", "--image", files["digits"][0], "--mask", files["mask"], "--class", "7",
                            "-o", str(out))  # fmt: skip
    assert code == 0, err
    assert size(out) == (28, 28)  # one image: the edited image itself, no grid padding
    assert "1 image(s)" in stdout and "forward passes/image" in stdout and "% of tokens kept" in stdout
    # the top half of the digit is kept: the output's top rows match the input closely
    x = np.asarray(Image.open(files["digits"][0]), np.float32) / 255
    y = np.asarray(Image.open(out), np.float32) / 255
    assert np.abs(x[:8] - y[:8]).mean() < 0.1


@pytest.mark.parametrize("region", ["center", "border", "left"])
def test_edit_regions_and_comparison(files, tmp_path, capsys, region) -> None:
    out, cmp = tmp_path / "grid.png", tmp_path / "cmp.png"
    labels = ",".join(map(str, files["labels"]))
    code, stdout, err = run(capsys, MODEL, "--image", *files["digits"], "--region", region, "--class", labels,
                            "-o", str(out), "--comparison", str(cmp), "--top-k", "5")  # fmt: skip
    assert code == 0, err
    assert size(out) == (3 * 30 + 2, 32)  # a grid of three
    assert size(cmp) == (3 * 30 + 2, 3 * 30 + 2)  # rows: input, masked input, output
    grid = np.asarray(Image.open(cmp))
    masked_row = grid[32:60, 2:30]  # the first image's masked input
    grey = region_mask(region, 28)[0, 0].numpy()
    assert (masked_row[grey] == 128).all() and not (masked_row[~grey] == 128).all()
    assert "3 image(s)" in stdout


def test_region_masks() -> None:
    for region, share in [("bottom", 0.5), ("top", 0.5), ("left", 0.5), ("right", 0.5), ("center", 0.25), ("border", 0.75)]:
        m = region_mask(region, 28, 2)
        assert m.shape == (2, 1, 28, 28) and m.dtype == torch.bool and m.float().mean().item() == share
    assert region_mask("center", 28)[0, 0, 7:21, 7:21].all() and not region_mask("border", 28)[0, 0, 7:21, 7:21].any()
    with pytest.raises(ValueError, match="unknown region"):
        region_mask("middle", 28)


def test_mask_lands_on_the_same_pixels_as_its_image(tmp_path) -> None:
    """A non-square mask is halved, resized and centre-cropped like the image (nearest-neighbour)."""
    a = np.zeros((120, 200), np.uint8)  # h x w: the centre crop drops 40 columns on each side
    a[30:90, 50:110] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", 28)
    x = load_image(tmp_path / "m.png", 28, 1)
    assert m.shape == (1, 1, 28, 28) and m.dtype == torch.bool
    assert (m[0, 0] == (x[0] > 0)).float().mean() > 0.95 and m.any() and not m.all()


def test_one_mask_per_image_and_one_class_for_all(files, tmp_path, capsys) -> None:
    code, _, err = run(capsys, MODEL, "--image", *files["digits"][:2], "--mask", files["mask"], files["mask"],
                       "--class", "3", "-o", str(tmp_path / "o.png"))  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing-image", "image file not found"),
        ("not-an-image", "not a readable image"),
        ("missing-mask", "--mask: image file not found"),
        ("corrupt-mask", "--mask:"),
        ("mask-count", "2 masks for 3 images"),
        ("class-count", "--class has 2 ids for 3 images"),
        ("class-range", "--class 10 is out of range"),
        ("class-text", "--class must be an integer"),
        ("no-mask", "pass --mask FILE"),
    ],
)
def test_bad_inputs_exit_2_with_a_clear_message(files, tmp_path, capsys, case, expect) -> None:
    d, digits, mask = files["dir"], files["digits"], files["mask"]
    images, masks, cls = digits, ["--mask", mask], "1"
    if case == "missing-image":
        images = [digits[0], str(d / "nope.png")]
    elif case == "not-an-image":
        images = [files["junk"]]
    elif case == "missing-mask":
        masks = ["--mask", str(d / "nope.png")]
    elif case == "corrupt-mask":
        masks = ["--mask", files["junk"]]
    elif case == "mask-count":
        masks = ["--mask", mask, mask]
    elif case == "class-count":
        cls = "1,2"
    elif case == "class-range":
        cls = "10"
    elif case == "class-text":
        cls = "seven"
    elif case == "no-mask":
        masks = []
    code, _, err = run(capsys, MODEL, "--image", *images, *masks, "--class", cls, "-o", str(tmp_path / "o.png"))
    assert code == 2
    assert err.startswith("arvision edit: error:") and expect in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_mask_and_region_are_exclusive(files) -> None:
    with pytest.raises(SystemExit) as e:
        main(["edit", MODEL, "--image", files["digits"][0], "--mask", files["mask"], "--region", "top", "--class", "1"])
    assert e.value.code == 2
