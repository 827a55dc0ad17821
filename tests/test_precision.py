"""bf16 sampling (``precision="bf16"``) and the scoped process settings of ``arvision.runtime``.

fp32 must stay bit-identical to code that never heard of precision (the official-parity and
regression-token tests check that against fixtures); bf16 must keep sampling in float32 and give
nearly the same tokens; memory settings must not outlive the call that made them.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading

import pytest
import torch

import arvision
from arvision import runtime
from arvision.nn.linear import Linear, linear

needs_bf16 = pytest.mark.skipif(not runtime.cpu_has_bf16(), reason="this CPU has no AVX512-BF16/AMX")
needs_glibc = pytest.mark.skipif(runtime._LIBC is None, reason="glibc (Linux) only")


@pytest.fixture(scope="module")
def pipe():
    return arvision.load("mnist-scale")


def test_precision_is_checked(monkeypatch) -> None:
    assert runtime.check_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'.*'fp32'"):
        runtime.check_precision("fp16", "cpu")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="AVX512-BF16 or AMX.*use precision 'fp32'"):
        runtime.check_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="not on meta"):
        runtime.check_precision("bf16", "meta")


def test_pipeline_refuses_bf16_before_any_work(pipe, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(type(pipe.generator), "step", lambda *a, **k: pytest.fail("sampled before the check"))
    with pytest.raises(ValueError, match="AVX512-BF16"):
        pipe.sample([1], 1, precision="bf16")


def test_fp32_is_the_default_and_unchanged(pipe) -> None:
    a = pipe.sample([1, 7], 2, seed=3)
    b = pipe.sample([1, 7], 2, seed=3, precision="fp32")
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)


@needs_bf16
def test_bf16_samples_in_float32_and_agrees_with_fp32(pipe) -> None:
    seen = []
    out = pipe.sample(None, 1, seed=0, top_k=1, precision="bf16", callback=lambda info: seen.append(info.logits.dtype))
    ref = pipe.sample(None, 1, seed=0, top_k=1)
    assert seen and set(seen) == {torch.float32}  # guidance, top-k/top-p and softmax never in bf16
    assert out.images.dtype == torch.float32 and 0 <= out.images.min() and out.images.max() <= 1
    # the coarse scales (1x1, 2x2) agree; a differing token conditions every later scale, so
    # later tokens drift apart in some images while the images stay close
    agree = (out.tokens[:, :5] == ref.tokens[:, :5]).double().mean().item()
    assert agree >= 0.9, f"greedy bf16 coarse tokens agree with fp32 on only {agree:.1%}"
    assert (out.images - ref.images).abs().mean() < 0.05


@needs_bf16
@pytest.mark.parametrize("amx", [False, True])
def test_bf16_kv_cache_and_packed_linear(monkeypatch, amx) -> None:
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: amx)
    gen = arvision.load("mnist-raster").generator
    assert gen.transformer.new_cache(2, 4).k.dtype == torch.float32
    with runtime.precision_scope("bf16", "cpu"):
        # the cache holds what attention runs in: float32 between the bf16 matmuls on a CPU
        # without AMX (faster there, and more accurate), bf16 with AMX
        assert gen.transformer.new_cache(2, 4).k.dtype == (torch.bfloat16 if amx else torch.float32)
    layer = Linear(64, 32)
    x = torch.randn(5, 64)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
        with runtime.precision_scope("bf16", "cpu"):
            y = linear(x, layer, layer.bias, "silu")
        assert y.dtype == torch.bfloat16
        assert torch.allclose(y.float(), torch.nn.functional.silu(ref), atol=3e-2, rtol=3e-2)
        assert linear(x, layer, layer.bias).dtype == torch.float32  # after the scope: fp32 again (repacked)


@needs_bf16
def test_cpu_bf16_attention_runs_in_float32_without_amx(monkeypatch) -> None:
    from arvision.nn.transformer import attend

    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: False)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, dtype=torch.bfloat16) for n in (1, 9, 9))
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.25)
    with runtime.precision_scope("bf16", "cpu"):
        out = attend(q, k, v, attn_mask=None, is_causal=False, scale=0.25)
        bf16 = torch.nn.functional.scaled_dot_product_attention(q, k.float(), v, scale=0.25)  # what autocast would run
    assert out.dtype == torch.float32 and torch.equal(out, ref)  # float32 arithmetic, not autocast's bf16
    assert bf16.dtype == torch.bfloat16 and not torch.equal(bf16.float(), ref)
    # outside autocast attention is SDPA as called, bit for bit
    assert torch.equal(attend(q.float(), k.float(), v.float(), attn_mask=None, is_causal=False, scale=0.25), ref)
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: True)  # with AMX: autocast's bf16 attention
    with runtime.precision_scope("bf16", "cpu"):
        assert torch.equal(attend(q, k.float(), v, attn_mask=None, is_causal=False, scale=0.25), bf16)


@needs_bf16
def test_cli_precision_and_eval_records_it(tmp_path, capsys) -> None:
    from arvision.cli import main

    assert main(["generate", "mnist-scale", "--classes", "3", "-n", "2", "--precision", "bf16", "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    with pytest.raises(SystemExit):
        main(["generate", "mnist-scale", "--precision", "fp16"])
    assert main(["eval", "generator", "mnist-scale", "-n", "10", "--batch-size", "10", "--ref", "mnist:test:50",
                 "--precision", "bf16", "--out", str(tmp_path / "ev"), "--no-progress"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "ev" / "run.json").read_text())["sampling_precision"] == "bf16"
    capsys.readouterr()


# -- memory settings --------------------------------------------------------------------------
def _region(t: torch.Tensor) -> str:
    """The /proc/self/maps name of the mapping holding ``t``'s data: "[heap]" or "" (its own mmap)."""
    ptr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            if lo <= ptr < hi:
                return parts[5] if len(parts) > 5 else ""
    raise AssertionError("pointer in no mapping")


def _free_heap_bytes() -> int:
    """Free bytes held in malloc's arenas (glibc's mallinfo2 ``fordblks``)."""
    fn = getattr(runtime._LIBC, "mallinfo2", None)
    if fn is None:
        pytest.skip("glibc without mallinfo2 (< 2.33)")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip

    fn.restype = MallInfo2
    return int(fn().fordblks)


@needs_glibc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps")
def test_sample_leaves_malloc_as_it_found_it(pipe, monkeypatch) -> None:
    monkeypatch.setenv("ARVISION_REUSE_MEMORY", "1")
    runtime.release_memory()  # whatever an earlier test opted into
    big = 96 << 20
    with runtime.reuse_freed_memory() as active:
        inside = torch.empty(big, dtype=torch.uint8)
        if not active or _region(inside) != "[heap]":
            pytest.skip("the heap cannot grow here (glibc served the block with mmap anyway)")
        del inside
    seen = []
    pipe.sample([1], 1, callback=lambda info: seen.append(runtime.memory_reuse_state()))
    assert seen and all(s["active"] and s["scopes"] == 1 for s in seen)  # in force during the call
    assert runtime.memory_reuse_state() == {"scopes": 0, "opt_in": False, "active": False}
    # larger than all free heap memory, so that no freed chunk (kept in glibc's bins, its pages
    # returned by malloc_trim) can serve it: glibc's threshold alone decides heap or own mmap
    after_size = max(big, _free_heap_bytes() + (64 << 20))
    if after_size >= 1 << 30:
        pytest.skip("the heap holds too much free memory to tell the thresholds apart")
    after = torch.empty(after_size, dtype=torch.uint8)
    assert _region(after) == "", "a large block after sample() still comes from the heap: the setting leaked"


@needs_glibc
def test_reuse_scopes_nest_across_threads_and_respect_the_opt_in(monkeypatch) -> None:
    monkeypatch.setenv("ARVISION_REUSE_MEMORY", "1")
    runtime.release_memory()
    inside, go = threading.Barrier(3), threading.Event()

    def worker() -> None:
        with runtime.reuse_freed_memory():
            inside.wait()
            go.wait()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    with runtime.reuse_freed_memory():
        assert runtime.memory_reuse_state() == {"scopes": 3, "opt_in": False, "active": True}
    assert runtime.memory_reuse_state()["active"]  # the threads' scopes are still open
    go.set()
    for t in threads:
        t.join()
    assert runtime.memory_reuse_state() == {"scopes": 0, "opt_in": False, "active": False}

    assert runtime.keep_freed_memory()  # the explicit process-wide opt-in outlives scopes
    with runtime.reuse_freed_memory():
        pass
    assert runtime.memory_reuse_state() == {"scopes": 0, "opt_in": True, "active": True}
    runtime.release_memory()
    assert runtime.memory_reuse_state()["active"] is False

    monkeypatch.setenv("ARVISION_REUSE_MEMORY", "0")
    with runtime.reuse_freed_memory() as active:
        assert not active


def test_bf16_top_k_draws_come_from_the_same_distribution_as_fp32() -> None:
    from arvision.samplers.logits import sample_logits, sampling_probs

    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).repeat(40000, 1)
    want = sampling_probs(logits[:1], temperature=0.8, top_k=5, top_p=0.9)[0]
    fp32 = sample_logits(logits, temperature=0.8, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sample_logits(logits, temperature=0.8, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert set(low.tolist()) <= set(want.nonzero().flatten().tolist())  # only the kept candidates
    for ids in (fp32, low):
        freq = torch.bincount(ids, minlength=50).double() / ids.numel()
        assert (freq - want.double()).abs().max() < 0.01  # 40,000 draws: within ~4 sigma
    assert not torch.equal(fp32, low)  # other draws: the fp32 path stays the official one


def test_fp32_decoding_is_unchanged_after_a_bf16_decode_switched_the_decoder_to_channels_last() -> None:
    from arvision.presets import TOKENIZER_PRESETS

    torch.manual_seed(0)
    tp = TOKENIZER_PRESETS["tiny-vq"]
    tok = tp.model_class(tp.config).eval()
    ids = torch.randint(0, tok.codebook_size, (2, tok.num_tokens), generator=torch.Generator().manual_seed(0))
    before = tok.decode(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = tok.decode(ids)
    assert next(p for p in tok.decoder.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(tok.decode(ids), before) and (low.float() - before).abs().max() < 0.1
