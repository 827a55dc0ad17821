"""On-disk caches (arvision.cache): reference features of eval, token caches shared between
training runs. A second use hits the cache; a changed input or network, or a damaged cache file,
recomputes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from arvision import cache as C
from arvision.metrics import features as F
from arvision.presets import TOKENIZER_PRESETS
from arvision.train import generator as G


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ARVISION_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def mnist_features():
    return F.MnistFeatures()


def _count_extracts(monkeypatch, extractor) -> list[int]:
    calls = []
    real = type(extractor).extract

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(type(extractor), "extract", counted)
    return calls


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ARVISION_CACHE", str(tmp_path / "x"))
    assert C.cache_dir("features") == tmp_path / "x" / "features"
    monkeypatch.delenv("ARVISION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.cache_dir() == tmp_path / "xdg" / "arvision"


def test_reference_features_are_cached_and_invalidated(tmp_path, cache_root, mnist_features, monkeypatch) -> None:
    ref = tmp_path / "ref.npz"
    rng = np.random.default_rng(0)
    np.savez(ref, arr_0=rng.integers(0, 256, (24, 28, 28), dtype=np.uint8))
    calls = _count_extracts(monkeypatch, mnist_features)
    first = F.load_reference(str(ref), mnist_features, progress=False)
    assert len(calls) == 1 and len(list((cache_root / "features").glob("*.safetensors"))) == 1
    second = F.load_reference(str(ref), mnist_features, progress=False)
    assert len(calls) == 1, "the second load computed the features again"
    assert torch.equal(first.features, second.features) and torch.equal(first.logits, second.logits)

    np.savez(ref, arr_0=rng.integers(0, 256, (24, 28, 28), dtype=np.uint8))  # new content
    os.utime(ref, ns=(1, 1))  # and a new modification time, whatever the clock's resolution
    third = F.load_reference(str(ref), mnist_features, progress=False)
    assert len(calls) == 2 and not torch.equal(third.features, first.features)

    for f in (cache_root / "features").glob("*.safetensors"):
        f.write_bytes(b"\0garbage")  # a damaged entry is recomputed, not trusted
    fourth = F.load_reference(str(ref), mnist_features, progress=False)
    assert len(calls) == 3 and torch.equal(fourth.features, third.features)

    F.load_reference(str(ref), mnist_features, progress=False, cache=False)
    assert len(calls) == 4


def test_reference_cache_is_keyed_on_the_network_weights(tmp_path, cache_root, monkeypatch) -> None:
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=np.random.default_rng(1).integers(0, 256, (8, 28, 28), dtype=np.uint8))
    a, b = F.MnistFeatures(), F.MnistFeatures()
    with torch.no_grad():
        next(b.net.parameters()).add_(0.1)
    assert a.identity() != b.identity()
    calls = _count_extracts(monkeypatch, a)
    ra = F.load_reference(str(ref), a, progress=False)
    rb = F.load_reference(str(ref), b, progress=False)
    assert len(calls) == 2 and not torch.equal(ra.features, rb.features)


def test_folder_identity_sees_added_and_changed_files(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"1")
    before = C.path_identity(tmp_path / "d")
    (tmp_path / "d" / "b.png").write_bytes(b"2")
    added = C.path_identity(tmp_path / "d")
    (tmp_path / "d" / "b.png").write_bytes(b"22")
    assert len({str(before), str(added), str(C.path_identity(tmp_path / "d"))}) == 3


@pytest.fixture(scope="module")
def tiny_tok():
    p = TOKENIZER_PRESETS["tiny-vq"]
    torch.manual_seed(0)
    return p.model_class(p.config).eval()


def _digits(root, n: int = 6):
    for c in ("0", "1"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16), 20 * i + 100 * int(c), np.uint8)).save(root / c / f"{i}.png")
    return root


def test_token_cache_is_shared_between_runs(tmp_path, cache_root, tiny_tok, monkeypatch) -> None:
    data = str(_digits(tmp_path / "data"))
    calls = []
    real = G.get_dataset
    monkeypatch.setattr(G, "get_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    (tmp_path / "run1").mkdir()
    t1, l1, n = G.encode_dataset(tiny_tok, data, tmp_path / "run1" / "tokens.safetensors", tokenizer_id="w1", progress=False, shared=True)
    assert len(calls) == 1 and n == 2 and len(list((cache_root / "tokens").glob("*.safetensors"))) == 1
    (tmp_path / "run2").mkdir()
    t2, l2, _ = G.encode_dataset(tiny_tok, data, tmp_path / "run2" / "tokens.safetensors", tokenizer_id="w1", progress=False, shared=True)
    assert len(calls) == 1, "the second run encoded the data set again"
    assert torch.equal(t1, t2) and torch.equal(l1, l2) and (tmp_path / "run2" / "tokens.safetensors").is_file()

    (tmp_path / "run3").mkdir()
    G.encode_dataset(tiny_tok, data, tmp_path / "run3" / "tokens.safetensors", tokenizer_id="w2", progress=False, shared=True)
    assert len(calls) == 2  # other tokenizer weights: encoded again

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "data" / "1" / "new.png")
    (tmp_path / "run4").mkdir()
    t4, _, _ = G.encode_dataset(tiny_tok, data, tmp_path / "run4" / "tokens.safetensors", tokenizer_id="w1", progress=False, shared=True)
    assert len(calls) == 3 and len(t4) == len(t1) + 1  # the data changed: encoded again

    for f in (cache_root / "tokens").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    (tmp_path / "run5").mkdir()
    t5, _, _ = G.encode_dataset(tiny_tok, data, tmp_path / "run5" / "tokens.safetensors", tokenizer_id="w1", progress=False, shared=True)
    assert len(calls) == 4 and torch.equal(t5, t4)


def test_cache_write_failure_is_not_fatal(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("ARVISION_CACHE", str(blocker))  # a file where the folder should be
    key = {"a": 1}
    assert C.save_entry(C.entry_path("x", key), key, {"t": torch.zeros(2)}) is None
    assert C.load_entry(C.entry_path("x", key), key) is None
