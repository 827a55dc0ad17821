"""``arvision tune``: grid parsing and checks, the choice under the accuracy floor, the tuned model."""

from __future__ import annotations

import json

import pytest

import arvision
from arvision.pipeline import Pipeline
from arvision.tune import grid_points, parse_grid, tune

from test_generators import build


def test_grid_is_typed_like_the_settings() -> None:
    grid = parse_grid(["cfg=0.5, 1", "cfg-schedule=linear", "top_k=0,5", "scales=1/2/4/7", "num_steps=none"])
    assert grid == {"cfg": [0.5, 1.0], "cfg_schedule": ["linear"], "top_k": [0, 5], "scales": [(1, 2, 4, 7)], "num_steps": [None]}


@pytest.mark.parametrize("spec, match", [
    ("cfg=", "no values"), ("cfg", "NAME=V1"), ("guidance=1,2", "not a sampling setting"), ("cfg=high", "not a number"),
])  # fmt: skip
def test_bad_grids_are_refused(spec, match) -> None:
    with pytest.raises(ValueError, match=match):
        parse_grid([spec])


def test_every_point_is_checked_before_any_sampling() -> None:
    tok, gen = build("tiny-scale")
    pipe = Pipeline(tok, gen)
    assert [p["cfg"] for p in grid_points(pipe, {})] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]  # linear schedule: 0 = off
    with pytest.raises(ValueError, match="num_steps"):
        grid_points(pipe, {"cfg": [1.0], "num_steps": [4]})  # the next-scale order has no num_steps


def test_tune_picks_the_best_fid_above_the_floor_and_writes_the_model(tmp_path) -> None:
    pipe = arvision.load("mnist-scale")
    shipped_cfg = pipe.defaults.cfg
    report = tune(pipe, tmp_path, grid={"cfg": [0.0, 0.5, 2.0]}, n=60, min_accuracy=0.9, reference="mnist:train:500",
                  batch_size=60, progress=False, model="mnist-scale")  # fmt: skip
    ok = [r for r in report["rows"] if r["class_accuracy"] >= 0.9]
    assert report["reached_floor"] and report["chosen"] == min(ok, key=lambda r: r["fid"])["settings"]
    tuned = arvision.load(tmp_path / "model")
    assert tuned.defaults.cfg == report["chosen"]["cfg"] and tuned.info["calibration"]["rows"] == json.loads(
        (tmp_path / "calibration.json").read_text())["rows"]
    assert pipe.defaults.cfg == shipped_cfg and "calibration" not in pipe.info  # the loaded pipeline is left as it was
    md = (tmp_path / "calibration.md").read_text()
    assert "**cfg=" in md and "the floor" in md and report["real_data_floor"]["class_accuracy"] > 0.95


def test_an_unreachable_floor_reports_the_best_and_writes_nothing(tmp_path, capsys) -> None:
    from arvision.cli import main

    tok, gen = build("tiny-scale")  # random weights: about one digit in ten is right
    Pipeline(tok, gen).save_pretrained(tmp_path / "tiny", info={"description": "random"})
    code = main(["tune", str(tmp_path / "tiny"), "--out", str(tmp_path / "sweep"), "-n", "40", "--batch-size", "40",
                 "--grid", "cfg=0,1", "--min-accuracy", "0.6", "--ref", "mnist:test:200", "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "sweep" / "calibration.json").read_text())
    assert code == 1 and not report["reached_floor"] and report["chosen"] is None
    assert "no setting reached" in out and "No setting reached the floor" in out
    assert report["best"] == max(report["rows"], key=lambda r: r["class_accuracy"]) and not (tmp_path / "sweep" / "model").exists()


def test_tune_argument_errors(tmp_path) -> None:
    tok, gen = build("tiny-scale")
    pipe = Pipeline(tok, gen)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        tune(pipe, tmp_path, min_accuracy=97)
    with pytest.raises(ValueError, match="MNIST classifier"):
        tune(pipe, tmp_path, features="inception")
