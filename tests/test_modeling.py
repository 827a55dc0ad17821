"""Model files: every way a model directory can be broken gives a clear ModelFileError."""

from __future__ import annotations

import json

import pytest

import arvision
from arvision.errors import ModelFileError
from arvision.modeling import CONFIG_NAME, WEIGHTS_NAME
from arvision.presets import TOKENIZER_PRESETS


@pytest.fixture()
def model_dir(tmp_path):
    p = TOKENIZER_PRESETS["tiny-vq"]
    return p.model_class(p.config).save_pretrained(tmp_path / "model")


def test_truncated_weights(model_dir) -> None:
    w = model_dir / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        arvision.load(model_dir)


def test_truncated_weights_without_recorded_hash(model_dir) -> None:
    meta = json.loads((model_dir / CONFIG_NAME).read_text())
    del meta["weights_sha256"]
    (model_dir / CONFIG_NAME).write_text(json.dumps(meta))
    w = model_dir / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        arvision.load(model_dir)


def test_flipped_bytes_are_caught_by_the_hash(model_dir) -> None:
    w = model_dir / WEIGHTS_NAME
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        arvision.load(model_dir)


def test_missing_weights(model_dir) -> None:
    (model_dir / WEIGHTS_NAME).unlink()
    with pytest.raises(ModelFileError, match="missing weights file"):
        arvision.load(model_dir)


def test_corrupt_config(model_dir) -> None:
    (model_dir / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        arvision.load(model_dir)


def test_newer_format(model_dir) -> None:
    meta = json.loads((model_dir / CONFIG_NAME).read_text())
    meta["format"] = 99
    (model_dir / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="newer than this arvision supports"):
        arvision.load(model_dir)


@pytest.mark.parametrize("bad", [None, [1], "1", 0, True])
def test_format_that_is_not_a_number(model_dir, bad) -> None:
    meta = json.loads((model_dir / CONFIG_NAME).read_text())
    meta["format"] = bad
    (model_dir / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="not a format number"):
        arvision.load(model_dir)


def test_unknown_config_key_from_a_newer_version(model_dir) -> None:
    meta = json.loads((model_dir / CONFIG_NAME).read_text())
    meta["config"]["some_future_option"] = True
    (model_dir / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="some_future_option.*newer arvision"):
        arvision.load(model_dir)


def test_unknown_model_type(model_dir) -> None:
    meta = json.loads((model_dir / CONFIG_NAME).read_text())
    meta["model_type"] = "diffusion_transformer"
    (model_dir / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="unknown to arvision"):
        arvision.load(model_dir)


def test_weights_of_another_model(model_dir, tmp_path) -> None:
    p = TOKENIZER_PRESETS["tiny-msvq"]
    other = p.model_class(p.config).save_pretrained(tmp_path / "other")
    (model_dir / WEIGHTS_NAME).write_bytes((other / WEIGHTS_NAME).read_bytes())
    meta = json.loads((model_dir / CONFIG_NAME).read_text())
    del meta["weights_sha256"]
    (model_dir / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="do not fit VQTokenizer.*(missing|unexpected|mis-shaped)"):
        arvision.load(model_dir)


def test_not_a_model_directory(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="neither a model directory nor a shipped model name"):
        arvision.load(tmp_path / "nope")
    with pytest.raises(ModelFileError, match="no config.json"):
        arvision.load(tmp_path)
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="is a file"):
        arvision.load(f)


def test_shipped_models_load_by_name() -> None:
    names = arvision.list_models()
    assert {"mnist-vq", "mnist-msvq"} <= set(names)
    assert all(desc for desc in names.values())
    tok = arvision.load("mnist-vq")
    assert tok.model_type == "vq_tokenizer" and tok.info["metrics"]["psnr"] >= 24


def test_weights_get_the_same_permissions_as_the_config(tmp_path) -> None:
    """safetensors creates its files 0600; saved weights must be readable like config.json beside them."""
    import stat

    from arvision.tokenizers import VQConfig, VQTokenizer

    out = VQTokenizer(VQConfig(image_size=16, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8,
                               norm_groups=4, codebook_size=32, codebook_dim=4)).save_pretrained(tmp_path / "m")  # fmt: skip
    mode = lambda name: stat.S_IMODE((out / name).stat().st_mode)  # noqa: E731
    assert mode("model.safetensors") == mode("config.json")
    assert not list(out.glob("*.tmp"))
