"""Bad input gives one clear error, never a raw traceback: devices, oversized or mismatched model
files, decompression bombs, token ids outside the codebook, NaN images, an order that cannot use
the tokenizer (issue 17, "No raw tracebacks" / "Checks before expensive work")."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import arvision
from arvision.cli import main
from arvision.data import ImageFolder, load_image
from arvision.devices import check_device
from arvision.errors import DataError, DeviceError, ModelFileError
from arvision.modelcheck import build_guarded, read_safetensors_header
from arvision.modeling import CONFIG_NAME, WEIGHTS_NAME, load_model
from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS

BAD_DEVICES = ["cuda", "cuda:7", "mps", "tpu", "banana", "meta", "cpu:1", ""]
if torch.cuda.is_available():  # on a GPU machine "cuda" exists; an index past the last one does not
    BAD_DEVICES = [f"cuda:{torch.cuda.device_count()}", "tpu", "banana", "meta", "cpu:1", ""]


def tiny(name: str):
    p = TOKENIZER_PRESETS[name]
    return p.model_class(p.config).eval()


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
    return tiny("tiny-vq").save_pretrained(tmp_path_factory.mktemp("m") / "vq")


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# -- 1. devices ------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", BAD_DEVICES)
def test_unavailable_device_is_a_clear_error(device, vq_dir) -> None:
    with pytest.raises(DeviceError, match="device|CPU"):
        check_device(device)
    with pytest.raises(DeviceError):
        arvision.load(vq_dir, device=device)
    with pytest.raises(DeviceError):
        load_model(vq_dir, map_location=device)


def test_cpu_is_fine() -> None:
    assert check_device("cpu") == torch.device("cpu") and check_device(torch.device("cpu")).type == "cpu"


@pytest.mark.parametrize("argv", [
    ["generate", "mnist-raster", "-n", "1"], ["reconstruct", "mnist-vq", "x.png"], ["edit", "mnist-raster", "--image", "x.png", "--class", "1"],
    ["eval", "generator", "mnist-raster"], ["eval", "tokenizer", "mnist-vq"], ["tune", "mnist-raster"],
    ["train", "tokenizer", "--preset", "tiny-vq"], ["train", "generator", "--preset", "tiny-raster"],
])  # fmt: skip
def test_every_command_with_device_checks_it_first(argv, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "o")] if argv[0] in ("train", "eval", "tune") else ["-o", str(tmp_path / "o.png")]
    code, err = run_cli(capsys, *argv, *out, "--device", "banana")
    assert code == 2 and "'banana' is not a device name" in err and "Traceback" not in err, err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()  # one line, nothing written


# -- 2. model files: sizes and header checked before the weights --------------------------------------
def _edit_config(d, edit) -> None:
    meta = json.loads((d / CONFIG_NAME).read_text())
    edit(meta["config"])
    (d / CONFIG_NAME).write_text(json.dumps(meta))


def test_config_too_large_for_memory_says_the_bytes(tmp_path) -> None:
    d = tiny("tiny-vq").save_pretrained(tmp_path / "vq")
    _edit_config(d, lambda c: c.update(codebook_size=10**12))  # a 10^12 x 4 codebook: 16 TB
    with pytest.raises(ModelFileError, match=r"too large for this machine: its weights need 16 TB \(16000"):
        arvision.load(d)


def test_guard_refuses_before_allocating() -> None:
    with pytest.raises(ModelFileError, match="too large"):  # 10 MB asked, 1 MB "available": no allocation happens
        build_guarded(lambda: torch.nn.Linear(1000, 2500), source="x", available=1 << 20)
    assert build_guarded(lambda: torch.nn.Linear(10, 10), source="x", available=1 << 20).weight.shape == (10, 10)


def test_absurd_depth_stops_early(tmp_path, monkeypatch) -> None:
    import arvision.modelcheck

    monkeypatch.setattr(arvision.modelcheck, "MAX_TENSORS", 500)  # 20,000 by default: ~5 s to reach
    d = tiny("tiny-vq").save_pretrained(tmp_path / "vq")
    _edit_config(d, lambda c: c.update(num_res_blocks=10**9))
    with pytest.raises(ModelFileError, match="more than 500 weight tensors"):
        arvision.load(d)


def test_config_that_cannot_build_names_the_file(tmp_path) -> None:
    d = tiny("tiny-vq").save_pretrained(tmp_path / "vq")
    _edit_config(d, lambda c: c.update(ch=-8, norm_groups=-8))
    with pytest.raises(ModelFileError, match=CONFIG_NAME):
        arvision.load(d)


def test_header_mismatch_names_the_first_tensor(tmp_path, monkeypatch) -> None:
    d = tiny("tiny-vq").save_pretrained(tmp_path / "vq")
    _edit_config(d, lambda c: c.update(codebook_size=1000))
    meta = json.loads((d / CONFIG_NAME).read_text())
    meta.pop("weights_sha256")
    (d / CONFIG_NAME).write_text(json.dumps(meta))
    import arvision.modeling as M

    monkeypatch.setattr(M, "load_weights", lambda *a, **k: pytest.fail("weights read before the header was checked"))
    with pytest.raises(ModelFileError, match=r"1 mis-shaped.*first: 'quantize.embedding.weight' is F32\[32, 4\] in the file "
                                             r"but \[1000, 4\] in the config"):  # fmt: skip
        arvision.load(d)


def _header_file(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("header,data,message", [
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8, "does not fit its byte range"),
    ({"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "malformed header entry"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "malformed header entry"),
    ({"w": [1, 2]}, b"", "malformed header entry"),
])  # fmt: skip
def test_malformed_headers(tmp_path, header, data, message) -> None:
    p = tmp_path / WEIGHTS_NAME
    _header_file(p, header, data)
    with pytest.raises(ModelFileError, match=message):
        read_safetensors_header(p)


def test_header_length_lie_and_short_file(tmp_path) -> None:
    p = tmp_path / WEIGHTS_NAME
    p.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(ModelFileError, match="header claims"):
        read_safetensors_header(p)
    p.write_bytes(b"\1\2")
    with pytest.raises(ModelFileError, match="too short"):
        read_safetensors_header(p)
    p.write_bytes(struct.pack("<Q", 3) + b"\xff\xfe[")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_safetensors_header(p)


def test_header_of_a_saved_model_round_trips(vq_dir) -> None:
    header = read_safetensors_header(vq_dir / WEIGHTS_NAME)
    own = tiny("tiny-vq").state_dict()
    assert {k: v[1] for k, v in header.items()} == {k: tuple(t.shape) for k, t in own.items()}


# -- 3. decompression bombs --------------------------------------------------------------------------
@pytest.fixture()
def small_pixel_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 64x64 image is then "too large" (> 2x: error)


@pytest.mark.parametrize("side", [40, 64])  # 1600 px: Pillow only warns; 4096 px: Pillow raises
def test_bomb_given_directly_is_a_clear_error(tmp_path, small_pixel_limit, side) -> None:
    p = tmp_path / "big.png"
    Image.new("L", (side, side)).save(p)
    with pytest.raises(DataError, match="too large to decode safely"):
        load_image(p, 16, 1)


def test_bomb_in_a_folder_is_skipped_and_counted(tmp_path, small_pixel_limit) -> None:
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / f"ok{i}.png")
    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable, corrupt or too large"):
        ds = ImageFolder(tmp_path, image_size=16, channels=1)
    assert len(ds) == 3 and [p.name for p in ds.skipped] == ["bomb.png"]


def test_bomb_through_the_cli(tmp_path, capsys, small_pixel_limit) -> None:
    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    code, err = run_cli(capsys, "reconstruct", "mnist-vq", str(tmp_path / "bomb.png"), "-o", str(tmp_path / "r.png"))
    assert code == 2 and "too large to decode safely" in err and "Traceback" not in err


# -- 4. token ids outside the codebook, NaN images -----------------------------------------------------
def _tokenizers():
    tb = tiny("tiny-tokenbridge")
    return {"vq": tiny("tiny-vq"), "msvq": tiny("tiny-msvq"), "flexscale": tiny("tiny-flexscale"), "tokenbridge": tb}


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_decode_out_of_range_ids_names_the_range(bad) -> None:
    for name, tok in _tokenizers().items():
        shape = (2, tok.num_tokens, tok.embed_dim) if name == "tokenbridge" else (2, tok.num_tokens)
        tokens = torch.zeros(shape, dtype=torch.long)
        tokens[1, -1] = bad
        with pytest.raises(ValueError, match=r"token ids must be in \[0, \d+\)"):
            tok.decode(tokens)


def test_multiscale_decode_of_per_scale_lists_checks_ids() -> None:
    tok = tiny("tiny-msvq")
    scales = [torch.zeros(1, pn * pn, dtype=torch.long) for pn in tok.patch_nums]
    scales[-1][0, 0] = tok.codebook_size
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        tok.decode(scales)


def test_pipeline_tokenizer_decode_checks_ids() -> None:
    pipe = arvision.load("mnist-raster")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 256\)"):
        pipe.tokenizer.decode(torch.full((1, pipe.tokenizer.num_tokens), 256))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_encode_refuses_nan_and_inf(value) -> None:
    for tok in [*_tokenizers().values(), tiny("tiny-kl")]:
        x = torch.zeros(1, 1, 16, 16)
        x[0, 0, 3, 3] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            tok.encode(x)


# -- 5. an order that cannot use the tokenizer fails before encoding the data set ---------------------
@pytest.mark.parametrize("preset,tokenizer,message", [
    ("mnist-scale", "mnist-vq", "next-scale order needs a multi-scale tokenizer"),
    ("mnist-raster", "mnist-kl", "discrete tokenizer"),
    ("mnist-mar", "mnist-vq", "continuous tokenizer"),
])  # fmt: skip
def test_train_generator_checks_the_tokenizer_before_encoding(tmp_path, capsys, monkeypatch, preset, tokenizer, message) -> None:
    import arvision.train.generator as G

    monkeypatch.setattr(G, "encode_dataset", lambda *a, **k: pytest.fail("the data set was encoded before the check"))
    code, err = run_cli(capsys, "train", "generator", "--preset", preset, "--tokenizer", tokenizer, "--out", str(tmp_path / "run"),
                        "--no-progress")  # fmt: skip
    assert code == 2 and message in err and "Traceback" not in err, err
