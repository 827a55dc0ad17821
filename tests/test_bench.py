"""``arvision bench tokenizers``: the table's figures, resuming, folders of mixed images, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arvision import benchmark
from arvision.benchmark import bench_tokenizers, shipped_tokenizers, table
from arvision.presets import TOKENIZER_PRESETS
from test_cli import run


def save_tiny(name: str, root: Path) -> str:
    p = TOKENIZER_PRESETS[name]
    return str(p.model_class(p.config).save_pretrained(root / name, info={"description": name}))


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("toks")
    return [save_tiny(n, root) for n in ("tiny-vq", "tiny-fsq", "tiny-fq", "tiny-kl")]


def test_rows_hold_every_figure_and_resume(tiny_dirs, tmp_path, monkeypatch) -> None:
    out = tmp_path / "bench"
    rows = bench_tokenizers(tiny_dirs, limit=40, batch_size=16, out_dir=out, progress=False)
    by = {Path(r["tokenizer"]).name: r for r in rows}
    assert by["tiny-vq"]["bits_per_image"] == 64 * math.log2(32) and by["tiny-fq"]["bits_per_image"] == 64 * math.log2(36)
    assert by["tiny-kl"]["bits_per_image"] is None and "codebook_usage" not in by["tiny-kl"]
    for r in rows:
        assert r["num_images"] == 40 and r["encode_ms"] > 0 and r["decode_ms"] > 0 and r["rfid"] is None  # 16 px: no MNIST features
        assert 0 < r["psnr"] < 60
    md = (out / "tokenizers.md").read_text()
    assert md.count("\n") == 2 + len(rows) and "| continuous |" in md
    assert (out / "tokenizers.png").stat().st_size > 1000
    # a rerun with the same settings reuses the finished rows instead of measuring again
    monkeypatch.setattr(benchmark, "evaluate_tokenizer", lambda *a, **k: pytest.fail("measured again"))
    again = bench_tokenizers(tiny_dirs, limit=40, batch_size=16, out_dir=out, progress=False)
    assert [r["psnr"] for r in again] == [r["psnr"] for r in rows]
    with pytest.raises(ValueError, match="other settings"):
        bench_tokenizers(tiny_dirs, limit=20, batch_size=16, out_dir=out, progress=False)
    with pytest.raises(pytest.fail.Exception, match="measured again"):  # --overwrite measures again (it reused the rows once)
        bench_tokenizers(tiny_dirs, limit=40, batch_size=16, out_dir=out, overwrite=True, progress=False)


def test_interrupted_run_keeps_finished_rows(tiny_dirs, tmp_path, monkeypatch) -> None:
    out = tmp_path / "bench"
    real = benchmark.evaluate_tokenizer
    calls = []

    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(benchmark, "evaluate_tokenizer", second_fails)
    with pytest.raises(KeyboardInterrupt):
        bench_tokenizers(tiny_dirs[:2], limit=16, batch_size=16, out_dir=out, progress=False)
    saved = json.loads((out / "tokenizers.json").read_text())["rows"]
    assert [Path(r["tokenizer"]).name for r in saved] == ["tiny-vq"]
    monkeypatch.setattr(benchmark, "evaluate_tokenizer", real)
    rows = bench_tokenizers(tiny_dirs[:2], limit=16, batch_size=16, out_dir=out, progress=False)
    assert [Path(r["tokenizer"]).name for r in rows] == ["tiny-vq", "tiny-fsq"] and rows[0] == saved[0]


def test_a_folder_of_mixed_sizes_is_resized_and_bad_files_are_counted(tiny_dirs, tmp_path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(20, 30), (64, 64), (16, 16), (50, 17)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(UserWarning, match="skipped 1"):
        rows = bench_tokenizers(tiny_dirs[:1], data=str(folder), batch_size=2, progress=False)
    assert rows[0]["num_images"] == 4


def test_cli_on_a_shipped_tokenizer_with_mnist_rfid(tmp_path, capsys) -> None:
    code, out, err = run(capsys, "bench", "tokenizers", "mnist-vq", "--limit", "100", "--out", str(tmp_path / "b"), "--no-progress")
    assert code == 0, err
    assert "| mnist-vq | 49 | 392 |" in out
    row = json.loads((tmp_path / "b" / "tokenizers.json").read_text())["rows"][0]
    assert row["rfid_features"] == "mnist" and row["rfid"] > 0


def test_default_is_every_shipped_tokenizer() -> None:
    names = shipped_tokenizers()
    assert {"mnist-vq", "mnist-msvq", "mnist-kl"} <= set(names) and "mnist-raster" not in names


@pytest.mark.parametrize("args,match", [
    (["nope-tokenizer"], "neither a model directory nor a shipped model name"),
    (["mnist-raster"], "tokenizer"),
    (["mnist-vq", "--limit", "0"], "--limit must be >= 1"),
    (["mnist-vq", "--features", "inception"], "Inception"),
    (["mnist-vq", "--data", "/no/such/folder"], "unknown data"),
])  # fmt: skip
def test_bad_input_is_one_clear_line(args: list[str], match: str, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "bench", "tokenizers", *args, "--out", str(tmp_path / "b"), "--no-progress")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert match.lower() in err.lower(), err


def test_table_formats_missing_values() -> None:
    md = table([{"tokenizer": "x", "tokens": 4, "bits_per_image": None, "psnr": 30.0, "ssim": 0.9}])
    assert "| x | 4 | continuous | 30.00 | 0.900 | - |" in md


def test_eval_tokenizer_reports_per_code_usage(tmp_path, capsys) -> None:
    code, out, err = run(capsys, "eval", "tokenizer", "mnist-vq", "--limit", "50", "--out", str(tmp_path / "r.json"), "--no-progress")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    counts = report["code_counts"]
    assert len(counts) == 256 and sum(counts) == 50 * 49
    assert report["dead_codes"] == counts.count(0) and "code_counts" not in out  # the list goes to the file only
