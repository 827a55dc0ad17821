"""Output locations checked before any work, no silent replacement, atomic writes, streaming runs,
balanced evaluation counts, help text and model cards (issue 17, item 4)."""

from __future__ import annotations

import argparse
import json
import os
import stat

import numpy as np
import pytest
import torch

import arvision.cli.edit
import arvision.cli.eval
import arvision.cli.generate
import arvision.cli.reconstruct
import arvision.cli.tune
from arvision import outputs
from arvision.cli import build_parser
from arvision.errors import OutputError
from arvision.evaluate import balanced_count
from arvision.metrics.features import to_uint8
from arvision.modeling import read_model_config, record_metrics
from arvision.stream import check_in_memory, generate_to_dir, iter_shards
from arvision.train.common import CHECKPOINT_NAME, card_description, start_or_resume
from test_cli import run  # (exit code, stdout, stderr) of one in-process CLI call


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    return arvision.load(tiny_pipeline_dir), tiny_pipeline_dir


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model is where work starts: fail loudly if a command gets that far."""

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the output location was checked")

    for mod in (arvision.cli.generate, arvision.cli.edit, arvision.cli.eval, arvision.cli.tune):
        monkeypatch.setattr(mod, "load_pipeline", loaded)
    for mod in (arvision.cli.eval, arvision.cli.reconstruct):
        monkeypatch.setattr(mod, "load_tokenizer", loaded)
    monkeypatch.setattr("arvision.convert.from_var", loaded)


# -- the checks -----------------------------------------------------------------------------------
def test_file_and_folder_checks(tmp_path) -> None:
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    assert outputs.check_image_file(tmp_path / "new" / "deeper" / "x.png", "-o").name == "x.png"  # parents: created later
    assert outputs.check_image_file(tmp_path / "x.JPG") and outputs.check_image_file(tmp_path / "x.webp")
    with pytest.raises(OutputError, match=r"unknown image extension '\.txt'.*\.png"):
        outputs.check_image_file(tmp_path / "x.txt", "-o")
    with pytest.raises(OutputError, match="is a folder; pass a file name"):
        outputs.check_image_file(tmp_path, "-o")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        outputs.check_image_file(a_file / "x.png", "-o")
    with pytest.raises(OutputError, match="is a file, but a folder is needed"):
        outputs.check_dir(a_file, "--out")
    with pytest.raises(OutputError, match="is a file, so no folder can be created"):
        outputs.check_dir(a_file / "sub" / "dir", "--out")
    assert outputs.check_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking creates nothing


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_that_cannot_be_written(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            outputs.check_dir(ro / "sub", "--out")
        with pytest.raises(OutputError, match="permission denied"):
            outputs.check_image_file(ro / "x.png", "-o")
    finally:
        ro.chmod(0o755)


def test_a_folder_without_write_permission_as_root(tmp_path, monkeypatch) -> None:
    """What a non-root user sees in a read-only folder (root may write anywhere, so os.access is faked)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: os.fspath(path) != os.fspath(ro))
    with pytest.raises(OutputError, match=r"--out .*: cannot write into .*ro \(permission denied\)"):
        outputs.check_dir(ro / "sub", "--out")


def test_a_folder_that_refuses_files_whatever_os_access_says(tmp_path, monkeypatch, capsys, no_work) -> None:
    """Root is allowed everything by os.access, but /proc, read-only mounts and full disks still refuse
    files: the check creates one for real (before: '[Errno 2] ... .x.123.tmp.png' after sampling)."""
    folder = tmp_path / "refuses"
    folder.mkdir()
    real = outputs.tempfile.NamedTemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and os.fspath(dir) == os.fspath(folder):
            raise OSError(30, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(OutputError, match=r"cannot write into .*refuses \(Read-only file system\)"):
        outputs.check_image_file(folder / "x.png", "-o")
    code, _, err = run(capsys, "generate", "mnist-scale", "-o", str(folder / "x.png"))
    assert code == 2 and "cannot write into" in err and "Traceback" not in err
    assert not list(folder.iterdir())  # the probe leaves nothing behind


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux /proc")
def test_proc_is_not_an_output_folder(capsys, no_work) -> None:
    code, _, err = run(capsys, "generate", "mnist-scale", "-o", "/proc/x.png")
    assert code == 2 and "cannot write into /proc" in err


def test_run_dir_rules(tmp_path) -> None:
    assert outputs.check_run_dir(tmp_path / "missing", "--out") is False
    empty = tmp_path / "empty"
    empty.mkdir()
    assert outputs.check_run_dir(empty, "--out") is False
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(OutputError, match=r"already holds a model \(config.json\); pass --overwrite"):
        outputs.check_run_dir(model, "--out", marker="run.json")
    assert outputs.check_run_dir(model, "--out", overwrite=True) is False
    (model / "run.json").write_text("{}")
    assert outputs.check_run_dir(model, "--out", marker="run.json") is True  # our own run: resumed
    (empty / ".arvision-write-check-x1y2").write_text("")  # another rank's write check, at that moment
    assert outputs.check_run_dir(empty, "--out") is False  # (was: "already holds files": torchrun failed)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tokens.safetensors").write_bytes(b"")
    assert outputs.check_run_dir(cache, "--out", own=("tokens.safetensors",)) is False


def test_atomic_writes_get_the_usual_mode_and_leave_nothing_behind(tmp_path) -> None:
    from arvision.data import save_image

    mode = 0o666 & ~outputs.umask()
    for path in (outputs.write_json(tmp_path / "r.json", {"a": 1}), save_image(torch.zeros(2, 1, 8, 8), tmp_path / "g.jpg")):
        assert stat.S_IMODE(path.stat().st_mode) == mode
    target = tmp_path / "r.json"
    with pytest.raises(RuntimeError):
        with outputs.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.jpg", "r.json"]  # no temporary files


# -- every command checks its outputs before work ------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["generate", "M", "-o", "{f}/x.png"], "is a file, not a folder"),
    (["generate", "M", "-o", "{d}/x.tiffany"], "unknown image extension"),
    (["generate", "M", "-o", "{d}"], "is a folder"),
    (["generate", "M", "--save-individual", "{f}"], "is a file, but a folder is needed"),
    (["generate", "M", "--out-dir", "{f}"], "is a file, but a folder is needed"),
    (["generate", "M", "--out-dir", "{d}/o", "-o", "x.png"], "drop one of the two"),
    (["edit", "M", "--image", "i.png", "--region", "center", "--class", "1", "-o", "{d}/e.txt"], "unknown image extension"),
    (["edit", "M", "--image", "i.png", "--region", "center", "--class", "1", "--comparison", "{d}"], "is a folder"),
    (["reconstruct", "M", "i.png", "-o", "{f}"], "unknown image extension"),
    (["eval", "generator", "M", "--out", "{f}"], "is a file, but a folder is needed"),
    (["eval", "generator", "M", "--out", "{m}"], "already holds a model"),
    (["eval", "tokenizer", "M", "--out", "{f}/r.json"], "is a file, not a folder"),
    (["tune", "M", "--out", "{m}"], "already holds a model"),
    (["convert", "var", "--vae", "a", "--var", "b", "--out", "{m}"], "already holds a model"),
    (["demo", "-o", "{f}"], "is a file, but a folder is needed"),
    (["train", "tokenizer", "--preset", "tiny-vq", "--out", "{m}"], "already holds a model"),
    (["train", "generator", "--preset", "tiny-scale", "--out", "{f}"], "is a file, but a folder is needed"),
])  # fmt: skip
def test_commands_check_outputs_before_work(tmp_path, capsys, no_work, argv, message) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text("{}")
    argv = [a.format(f=f, d=tmp_path, m=m) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert (m / "config.json").read_text() == "{}"


def test_train_tokenizer_does_not_replace_a_model(tmp_path, capsys) -> None:
    """It used to overwrite a converted model's files silently."""
    out = tmp_path / "converted"
    out.mkdir()
    (out / "config.json").write_text('{"converted": true}')
    code, _, err = run(capsys, "train", "tokenizer", "--preset", "tiny-vq", "--steps", "1", "--out", str(out), "--no-progress")
    assert code == 2 and "--overwrite" in err
    assert (out / "config.json").read_text() == '{"converted": true}'
    code, _, err = run(capsys, "train", "tokenizer", "--preset", "tiny-vq", "--steps", "1", "--out", str(out), "--no-progress",
                       "--eval-limit", "8", "--overwrite")  # fmt: skip
    assert code == 0, err
    assert read_model_config(out)["model_type"] != "converted"


def test_a_training_run_is_resumed_or_replaced_never_silently_restarted(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"run": {"train": {"steps": 5}}}, out / CHECKPOINT_NAME)
    new = lambda: {"new": True}  # noqa: E731
    with pytest.raises(OutputError, match="--resume to continue it, --overwrite"):
        start_or_resume(out, resume=False, preset="p", steps=None, new_run=new)
    run, ckpt = start_or_resume(out, resume=True, preset=None, steps=None, new_run=new)
    assert ckpt is not None and run == {"train": {"steps": 5}}
    run, ckpt = start_or_resume(out, resume=False, preset="p", steps=None, new_run=new, overwrite=True)
    assert ckpt is None and run == {"new": True} and not (out / CHECKPOINT_NAME).exists()  # a later --resume cannot pick it up


# -- streaming -----------------------------------------------------------------------------------------
def test_streaming_equals_one_call_and_resumes(tmp_path, tiny_pipe, monkeypatch) -> None:
    pipe, _ = tiny_pipe
    whole = to_uint8(pipe.sample([1, 2], 3, seed=4).images).permute(0, 2, 3, 1).numpy()
    out = tmp_path / "run"
    calls = []
    real = pipe.sample

    def killed_after_two(*a, **k):  # the run is killed while making its third chunk
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(pipe, "sample", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate_to_dir(pipe, out, [1, 2], 3, seed=4, chunk_size=2, batch_size=1, progress=False)
    monkeypatch.setattr(pipe, "sample", real)
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "shard-000000.npz", "shard-000001.npz"]
    r = generate_to_dir(pipe, out, [1, 2], 3, seed=4, chunk_size=2, batch_size=2, progress=False,
                        individual=tmp_path / "png")  # fmt: skip
    assert r["chunks_resumed"] == 2 and r["images_made"] == 2
    images = np.concatenate([x for x, _ in iter_shards(out)])
    labels = np.concatenate([y for _, y in iter_shards(out)])
    assert np.array_equal(images, whole) and labels.tolist() == [1, 1, 1, 2, 2, 2]
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["2_0001.png", "2_0002.png"]  # the last chunk's
    with pytest.raises(OutputError, match="other settings.*seed"):
        generate_to_dir(pipe, out, [1, 2], 3, seed=5, chunk_size=2, progress=False)
    r = generate_to_dir(pipe, out, [1, 2], 3, seed=5, chunk_size=2, progress=False, overwrite=True)
    assert r["chunks_resumed"] == 0 and json.loads((out / "run.json").read_text())["seed"] == 5


def test_generate_out_dir_cli(tmp_path, capsys, tiny_pipe) -> None:
    _, directory = tiny_pipe
    argv = ["generate", str(directory), "--classes", "0,1", "-n", "2", "--out-dir", str(tmp_path / "o"), "--chunk-size", "3"]
    code, stdout, err = run(capsys, *argv)
    assert code == 0 and "4 images in 2 shards (0 already done" in stdout, err
    code, stdout, err = run(capsys, *argv)
    assert code == 0 and "(2 already done, nothing left to make)" in stdout, err


def test_absurd_requests_are_refused_with_the_memory_they_need(tmp_path, monkeypatch, capsys, tiny_pipe) -> None:
    with pytest.raises(OutputError, match=r"more than Pillow opens.*--out-dir"):
        check_in_memory(1_000_000, 1, 28, nrow=1_000_000)  # one row of a million digits
    monkeypatch.setattr(outputs, "physical_memory", lambda: 8 << 30)
    with pytest.raises(OutputError, match=r"about 116\.8 GiB of memory, more than this machine has \(8\.0 GiB\)"):
        check_in_memory(10_000_000, 1, 28, nrow=None)
    check_in_memory(1000, 1, 28, nrow=10)
    code, _, err = run(capsys, "generate", str(tiny_pipe[1]), "-n", "10000000", "-o", str(tmp_path / "x.png"))
    assert code == 2 and "--out-dir" in err and not (tmp_path / "x.png").exists()


# -- evaluation counts, help, cards ----------------------------------------------------------------------
def test_eval_count_is_rounded_up_to_whole_classes() -> None:
    with pytest.warns(UserWarning, match="n=15 is not a multiple of the 10 classes: generating 20 samples"):
        assert balanced_count(15, 10) == 20
    assert balanced_count(20, 10) == 20 and balanced_count(7, 1) == 7


def test_every_option_has_help() -> None:
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not (helps.get(name) or "").strip():
                        missing.append(f"{path} {name} (command)")
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "arvision")
    assert not missing, "options without help: " + ", ".join(missing)


def test_cards_describe_their_own_data_and_carry_metrics(tmp_path, tiny_pipe) -> None:
    assert card_description("MNIST digits", kind="vq tokenizer", preset="mnist-vq", data="mnist") == "MNIST digits"
    own = card_description("MNIST digits", kind="vq tokenizer", preset="mnist-vq", data="photos/")
    assert "MNIST" not in own and "photos/" in own and "mnist-vq preset" in own
    other_tok = card_description("raster on mnist-vq", kind="raster generator", preset="mnist-raster", data="mnist",
                                 tokenizer="my-vq", preset_tokenizer="mnist-vq")  # fmt: skip
    assert "my-vq" in other_tok and other_tok != "raster on mnist-vq"
    pipe, _ = tiny_pipe
    d = pipe.save_pretrained(tmp_path / "m", info={"description": "tiny"})
    sha = read_model_config(d)["weights_sha256"]
    record_metrics(d, {"fid": 12.345678, "class_accuracy": 0.99, "seconds_per_image": 1.0, "sampling": {"cfg": 2.0}},
                   eval_data="10 samples vs mnist:test")  # fmt: skip
    meta = read_model_config(d)
    assert meta["info"]["metrics"] == {"fid": 12.3457, "class_accuracy": 0.99, "sampling": {"cfg": 2.0}}
    assert meta["info"]["description"] == "tiny" and meta["weights_sha256"] == sha


@pytest.mark.parametrize("name", ["mnist-raster", "mnist-scale", "mnist-markov-scale", "mnist-neighbor", "mnist-masked",
                                  "mnist-mar", "mnist-tokenbridge", "mnist-flexvar", "mnist-ctf"])  # fmt: skip
def test_shipped_generator_cards_carry_measured_metrics(name) -> None:
    from arvision.hub import resolve

    info = read_model_config(resolve(name))["info"]
    assert info["metrics"]["fid"] > 0 and 0.9 < info["metrics"]["class_accuracy"] <= 1 and info["eval_data"]


def test_a_tokenizer_trained_on_a_folder_does_not_inherit_the_mnist_description(tmp_path, capsys) -> None:
    from arvision.data import save_image
    from arvision.presets import get_tokenizer_preset

    for i in range(12):
        save_image(torch.rand(1, 1, 16, 16) * 2 - 1, tmp_path / "imgs" / f"{i}.png", padding=0)
    out = tmp_path / "tok"
    code, _, err = run(capsys, "train", "tokenizer", "--preset", "tiny-vq", "--data", str(tmp_path / "imgs"), "--steps", "1",
                       "--batch-size", "4", "--out", str(out), "--no-progress")  # fmt: skip
    assert code == 0, err
    description = read_model_config(out)["info"]["description"]
    assert description != get_tokenizer_preset("tiny-vq").description and str(tmp_path / "imgs") in description
