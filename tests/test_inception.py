"""The pure-torch FID Inception reproduces torch-fidelity's network (../shared/fixtures/inception)."""

from __future__ import annotations

import pytest
import torch

from arvision.errors import ModelFileError
from arvision.metrics.inception import FEATURE_NAMES, WEIGHT_FILES, load_inception, tf_resize_299

from conftest import shared_path

SIZES = ["299x299", "64x64", "512x384"]


@pytest.fixture(scope="module")
def weights():
    return shared_path("fixtures", "inception", "weights_random.pth")


@pytest.fixture(scope="module")
def fx():
    return torch.load(shared_path("fixtures", "inception", "fixture.pt"), weights_only=True)


def _close(out: dict, ref: dict, tol: float) -> None:
    for k, v in ref.items():
        err = (out[k] - v).abs().max().item() / v.abs().max().item()
        assert err <= tol, f"{k}: {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("size", SIZES)
def test_tf_resize_is_bit_exact(fx, size: str) -> None:
    assert torch.equal(tf_resize_299(fx[f"images_{size}"].float()), fx[f"resized_{size}"])


@pytest.mark.parametrize("size", SIZES)
def test_features_and_logits_match_torch_fidelity(weights, fx, size: str) -> None:
    with torch.no_grad():
        _close(load_inception(weights)(fx[f"images_{size}"], FEATURE_NAMES), fx[f"features_{size}"], 5e-5)
        f64 = load_inception(weights, dtype=torch.float64)(fx[f"images_{size}"], FEATURE_NAMES)
        _close(f64, fx[f"features_f64_{size}"], 1e-6)
        pfid = load_inception(weights, preprocess="pytorch-fid")(fx[f"images_{size}"], ("64", "192", "768", "2048"))
        _close(pfid, fx[f"pytorch_fid_style_{size}"], 5e-5)


def test_float_images_in_unit_range_equal_uint8(weights, fx) -> None:
    m = load_inception(weights)
    im = fx["images_64x64"]
    with torch.no_grad():
        _close(m(im.float() / 255), m(im), 1e-5)


def test_every_weight_layout_loads(tmp_path, weights, fx) -> None:
    state = torch.load(weights, weights_only=True)
    ref = load_inception(weights)(fx["images_64x64"])["2048"]
    # float32, without num_batches_tracked (torch-fidelity's converter writes none)
    plain = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if "num_batches_tracked" not in k}
    torch.save(plain, tmp_path / WEIGHT_FILES[0])
    # pytorch-fid's InceptionV3 wrapper regroups the modules into blocks.i.j (without fc)
    groups = [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"], ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
              ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
              ["Mixed_7a", "Mixed_7b", "Mixed_7c"]]  # fmt: skip
    where = {name: f"blocks.{i}.{j}" for i, g in enumerate(groups) for j, name in enumerate(g)}
    wrapped = {where[k.split(".")[0]] + k[len(k.split(".")[0]) :] if k.split(".")[0] in where else k: v for k, v in plain.items()}
    torch.save(wrapped, tmp_path / "wrapper.pth")
    with torch.no_grad():
        assert torch.equal(load_inception(tmp_path)(fx["images_64x64"])["2048"], ref)  # a directory holding the file
        assert torch.equal(load_inception(tmp_path / "wrapper.pth")(fx["images_64x64"])["2048"], ref)


def test_clear_errors_for_bad_weight_files(tmp_path, weights, monkeypatch) -> None:
    monkeypatch.delenv("ARVISION_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ModelFileError, match="pt_inception-2015-12-05"):
        load_inception(None)
    with pytest.raises(ModelFileError, match="not found"):
        load_inception(tmp_path / "nope.pth")
    data = weights.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_inception(tmp_path / "cut.pth")
    state = torch.load(weights, weights_only=True)
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["Mixed_7c.branch1x1.conv.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelFileError, match=r"1 missing: fc\.bias.*1 unexpected: extra\.weight.*wrong shapes: Mixed_7c"):
        load_inception(tmp_path / "bad.pth")
    monkeypatch.setenv("ARVISION_INCEPTION_WEIGHTS", str(weights))
    assert load_inception().fc.weight.shape == (1008, 2048)
