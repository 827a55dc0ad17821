"""`arvision eval`: generator and tokenizer evaluation end to end, resume, sharding, references."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import arvision
from arvision.cli import main
from arvision.data import load_mnist, save_image
from arvision.errors import DataError
from arvision.evaluate import evaluate_generator
from arvision.pipeline import weights_digest
from arvision.metrics import FeatureStats
from arvision.metrics.features import MnistFeatures, load_images_npz, load_reference, save_samples_npz

from conftest import shared_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def mnist_features():
    return MnistFeatures()


def test_generator_eval_writes_samples_and_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "ev"
    code, stdout, err = run(capsys, "eval", "generator", "mnist-raster", "--n", "30", "--batch-size", "8", "--out", str(out), "--no-progress")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 30 and report["reference"] == "mnist:test"
    for key in ("fid", "is", "kid", "precision", "recall", "class_accuracy", "seconds_per_image"):
        assert key in report and key in stdout
    assert report["class_accuracy"] > 0.8 and 1 <= report["is"] <= 10
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape == (30, 28, 28, 1) and f["arr_0"].dtype == np.uint8
        assert np.array_equal(f["arr_1"], np.arange(30) % 10)  # class-balanced
        first = f["arr_0"].copy()
    # interrupted run: one chunk lost, another half-written -> regenerated, identical samples and scores
    os.remove(out / "chunks" / "000001.npz")
    (out / "chunks" / "000002.npz").write_bytes(b"partial")
    code, _, err = run(capsys, "eval", "generator", "mnist-raster", "--n", "30", "--batch-size", "8", "--out", str(out), "--no-progress")
    assert code == 0, err
    again = json.loads((out / "report.json").read_text())
    assert again["fid"] == report["fid"] and again["class_accuracy"] == report["class_accuracy"]
    with np.load(out / "samples.npz") as f:
        assert np.array_equal(f["arr_0"], first)
    # the same directory with other settings is refused rather than mixed
    code, _, err = run(capsys, "eval", "generator", "mnist-raster", "--n", "30", "--batch-size", "8", "--out", str(out), "--cfg", "3")
    assert code == 2 and "another evaluation run" in err and "sampling" in err


def test_resume_refuses_the_samples_of_other_weights(tmp_path, tiny_pipeline_dir, mnist_features) -> None:
    """A model retrained under the same name (or directory) resumed the old weights' samples and
    reported their scores as its own: the run now records the weights, not only the name."""
    ref = load_reference("mnist:test:50", mnist_features, progress=False)
    pipe = arvision.load(tiny_pipeline_dir)
    ev = lambda p, **kw: evaluate_generator(p, mnist_features, ref, n=20, out_dir=tmp_path / "ev", batch_size=10, seed=0,
                                            model="same-name", progress=False, **kw)  # fmt: skip
    first = ev(pipe)
    assert set(first["weights"]) == {"generator", "tokenizer"}
    assert ev(pipe)["fid"] == first["fid"]  # the same weights resume
    retrained = arvision.load(tiny_pipeline_dir)
    with torch.no_grad():
        next(retrained.generator.parameters()).add_(0.5)
    with pytest.raises(DataError, match="another evaluation run.*weights"):
        ev(retrained)
    again = ev(retrained, overwrite=True)
    assert again["weights"]["generator"] != first["weights"]["generator"]
    assert again["weights"]["tokenizer"] == first["weights"]["tokenizer"]
    # a CoDe refiner is part of what made the samples: loaded once, recorded by its weights
    models = pipe.resolve_models({"refiner": str(tiny_pipeline_dir), "precision": "fp32"})
    assert isinstance(models["refiner"], torch.nn.Module) and models["precision"] == "fp32"
    assert pipe.weights_record(models)["refiner"] == first["weights"]["generator"]
    # settings that live in the config, not in the tensors (here: the decoder's output clamp), count too
    unclamped = copy.deepcopy(pipe.tokenizer)
    unclamped.config = dataclasses.replace(unclamped.config, clamp_output=not pipe.tokenizer.config.clamp_output)
    assert weights_digest(unclamped) != weights_digest(pipe.tokenizer)


def test_sharded_eval_under_torchrun_equals_one_process(tmp_path) -> None:
    args = ["mnist-scale", "-n", "30", "--batch-size", "7", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "arvision", "eval", "generator", *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert single.returncode == 0, single.stderr
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                           "-m", "arvision", "eval", "generator", *args, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert dist.stdout.count("wrote") == 1  # only rank 0 reports
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert two["num_samples"] == 30  # a multiple of the 10 classes: no balancing
    for key in ("fid", "is", "kid", "precision", "recall", "class_accuracy"):
        assert one[key] == pytest.approx(two[key], rel=1e-9), key
    with np.load(tmp_path / "one" / "samples.npz") as a, np.load(tmp_path / "two" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


def test_references_in_every_form_agree(tmp_path, mnist_features) -> None:
    images, _ = load_mnist("test")
    images = images[:300, None]
    save_samples_npz(tmp_path / "ref.npz", images)
    assert torch.equal(load_images_npz(tmp_path / "ref.npz"), images)
    from_npz = load_reference(str(tmp_path / "ref.npz"), mnist_features, progress=False)
    (tmp_path / "digits").mkdir()
    for i in range(40):
        save_image(images[i : i + 1].float() / 127.5 - 1, tmp_path / "digits" / f"{i:03d}.png", padding=0)
    from_folder = load_reference(str(tmp_path / "digits"), mnist_features, channels=1, image_size=28, progress=False)
    assert torch.allclose(from_folder.features, from_npz.features[:40], atol=1e-4)
    from_npz.stats.save(tmp_path / "stats.npz")  # mu/sigma only, like VIRTUAL_imagenet256_labeled.npz
    stats_only = load_reference(str(tmp_path / "stats.npz"), mnist_features)
    assert stats_only.features is None and torch.allclose(stats_only.stats.cov, from_npz.stats.cov)
    np.savez(tmp_path / "wrong_dim.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(DataError, match="2048-d statistics but the mnist features are 128-d"):
        load_reference(str(tmp_path / "wrong_dim.npz"), mnist_features)
    with pytest.raises(DataError, match="not found"):
        load_reference(str(tmp_path / "nothing"), mnist_features)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_reference(str(tmp_path / "bad.npz"), mnist_features)


def test_stats_only_reference_gives_fid_without_kid(tmp_path, mnist_features) -> None:
    ref = load_reference("mnist:test", mnist_features, progress=False)
    ref.stats.save(tmp_path / "mnist_test_stats.npz")
    stats_ref = load_reference(str(tmp_path / "mnist_test_stats.npz"), mnist_features)
    pipe = arvision.load("mnist-raster")
    full = evaluate_generator(pipe, mnist_features, ref, n=20, out_dir=tmp_path / "a", batch_size=10, progress=False)
    only = evaluate_generator(pipe, mnist_features, stats_ref, n=20, out_dir=tmp_path / "a", batch_size=10, progress=False)
    assert only["fid"] == pytest.approx(full["fid"], rel=1e-9)
    assert "kid" in full and "kid" not in only and "precision" not in only


def test_mnist_fid_separates_real_from_noise(mnist_features) -> None:
    images, _ = load_mnist("test")
    a = mnist_features.extract(images[:2000, None], 500)[0]
    b = mnist_features.extract(images[2000:4000, None], 500)[0]
    noise = mnist_features.extract(torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8), 500)[0]
    from arvision.metrics import frechet_distance

    real = frechet_distance(FeatureStats.of(a), FeatureStats.of(b))
    assert real < 10 < 100 < frechet_distance(FeatureStats.of(a), FeatureStats.of(noise))


def test_inception_eval_end_to_end_with_local_weights(tmp_path, capsys, monkeypatch) -> None:
    weights = shared_path("fixtures", "inception", "weights_random.pth")
    images, _ = load_mnist("test")
    save_samples_npz(tmp_path / "ref.npz", images[:12, None].repeat(1, 3, 1, 1))
    out = tmp_path / "ev"
    code, stdout, err = run(capsys, "eval", "generator", "mnist-raster", "--n", "12", "--batch-size", "6", "--features", "inception",
                            "--inception-weights", str(weights), "--ref", str(tmp_path / "ref.npz"), "--out", str(out),
                            "--kid-subset-size", "6", "--no-progress")  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["features"] == "inception" and np.isfinite(report["fid"]) and "class_accuracy" not in report
    monkeypatch.delenv("ARVISION_INCEPTION_WEIGHTS", raising=False)
    code, _, err = run(capsys, "eval", "generator", "mnist-raster", "--n", "12", "--features", "inception", "--ref", str(tmp_path / "ref.npz"),
                       "--out", str(tmp_path / "x"))  # fmt: skip
    assert code == 2 and "pt_inception-2015-12-05-6726825d.pth" in err and "Traceback" not in err
    code, _, err = run(capsys, "eval", "generator", "mnist-raster", "--features", "inception", "--inception-weights", str(weights))
    assert code == 2 and "needs --ref" in err


def test_tokenizer_eval_with_rfid(tmp_path, capsys) -> None:
    code, stdout, err = run(capsys, "eval", "tokenizer", "mnist-vq", "--limit", "64", "--features", "mnist", "--out", str(tmp_path / "r.json"),
                            "--no-progress")  # fmt: skip
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["psnr"] > 20 and 0.5 < r["ssim"] <= 1 and 0 <= r["rfid_mnist"] < 5 and r["code_perplexity"] > 1
    code, _, err = run(capsys, "eval", "tokenizer", "mnist-raster")
    assert code == 2 and "is a generator, not a tokenizer" in err
