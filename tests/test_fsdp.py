"""FSDP generator training (``--fsdp``): N processes == 1 process, resume across world sizes,
bf16 mixed precision and activation checkpointing.

The multi-process checks share one ``torchrun`` launch of 2 CPU processes (gloo) that runs this
file as a script (``worker``): several short runs in a row, each a ``train_generator`` call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import arvision
from arvision.cli import main
from arvision.data import MnistDataset, save_image
from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS
from arvision.train.common import CHECKPOINT_NAME
from arvision.train.fsdp import Parallelism, checkpoint_blocks
from arvision.train.generator import TOKEN_CACHE, train_generator

STEPS, STOP = 4, 2
# 2 processes vs 1 differ only in float summation order (gradient reduce-scatter, the grad norm)
TOL = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A tiny multi-scale tokenizer, and beside it ``images``: 80 MNIST digits in class folders
    (encoding them takes a moment, the whole of MNIST half a minute)."""
    root = tmp_path_factory.mktemp("tok")
    p = TOKENIZER_PRESETS["tiny-msvq"]
    torch.manual_seed(0)
    tok = p.model_class(p.config)
    tok.quantize.embedding.weight.data.normal_()
    mnist = MnistDataset("train", image_size=p.config.image_size, channels=p.config.in_channels)
    for i in range(80):
        image, label = mnist[i]
        save_image(image[None], root / "images" / str(int(label)) / f"{i}.png", nrow=1, padding=0)
    return tok.save_pretrained(root / "tiny-msvq")


def run_kw(tokenizer: Path) -> dict:
    data = str(tokenizer.parent / "images")
    return dict(preset="tiny-scale", tokenizer=str(tokenizer), data=data, steps=STEPS, batch_size=8, ema=0.9, progress=False)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return arvision.load(out).generator.state_dict()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], **TOL, msg=lambda m: f"{k}: {m}")


def test_one_process_fsdp_is_plain_training_bitwise(tmp_path, tokenizer) -> None:
    """--fsdp in one process (a one-process group: nothing to shard) computes exactly what plain
    training does, activation checkpointing included, and writes the same checkpoint layout."""
    kw = run_kw(tokenizer)
    plain = train_generator(tmp_path / "plain", **kw)
    fsdp = train_generator(tmp_path / "fsdp", fsdp=True, activation_checkpointing=True, **kw)
    assert fsdp["fsdp"] is True and fsdp["final_loss"] == plain["final_loss"]
    assert_same(weights(tmp_path / "plain"), weights(tmp_path / "fsdp"), exact=True)
    a, b = (torch.load(tmp_path / d / CHECKPOINT_NAME, weights_only=True) for d in ("plain", "fsdp"))
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, s in a["optimizer"]["state"].items():
        for name, t in s.items():
            assert torch.equal(t, b["optimizer"]["state"][i][name]), (i, name)
    assert not torch.distributed.is_initialized()  # the one-process group is gone again


@pytest.mark.parametrize("preset", ["tiny-scale", "tiny-raster", "tiny-mar"])
def test_activation_checkpointing_gives_the_same_gradients(preset) -> None:
    from arvision.nn.transformer import Block

    p = GENERATOR_PRESETS[preset]
    torch.manual_seed(0)
    tok = TOKENIZER_PRESETS[p.tokenizer].model_class(TOKENIZER_PRESETS[p.tokenizer].config)
    model = p.model_class(p.build_config(tok, 10))
    torch.manual_seed(1)
    tokens = tok.encode(torch.rand(4, tok.config.in_channels, tok.config.image_size, tok.config.image_size) * 2 - 1)
    labels = torch.tensor([0, 3, 5, 10])

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        inputs, extra = model.training_inputs(tokens, labels, tok, torch.Generator().manual_seed(2))
        model.training_loss(model(**inputs), tokens, extra)[0].backward()
        return {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}

    before = grads()
    assert checkpoint_blocks(model) == sum(isinstance(m, Block) for m in model.modules()) >= 2
    after = grads()
    assert before.keys() == after.keys() and len(before) == sum(1 for _ in model.parameters())
    for n in before:
        assert torch.equal(before[n], after[n]), n


def test_bf16_mixed_precision(tmp_path, tokenizer) -> None:
    """bf16 runs on CPU (gloo): blocks compute from bf16 weights, the master weights, checkpoint and
    saved model stay fp32, and a few steps land close to the fp32 run."""
    from arvision.nn.transformer import Block

    seen: set[torch.dtype] = set()
    original = Block.forward

    def spy(self, x, cond, **kw):
        seen.add(self.mlp.fc1.weight.dtype)
        return original(self, x, cond, **kw)

    kw = {**run_kw(tokenizer), "steps": STOP}
    fp32 = train_generator(tmp_path / "fp32", **kw)
    Block.forward = spy
    try:
        bf16 = train_generator(tmp_path / "bf16", fsdp=True, mixed_precision="bf16", **kw)
    finally:
        Block.forward = original
    assert seen == {torch.bfloat16}
    assert bf16["mixed_precision"] == "bf16" and abs(bf16["final_loss"] - fp32["final_loss"]) < 0.02
    a, b = weights(tmp_path / "fp32"), weights(tmp_path / "bf16")
    for k in a:
        assert b[k].dtype == torch.float32
        torch.testing.assert_close(a[k], b[k], atol=5e-3, rtol=0)  # a few lr-sized steps in bf16 arithmetic
    ckpt = torch.load(tmp_path / "bf16" / CHECKPOINT_NAME, weights_only=True)
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values())


def test_option_errors(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="add --fsdp"):
        Parallelism(mixed_precision="bf16")
    with pytest.raises(ValueError, match="choose one of none, bf16"):
        Parallelism(fsdp=True, mixed_precision="fp16")
    with pytest.raises(ValueError, match="cpu .* or cuda"):
        Parallelism(fsdp=True).check_device("meta")
    with pytest.raises(ValueError, match="--preset"):
        train_generator(tmp_path / "none", fsdp=True)
    assert not torch.distributed.is_initialized()  # a mistake found early leaves no one-process group behind
    code = main(["train", "generator", "--preset", "tiny-scale", "--out", str(tmp_path / "x"), "--mixed-precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and "add --fsdp" in err and "Traceback" not in err and not (tmp_path / "x" / TOKEN_CACHE).exists()


def torchrun(jobs: list[dict], tmp_path: Path) -> list[dict]:
    """Run ``jobs`` (keyword arguments of ``train_generator``) in turn on 2 CPU processes; their results."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, json.dumps(jobs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(arvision.__file__).parents[1])}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return [json.loads(line[len("RESULT ") :]) for line in res.stdout.splitlines() if line.startswith("RESULT ")]


@pytest.mark.slow
def test_two_processes_match_one_and_resume_across_world_sizes(tmp_path, tokenizer) -> None:
    """2 FSDP processes vs 1 plain process on the same global batch; a run stopped on 2 processes
    resumes on 1 and the reverse; a 2 -> 2 resume is bitwise (the checkpoint holds the whole state)."""
    kw = run_kw(tokenizer)
    d = {name: tmp_path / name for name in ("one", "one_stop", "two", "two_stop", "two_stop_copy", "two_bf16")}
    one = train_generator(d["one"], **kw)
    assert train_generator(d["one_stop"], stop_after=STOP, **kw) == {"stopped_at": STOP}
    one_at_stop = torch.load(d["one_stop"] / CHECKPOINT_NAME, weights_only=True)

    fsdp = {"fsdp": True}
    two, stopped, _, resumed, one_to_two, bf16 = torchrun([
        {"out_dir": str(d["two"]), **kw, **fsdp},
        {"out_dir": str(d["two_stop"]), **kw, **fsdp, "activation_checkpointing": True, "stop_after": STOP},
        {"copy": [str(d["two_stop"]), str(d["two_stop_copy"])]},
        {"out_dir": str(d["two_stop_copy"]), "resume": True, "progress": False, **fsdp},  # 2 -> 2
        {"out_dir": str(d["one_stop"]), "resume": True, "progress": False, **fsdp},  # 1 -> 2
        {"out_dir": str(d["two_bf16"]), **kw, **fsdp, "mixed_precision": "bf16", "steps": STOP},
    ], tmp_path)  # fmt: skip
    assert two["processes"] == 2 and two["fsdp"] is True and stopped == {"stopped_at": STOP}
    assert resumed["steps"] == one_to_two["steps"] == STEPS and one_to_two["processes"] == 2
    assert abs(two["final_loss"] - one["final_loss"]) <= 2e-4  # the global batch's loss (mean over the ranks' shares)
    assert_same(weights(d["two"]), weights(d["one"]))
    assert_same(weights(d["two_stop_copy"]), weights(d["two"]), exact=True)
    assert_same(weights(d["one_stop"]), weights(d["one"]))
    assert bf16["mixed_precision"] == "bf16" and abs(bf16["final_loss"] - one["final_loss"]) < 0.1

    # the 2-process checkpoint has the 1-process layout (whole tensors, index-keyed optimizer state) and values
    two_at_stop = torch.load(d["two_stop"] / CHECKPOINT_NAME, weights_only=True)
    assert two_at_stop.keys() == one_at_stop.keys() and two_at_stop["step"] == STOP
    assert two_at_stop["optimizer"]["param_groups"] == one_at_stop["optimizer"]["param_groups"]
    assert_same(two_at_stop["model"], one_at_stop["model"])
    assert_same(two_at_stop["ema"], one_at_stop["ema"])
    for i, s in one_at_stop["optimizer"]["state"].items():
        assert_same(s, two_at_stop["optimizer"]["state"][i])
    assert torch.equal(two_at_stop["drop_rng"], one_at_stop["drop_rng"])

    train_generator(d["two_stop"], resume=True, progress=False)  # 2 -> 1
    assert_same(weights(d["two_stop"]), weights(d["one"]))


def worker(jobs: list[dict]) -> None:
    """One torchrun process: the jobs in turn, in one process group (torchrun's store cannot host
    a second group after the first is destroyed, so each run's shutdown only synchronizes)."""
    import torch.distributed as dist

    from arvision import distributed

    dist.init_process_group("gloo")
    distributed.shutdown = lambda info: dist.barrier()
    for job in jobs:
        if "copy" in job:  # a run directory as it is now, to resume twice
            if dist.get_rank() == 0:
                shutil.copytree(*job["copy"])
            dist.barrier()
            result = {}
        else:
            result = train_generator(**job)
        if dist.get_rank() == 0:
            print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
