"""Generator training: learning, exact resume, token cache, and 2-process DDP == 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import arvision
from arvision.pipeline import Pipeline
from arvision.presets import TOKENIZER_PRESETS
from arvision.modeling import _sha256
from arvision.train.generator import TOKEN_CACHE, encode_dataset, train_generator


@pytest.fixture(scope="module")
def tiny_tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    out = {}
    for name in ("tiny-vq", "tiny-msvq"):
        p = TOKENIZER_PRESETS[name]
        torch.manual_seed(0)
        tok = p.model_class(p.config)
        tok.quantize.embedding.weight.data.normal_()
        out[name] = tok.save_pretrained(root / name)
        # encode MNIST once per tokenizer; runs start from a copy of this cache (see `primed`)
        encode_dataset(tok, "mnist", root / f"{name}.tokens", tokenizer_id=_sha256(out[name] / "model.safetensors"), progress=False)
    return out


def primed(out, tiny_tokenizers, tokenizer: str):
    """``out`` holding the token cache of ``tokenizer`` (what a first run would encode), to save the encoding time."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_tokenizers[tokenizer].parent / f"{tokenizer}.tokens", out / TOKEN_CACHE)
    return out


ORDERS = [("tiny-raster", "tiny-vq"), ("tiny-scale", "tiny-msvq"), ("tiny-masked", "tiny-vq"), ("tiny-neighbor", "tiny-vq"),
          ("tiny-markov-scale", "tiny-msvq"), ("tiny-ctf", "tiny-vq")]


@pytest.mark.parametrize("preset,tokenizer", ORDERS)
def test_training_reduces_the_loss_and_saves_a_pipeline(tmp_path, tiny_tokenizers, preset, tokenizer) -> None:
    kw = dict(preset=preset, tokenizer=str(tiny_tokenizers[tokenizer]), batch_size=32, progress=False)
    first = train_generator(primed(tmp_path / "a", tiny_tokenizers, tokenizer), steps=1, **kw)
    result = train_generator(primed(tmp_path / "b", tiny_tokenizers, tokenizer), steps=40, lr=3e-3, **kw)
    assert result["final_loss"] < first["final_loss"] - 0.3, (first, result)
    assert result["tokens_per_s"] > 0 and result["processes"] == 1
    pipe = arvision.load(tmp_path / "b")
    assert isinstance(pipe, Pipeline) and pipe.num_classes == 10
    assert pipe.info["training"]["steps"] == 40
    assert pipe.generate(classes=[1, 2], n_per_class=1).shape == (2, 1, 16, 16)
    assert (tmp_path / "b" / TOKEN_CACHE).is_file()


@pytest.mark.parametrize("preset,tokenizer", ORDERS)
def test_resume_continues_exactly(tmp_path, tiny_tokenizers, preset, tokenizer) -> None:
    kw = dict(preset=preset, tokenizer=str(tiny_tokenizers[tokenizer]), steps=6, ema=0.9, progress=False)
    train_generator(primed(tmp_path / "straight", tiny_tokenizers, tokenizer), **kw)
    assert train_generator(primed(tmp_path / "killed", tiny_tokenizers, tokenizer), stop_after=3, **kw) == {"stopped_at": 3}
    train_generator(tmp_path / "killed", resume=True, progress=False)
    a = arvision.load(tmp_path / "straight").generator.state_dict()
    b = arvision.load(tmp_path / "killed").generator.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_token_cache_is_reused_and_invalidated(tmp_path, tiny_tokenizers) -> None:
    from arvision.hub import load
    from arvision.train.generator import encode_dataset

    tok = load(tiny_tokenizers["tiny-vq"])
    cache = tmp_path / "tokens.safetensors"
    t1, l1, n = encode_dataset(tok, "mnist", cache, tokenizer_id="a", progress=False)
    assert t1.shape == (60_000, tok.num_tokens) and n == 10 and torch.equal(l1[:3], torch.tensor([5, 0, 4]))
    mtime = cache.stat().st_mtime_ns
    t2, _, _ = encode_dataset(tok, "mnist", cache, tokenizer_id="a", progress=False)
    assert torch.equal(t1, t2) and cache.stat().st_mtime_ns == mtime
    encode_dataset(tok, "mnist", cache, tokenizer_id="b", progress=False)
    assert cache.stat().st_mtime_ns != mtime  # another tokenizer: re-encoded


def test_training_errors(tmp_path, tiny_tokenizers) -> None:
    with pytest.raises(ValueError, match="--preset"):
        train_generator(tmp_path)
    with pytest.raises(ValueError, match="next-scale order needs a multi-scale tokenizer"):
        train_generator(primed(tmp_path / "x", tiny_tokenizers, "tiny-vq"), preset="tiny-scale", tokenizer=str(tiny_tokenizers["tiny-vq"]),
                        steps=1, progress=False)  # fmt: skip
    # a preset whose tokenizer preset is not shipped says how to make it (it said only "not a shipped model name")
    with pytest.raises(ValueError, match=r"train tokenizer --preset mnist-jpeg-rst-codec --out DIR`, then pass --tokenizer DIR"):
        train_generator(tmp_path / "rst", preset="mnist-jpeg-rst", steps=1, progress=False)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_tokenizers) -> None:
    """torchrun with 2 CPU processes (gloo) stays in sync and matches a 1-process run."""
    args = ["train", "generator", "--preset", "tiny-scale", "--tokenizer", str(tiny_tokenizers["tiny-msvq"]),
            "--steps", "4", "--batch-size", "8", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "arvision"]
    ddp = primed(tmp_path / "ddp", tiny_tokenizers, "tiny-msvq")
    res = subprocess.run(torchrun + args + ["--out", str(ddp)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"processes": 2' in res.stdout
    train_generator(primed(tmp_path / "single", tiny_tokenizers, "tiny-msvq"), preset="tiny-scale", tokenizer=str(tiny_tokenizers["tiny-msvq"]), steps=4, batch_size=8,
                    progress=False)  # fmt: skip
    a = arvision.load(tmp_path / "ddp").generator.state_dict()
    b = arvision.load(tmp_path / "single").generator.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def mnist_sized_tokenizer(tmp_path_factory):
    """A random tiny VQ tokenizer for 28x28 grayscale (7x7 tokens): what the curve's MNIST-FID needs."""
    from arvision.tokenizers import VQConfig, VQTokenizer

    torch.manual_seed(0)
    tok = VQTokenizer(VQConfig(image_size=28, in_channels=1, ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=8,
                               norm_groups=4, codebook_size=32, codebook_dim=4))  # fmt: skip
    tok.quantize.embedding.weight.data.normal_()
    return tok.save_pretrained(tmp_path_factory.mktemp("tok28") / "vq28")


def test_training_curve_is_recorded_resumed_and_leaves_training_unchanged(tmp_path, mnist_sized_tokenizer) -> None:
    kw = dict(preset="tiny-raster", tokenizer=str(mnist_sized_tokenizer), steps=4, batch_size=8, ema=0.9, progress=False)
    plain = train_generator(tmp_path / "plain", **kw)
    curve = dict(eval_every=2, eval_samples=20)
    assert train_generator(tmp_path / "curve", stop_after=2, **curve, **kw) == {"stopped_at": 2}
    assert [p["step"] for p in json.loads((tmp_path / "curve" / "curve.json").read_text())["points"]] == [2]
    result = train_generator(tmp_path / "curve", resume=True, progress=False)  # killed after step 2's point: not redone
    points = result["curve"]
    assert [p["step"] for p in points] == [2, 4] and "curve" not in plain
    for p in points:
        assert p["samples"] == 20 and p["fid"] > 0 and 0 <= p["class_accuracy"] <= 1
    assert json.loads((tmp_path / "curve" / "curve.json").read_text())["points"] == points
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 1000
    assert arvision.load(tmp_path / "curve").info["training"]["curve"] == points  # in the model card
    a = arvision.load(tmp_path / "plain").generator.state_dict()
    b = arvision.load(tmp_path / "curve").generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # evaluating does not change what is trained


def test_training_curve_bad_settings(tmp_path, tiny_tokenizers) -> None:
    kw = dict(preset="tiny-raster", tokenizer=str(tiny_tokenizers["tiny-vq"]), steps=2, progress=False)
    with pytest.raises(ValueError, match="needs a 28x28 grayscale tokenizer, this one makes 1x16x16"):
        train_generator(tmp_path / "a", eval_every=1, **kw)
    assert not (tmp_path / "a" / TOKEN_CACHE).exists()  # refused before the data set is encoded
    with pytest.raises(ValueError, match="eval_every must be >= 0"):
        train_generator(tmp_path / "b", eval_every=-1, **kw)
    with pytest.raises(ValueError, match="eval_samples must be >= 20"):
        train_generator(tmp_path / "c", eval_every=1, eval_samples=5, **kw)
