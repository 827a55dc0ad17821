"""The command line, as a user types it (in-process through arvision.cli.main)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from arvision.cli import main
from arvision.data import save_image
from arvision.data.mnist import MnistDataset


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_commands() -> None:
    res = subprocess.run([sys.executable, "-m", "arvision", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("demo", "models", "info", "reconstruct", "train"):
        assert cmd in res.stdout


def test_models_and_info(capsys) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0 and "mnist-vq" in out and "mnist-msvq" in out
    code, out, _ = run(capsys, "info", "mnist-msvq")
    assert code == 0
    for field in ("msvq_tokenizer", "parameters", "scales", "arvision train tokenizer --preset mnist-msvq", "psnr", "codebook_usage"):
        assert field in out
    code, out, _ = run(capsys, "info", "mnist-classifier")  # trained in epochs: no "None steps"
    assert code == 0 and "3 epochs" in out and "None" not in out


def test_reconstruct_writes_a_grid(tmp_path, capsys) -> None:
    x = MnistDataset("test", limit=3).images
    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        save_image(x[i : i + 1], p, padding=0)
        paths.append(str(p))
    rgb = tmp_path / "photo.jpg"
    Image.new("RGB", (60, 40), (200, 200, 200)).save(rgb)
    out_png = tmp_path / "grid.png"
    code, out, err = run(capsys, "reconstruct", "mnist-vq", *paths, str(rgb), "-o", str(out_png))
    assert code == 0, err
    assert "PSNR" in out and out_png.is_file()
    w, h = Image.open(out_png).size
    assert w > 4 * 28 and h > 2 * 28


def test_reconstruct_corrupt_image_is_a_clear_error(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    code, _, err = run(capsys, "reconstruct", "mnist-vq", str(bad))
    assert code == 2 and "not a readable image" in err and "Traceback" not in err
    code, _, err = run(capsys, "reconstruct", "mnist-raster", str(bad))  # a generator: used to crash with AttributeError
    assert code == 2 and "mnist-raster is a generator, not a tokenizer" in err
    code, _, err = run(capsys, "generate", "mnist-vq")
    assert code == 2 and "not a generator" in err
    code, _, err = run(capsys, "reconstruct", str(tmp_path / "nomodel"), str(bad))
    assert code == 2 and "neither a model directory nor a shipped model name" in err


def test_train_then_resume_then_info(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "tokenizer", "--preset", "tiny-msvq", "--steps", "3", "--out", str(out),
                            "--no-progress", "--eval-limit", "32")  # fmt: skip
    assert code == 0, err
    assert '"psnr"' in stdout and (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    code, _, err = run(capsys, "train", "tokenizer", "--preset", "tiny-msvq", "--out", str(out), "--no-progress")
    assert code == 2 and "--resume" in err
    code, _, err = run(capsys, "train", "tokenizer", "--resume", "--out", str(out), "--no-progress", "--eval-limit", "32")
    assert code == 0, err
    code, stdout, _ = run(capsys, "info", str(out))
    assert code == 0 and "3 steps" in stdout


def test_demo_runs_offline(tmp_path, capsys) -> None:
    code, out, err = run(capsys, "demo", "-o", str(tmp_path), "-n", "1")
    assert code == 0, err
    for name in ("mnist-raster", "mnist-scale", "mnist-vq-reconstructions", "mnist-msvq-reconstructions"):
        assert (tmp_path / f"{name}.png").is_file(), name
    assert "forward passes/image" in out and "PSNR" in out


@pytest.mark.parametrize("argv", [["train", "tokenizer", "--preset", "nope", "--out", "x"], ["info"]])
def test_bad_arguments_exit_with_usage(argv) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_generate_writes_a_grid(tmp_path, capsys, tiny_pipeline_dir) -> None:
    out = tmp_path / "grid.png"
    code, stdout, err = run(capsys, "generate", str(tiny_pipeline_dir), "--classes", "0,1,2", "-n", "2", "--cfg", "2",
                            "--seed", "0", "-o", str(out), "--save-individual", str(tmp_path / "each"))  # fmt: skip
    assert code == 0, err
    assert "forward passes/image" in stdout and out.is_file() and len(list((tmp_path / "each").iterdir())) == 6
    code, stdout, _ = run(capsys, "info", str(tiny_pipeline_dir))
    assert code == 0 and "next-scale" in stdout and "sampling" in stdout


@pytest.mark.parametrize("argv,message", [
    (["--classes", "0,11"], "unknown class id 11"),
    (["--classes", "a,b"], "comma-separated integers"),
    (["-n", "0"], "n_per_class"),
    (["--cfg", "-2"], "cfg must be"),
])  # fmt: skip
def test_generate_bad_arguments(tmp_path, capsys, tiny_pipeline_dir, argv, message) -> None:
    code, _, err = run(capsys, "generate", str(tiny_pipeline_dir), *argv, "-o", str(tmp_path / "x.png"))
    assert code == 2 and message in err and "Traceback" not in err


def test_generate_refuses_a_tokenizer(tmp_path, capsys) -> None:
    code, _, err = run(capsys, "generate", "mnist-vq", "-o", str(tmp_path / "x.png"))
    assert code == 2 and "not a generator" in err


def test_output_piped_into_a_reader_that_stops_is_no_traceback(monkeypatch) -> None:
    """`arvision info mnist-masked | head -3` printed a BrokenPipeError traceback."""
    import io
    import sys

    from arvision.cli import main

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", "mnist-masked"]) == 0


def test_fast_decoding_flags(tmp_path, capsys) -> None:
    from arvision.cli import main

    out = str(tmp_path / "x.png")
    assert main(["generate", "mnist-raster", "--classes", "3", "-n", "2", "--decoding", "sjd", "--window", "4", "-o", out]) == 0
    assert main(["generate", "mnist-raster", "--classes", "3", "-n", "2", "--decoding", "speculative", "--draft",
                 "mnist-raster-draft", "--window", "2", "-o", out]) == 0  # fmt: skip
    assert main(["generate", "mnist-scale", "--classes", "3", "-n", "2", "--refiner", "mnist-scale-refiner",
                 "--draft-scales", "3", "-o", out]) == 0  # fmt: skip
    assert main(["generate", "mnist-scale-variant", "--classes", "3", "-n", "2", "--depth-schedule", "6,6,6,3,3,3", "-o", out]) == 0
    capsys.readouterr()
    assert main(["generate", "mnist-raster", "--decoding", "speculative", "-o", out]) == 2
    assert "needs a draft model" in capsys.readouterr().err
