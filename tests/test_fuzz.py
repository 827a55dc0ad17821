"""Fuzz tests: random command lines and damaged model files give a clear error or success, never a
traceback and never a hang (issue 17).

* CLI: argv built from the real parser (every subcommand and option, valid and invalid values, odd
  strings, negative and huge numbers, missing and unwritable paths) run in-process through
  ``arvision.cli.main``: the exit code is 0 or 2 and an error is one ``arvision CMD: error:`` line.
* Model files: config.json and the safetensors header of small model directories mutated (keys
  dropped, wrong types, huge or negative sizes, truncated files, garbage, header-length lies):
  ``arvision.load`` succeeds or raises a ``ValueError``/``TypeError`` (``ModelFileError``...)
  with a message, never ``KeyError``/``IndexError``/``RuntimeError``/``struct.error``/...

Hypothesis runs derandomized with a fixed budget, so CI sees the same examples every time; every
traceback found is fixed and kept below as a regression example (``@example``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import arvision  # noqa: E402
import arvision.modelcheck  # noqa: E402
from arvision.cli import build_parser, main  # noqa: E402
from arvision.modeling import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=list(HealthCheck))  # fmt: skip
TIMEOUT_S = 20  # per example: far above any example's cost (< 2 s), far below a hang


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- fixtures: a tiny world to point the commands at ------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from arvision.pipeline import Pipeline
    from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS

    root = tmp_path_factory.mktemp("fuzz")
    gp = GENERATOR_PRESETS["tiny-raster"]
    tp = TOKENIZER_PRESETS[gp.tokenizer]
    tok = tp.model_class(tp.config)
    pipe_dir = Pipeline(tok, gp.model_class(gp.build_config(tok, 2))).save_pretrained(root / "pipe", info={"description": "t"})
    images = root / "images"
    for c in range(2):
        (images / str(c)).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16), 60 * i + 20 * c, np.uint8)).save(images / str(c) / f"{i}.png")
    (root / "file.txt").write_text("not a model")
    return {"root": root, "pipe": pipe_dir, "tok": pipe_dir / "tokenizer", "images": images,
            "image": images / "0" / "0.png", "file": root / "file.txt"}  # fmt: skip


# -- (a) the command line ---------------------------------------------------------------------------
SKIPPED_COMMANDS = {
    ("serve",),  # a server answers until stopped: it never returns by design (tests/test_serve.py)
    ("demo",),  # a fixed showcase of every shipped model (tests/test_cli.py runs it)
}
# Options whose values are file or folder names: drawn from the world, missing and odd paths.
OUTPUTS = {"-o", "--out", "--out-dir", "--save-individual", "--comparison"}
INTS = ["0", "1", "2", "-1", "-7", "3", "100000000000", "abc", "1.5", ""]
FLOATS = ["0", "0.5", "1.5", "-1", "nan", "inf", "-inf", "1e308", "x", ""]
LISTS = ["1,2", "1", "0", "-1", "a,b", "", "1,,2", "3,3,3", "99999999"]
ODD = ["", "-", "\u00e9\u4e2d", "a" * 300, "%s%n", "..", "x\x00y"]


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf subcommand of the real parser, by its path (``("train", "generator")``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    out = {}
    for name, sub in subs[0].choices.items():
        out.update(commands(sub, path + (name,)))
    return out


PARSERS = {k: v for k, v in commands(build_parser()).items() if k not in SKIPPED_COMMANDS}


def base_args(cmd: tuple[str, ...], w: dict[str, Path]) -> list[str]:
    """Arguments that keep a valid run cheap (a tiny model, tiny data, few images and steps);
    fuzzed options come after them, so they can still override every one."""
    out = str(w["root"] / "out")
    if cmd == ("generate",):
        return [str(w["pipe"]), "-n", "1", "-o", out + ".png"]
    if cmd == ("edit",):
        return [str(w["pipe"]), "--image", str(w["image"]), "--class", "1", "-o", out + ".png"]
    if cmd == ("reconstruct",):
        return [str(w["tok"]), str(w["image"]), "-o", out + ".png"]
    if cmd == ("info",):
        return [str(w["pipe"])]
    if cmd == ("eval", "generator"):
        return [str(w["pipe"]), "-n", "4", "--ref", str(w["images"]), "--out", out, "--kid-subset-size", "2"]
    if cmd == ("eval", "tokenizer"):
        return [str(w["tok"]), "--data", str(w["images"]), "--limit", "2", "--features", "none"]
    if cmd == ("bench", "tokenizers"):
        return [str(w["tok"]), "--data", str(w["images"]), "--limit", "2", "--features", "none", "--out", out]
    if cmd == ("tune",):
        return [str(w["pipe"]), "-n", "2", "--ref", str(w["images"]), "--grid", "cfg=1", "--out", out]
    if cmd == ("train", "tokenizer"):
        return ["--preset", "tiny-vq", "--data", str(w["images"]), "--steps", "1", "--eval-limit", "2", "--out", out, "--no-progress"]
    if cmd == ("train", "generator"):
        return ["--preset", "tiny-raster", "--tokenizer", str(w["tok"]), "--data", str(w["images"]), "--steps", "1", "--out", out,
                "--no-progress"]  # fmt: skip
    return []


def values_for(action: argparse.Action, w: dict[str, Path]) -> st.SearchStrategy[str]:
    if action.choices:
        return st.sampled_from([*map(str, action.choices), "bogus", ""])
    if action.type is int:
        return st.sampled_from(INTS)
    if action.type is float:
        return st.sampled_from(FLOATS)
    if action.type is not None and action.type is not str:  # the CLI's own list parsers
        return st.sampled_from(LISTS)
    paths = [str(w[k]) for k in ("pipe", "tok", "images", "image", "file")] + ["mnist", "mnist-vq", "/nonexistent/x", "mnist:test:5"]
    if set(action.option_strings) & OUTPUTS:
        root = w["root"]
        paths = [str(root / "o.png"), str(root / "odir"), str(w["file"]), str(w["image"]), "/proc/no/such.png",
                 str(root / "o.bogus"), str(w["pipe"])]  # fmt: skip
    return st.sampled_from(paths + ODD)


@st.composite
def argvs(draw, w: dict[str, Path]) -> list[str]:
    cmd = draw(st.sampled_from(sorted(PARSERS)))
    parser = PARSERS[cmd]
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    argv = [*cmd, *base_args(cmd, w)]
    for action in draw(st.lists(st.sampled_from(options), max_size=3)) if options else []:
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0:
            argv.append(draw(values_for(action, w)))
    return argv


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    err = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), time_limit(TIMEOUT_S):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: --help / usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        os.chdir(old)
    return code, err.getvalue()


def check_cli(argv: list[str], w: dict[str, Path]) -> None:
    code, err = run_cli(argv, w["root"])
    assert code in (0, 2), f"exit code {code} for {argv}: {err[-2000:]}"
    assert "Traceback" not in err, err
    if code == 2:
        last = err.strip().splitlines()[-1]
        assert ": error:" in last, f"no one-line error for {argv}: {err[-2000:]}"
    out = w["root"] / "out"
    if out.is_dir():  # each example starts from the same world
        shutil.rmtree(out)


@pytest.mark.filterwarnings("ignore")
def test_fuzz_command_line(world, small_machine) -> None:
    @settings(FUZZ, max_examples=120)
    @given(argv=argvs(world))
    # regressions: tracebacks the fuzzer found, kept so they stay fixed
    @example(argv=["generate", str(world["pipe"]), "-n", "1", "--device", "banana"])
    @example(argv=["generate", str(world["pipe"]), "-n", "1", "--device", "cuda:7"])
    @example(argv=["reconstruct", str(world["tok"]), str(world["file"])])
    # found when `bench tokenizers` joined the commands: eval generator failed after sampling, or deep in torch
    @example(argv=[*base_args(("eval", "generator"), world), "--refiner", str(world["pipe"])])
    @example(argv=[*base_args(("eval", "generator"), world), "-n", "100000000000"])
    @example(argv=[*base_args(("eval", "generator"), world), "--kid-subsets", "0"])
    @example(argv=[*base_args(("generate",), world), "-o", "a" * 300])  # a file name too long for the file system
    def fuzz(argv: list[str]) -> None:
        check_cli(argv, world)

    fuzz()


# -- (b) model files ---------------------------------------------------------------------------------
MODEL_KINDS = ["tok", "pipe"]
JUNK = [None, True, -1, 0, 1, 3, -(2**31), 10**9, 2**40, 2**64, 1.5, float("nan"), "", "x", [], [1, -1], {}, {"a": 1}]


def config_paths(meta: dict) -> list[tuple]:
    """Every key path of ``meta`` (nested dicts and list items), e.g. ``("config", "transformer", "depth")``."""
    out: list[tuple] = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                out.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                out.append(path + (i,))
                walk(v, path + (i,))

    walk(meta, ())
    return out


def _set(meta, path: tuple, value, *, delete: bool = False) -> None:
    node = meta
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


@st.composite
def config_mutations(draw, meta: dict) -> tuple:
    paths = config_paths(meta)
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "bytes"]))
    if kind == "bytes":
        return ("bytes", draw(st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"model_type": 5, "config": {}}'])))
    return (kind, draw(st.sampled_from(paths)), draw(st.sampled_from(JUNK)))


@st.composite
def header_mutations(draw) -> tuple:
    kind = draw(st.sampled_from(["length", "truncate", "json", "entry", "append"]))
    if kind == "length":
        return (kind, draw(st.sampled_from([0, 1, 7, 2**20, 2**32, 2**63, 2**64 - 1])))
    if kind == "truncate":
        return (kind, draw(st.sampled_from([0, 3, 8, 20, 100, -1])))
    if kind == "json":
        return (kind, draw(st.sampled_from([b"[]", b"{", b"null", b'{"a": 1}', b'{"__metadata__": 3}', b"\xff" * 4])))
    if kind == "append":
        return (kind, draw(st.sampled_from([b"\0", b"garbage" * 10])))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    return (kind, draw(st.integers(0, 10**6)), field, draw(st.sampled_from(JUNK + ["F16", "I64", [2, 2], [0, 2**62]])))


def mutate_config(d: Path, mutation: tuple) -> None:
    path = d / CONFIG_NAME
    if mutation[0] == "bytes":
        path.write_bytes(mutation[1])
        return
    meta = json.loads(path.read_text())
    _set(meta, mutation[1], mutation[2], delete=mutation[0] == "delete")
    path.write_text(json.dumps(meta))


def mutate_header(d: Path, mutation: tuple) -> None:
    path = d / WEIGHTS_NAME
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header, body = data[8 : 8 + n], data[8 + n :]
    kind = mutation[0]
    if kind == "length":
        data = struct.pack("<Q", mutation[1]) + data[8:]
    elif kind == "truncate":
        data = data[: mutation[1]]
    elif kind == "append":
        data = data + mutation[1]
    else:
        if kind == "json":
            header = mutation[1]
        else:
            h = json.loads(header)
            names = sorted(k for k in h if k != "__metadata__")
            name = names[mutation[1] % len(names)]
            if mutation[2] is None:
                del h[name]
            else:
                h[name][mutation[2]] = mutation[3]
            header = json.dumps(h).encode()
        data = struct.pack("<Q", len(header)) + header + body
    path.write_bytes(data)
    meta = json.loads((d / CONFIG_NAME).read_text())  # let the header reach the parser, not the sha256 check
    meta.pop("weights_sha256", None)
    (d / CONFIG_NAME).write_text(json.dumps(meta))


def check_load(d: Path) -> None:
    """``arvision.load(d)`` succeeds or raises a clear ValueError/TypeError, in time."""
    try:
        with time_limit(TIMEOUT_S):
            arvision.load(d)
    except (ValueError, TypeError) as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        assert not isinstance(e, (UnicodeError,)), repr(e)


def fresh_copy(world, kind: str, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    return Path(shutil.copytree(world[kind], dst))


@pytest.fixture()
def small_machine(monkeypatch):
    """The tiny models have < 200 tensors and < 1 MB of weights: on a "machine" of 256 MB free and
    2,000 tensors at most, absurd sizes and depths are refused in well under a second each."""
    monkeypatch.setattr(arvision.modelcheck, "MAX_TENSORS", 2000)
    monkeypatch.setattr(arvision.modelcheck, "available_memory", lambda: 256 << 20)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_fuzz_config_json(world, kind, small_machine) -> None:
    target = world["root"] / f"cfg-{kind}"
    sub = world[kind] if kind == "tok" else world["pipe"]
    meta = json.loads((sub / CONFIG_NAME).read_text())

    @settings(FUZZ, max_examples=80)
    @given(mutation=config_mutations(meta))
    @example(mutation=("set", ("config",), []))
    @example(mutation=("set", ("model_type",), None))
    @example(mutation=("set", ("info",), [1, -1]))
    def fuzz(mutation: tuple) -> None:
        d = fresh_copy(world, kind, target)
        mutate_config(d, mutation)
        check_load(d)

    fuzz()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_fuzz_safetensors_header(world, kind, small_machine) -> None:
    target = world["root"] / f"hdr-{kind}"

    @settings(FUZZ, max_examples=50)
    @given(mutation=header_mutations())
    @example(mutation=("length", 2**64 - 1))
    @example(mutation=("entry", 0, "data_offsets", [0, 2**62]))
    def fuzz(mutation: tuple) -> None:
        d = fresh_copy(world, kind, target)
        mutate_header(d, mutation)
        check_load(d)

    fuzz()
