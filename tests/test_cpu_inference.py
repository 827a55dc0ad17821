"""The CPU inference fast paths compute what the plain layers compute.

Packed oneDNN linear weights, the sub-pixel form of upsample + conv, in-place activations in the
decoder and glibc's memory reuse change speed, never results (beyond float rounding), and stay out
of training.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from test_generators import build

from arvision import runtime
from arvision.nn import conv
from arvision.nn.linear import Linear, linear, packed_linear_active, set_packed_linear


@pytest.fixture
def packing():
    yield
    set_packed_linear(True)


def test_packed_linear_matches_f_linear_for_every_input_shape() -> None:
    torch.manual_seed(0)
    layer = Linear(48, 40)
    for shape in [(1, 48), (8, 48), (3, 5, 48), (2, 3, 4, 48)]:
        x = torch.randn(shape)
        with torch.no_grad():
            got = layer(x)
        assert "_packed_weight" in layer.__dict__  # the fast path ran
        torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    x = torch.randn(6, 96)[:, ::2]  # not contiguous
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu_tanh", "silu"])
def test_fused_activations_match_torch(activation) -> None:
    torch.manual_seed(0)
    layer, x = Linear(32, 64), torch.randn(5, 32)
    y = F.linear(x, layer.weight, layer.bias)
    expected = F.gelu(y, approximate="tanh") if activation == "gelu_tanh" else F.silu(y)
    assert torch.equal(linear(x, layer, layer.bias, activation), expected)  # gradients on: plain torch
    with torch.no_grad():
        torch.testing.assert_close(linear(x, layer, layer.bias, activation), expected, rtol=1e-5, atol=1e-6)


def test_packed_weight_follows_weight_updates() -> None:
    """A stale packed copy would silently give the old layer's outputs."""
    torch.manual_seed(0)
    layer, x = Linear(16, 8, bias=False), torch.randn(4, 16)
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2)  # in place
        torch.testing.assert_close(layer(x), 2 * before, rtol=1e-5, atol=1e-5)
        layer.load_state_dict({"weight": torch.randn(8, 16)})
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
        layer.weight = torch.nn.Parameter(torch.randn(8, 16))  # new storage
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
    assert set(layer.state_dict()) == {"weight"}  # the packed copy is not a parameter or buffer


def test_a_used_layer_can_still_be_deep_copied_and_saved(tmp_path) -> None:
    """Regression: the cached oneDNN tensor has no storage, so deepcopy (EMA) and torch.save failed."""
    import copy

    layer, x = Linear(8, 4), torch.randn(2, 8)
    with torch.no_grad():
        expected = layer(x)
    twin = copy.deepcopy(layer)
    torch.save(layer, tmp_path / "layer.pt")
    assert "_packed_weight" in layer.__dict__ and "_packed_weight" not in twin.__dict__
    with torch.no_grad():
        assert torch.equal(twin(x), expected)
        assert torch.equal(torch.load(tmp_path / "layer.pt", weights_only=False)(x), expected)


def test_training_and_other_dtypes_use_the_plain_path(packing) -> None:
    layer, x = Linear(8, 4), torch.randn(2, 8)
    assert not packed_linear_active(x, layer.weight)  # gradients on
    layer(x).sum().backward()
    assert layer.weight.grad is not None and "_packed_weight" not in layer.__dict__
    with torch.no_grad():
        assert not packed_linear_active(x.double(), layer.weight.double())
        set_packed_linear(False)
        assert not packed_linear_active(x, layer.weight)
        assert torch.equal(linear(x, layer, layer.bias), F.linear(x, layer.weight, layer.bias))


def test_layers_are_not_packed_when_memory_is_short(monkeypatch) -> None:
    import arvision.nn.linear as lin

    mem = lin.available_memory()
    assert mem is None or 0 < mem[0] <= mem[1]
    monkeypatch.setattr(lin, "available_memory", lambda: (3 << 30, 8 << 30))  # 3 of 8 GiB free
    assert lin._room_for(1 << 30) and not lin._room_for(2 << 30)  # must leave 1.6 GiB (20 %)
    monkeypatch.setattr(lin, "available_memory", lambda: (100, 8 << 30))
    layer, x = Linear(8, 4), torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert layer.__dict__["_packed_weight"][1] is None


def test_a_failing_packed_op_falls_back_to_f_linear_once(monkeypatch, packing) -> None:
    import arvision.nn.linear as lin

    def broken(*args):
        raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(lin, "_packed_weight", broken)
    layer, x = Linear(8, 4), torch.randn(2, 8)
    with torch.no_grad(), pytest.warns(UserWarning, match="packed oneDNN linear unavailable"):
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    with torch.no_grad():
        assert not packed_linear_active(x, layer.weight)


@pytest.mark.parametrize("name", ["tiny-raster", "tiny-scale"])
def test_generation_is_the_same_with_and_without_packing(name, packing) -> None:
    from arvision.pipeline import Pipeline

    pipe = Pipeline(*build(name))
    with torch.no_grad():
        pipe.generator.head.weight.mul_(50)  # spread the random logits: no near-ties for argmax
    runs = []
    for enabled in (True, False):
        set_packed_linear(enabled)
        runs.append(pipe.sample([0, 1, 2], 2, seed=3, top_k=1))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[0].images, runs[1].images, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(5, 7), (8, 8), (1, 3)])
def test_subpixel_upsample_equals_nearest_then_conv(size) -> None:
    torch.manual_seed(0)
    up = conv.Upsample(12)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 12, *size).contiguous(memory_format=fmt)
        direct = up(x)  # gradients on: the direct form
        with torch.no_grad():
            fast = up(x)
        assert fast.shape == direct.shape == (2, 12, 2 * size[0], 2 * size[1])
        torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-5)


def test_decoder_inference_matches_training_mode_and_leaves_its_input_alone() -> None:
    torch.manual_seed(0)
    dec = conv.ConvDecoder(out_channels=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, groups=8).eval()
    z = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    z_copy = z.clone()
    reference = dec(z)  # gradients on: no in-place activations, direct upsampling
    with torch.no_grad():
        fast = dec(z)
    assert torch.equal(z, z_copy)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(runtime._LIBC is None, reason="glibc only")
def test_memory_reuse_switch(monkeypatch) -> None:
    assert runtime.keep_freed_memory()
    runtime.release_memory()
    monkeypatch.setenv("ARVISION_REUSE_MEMORY", "0")
    assert not runtime.keep_freed_memory()


def test_memory_reuse_is_a_no_op_without_glibc(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_LIBC", None)
    assert not runtime.keep_freed_memory()
    runtime.release_memory()
    assert sys.modules["arvision.runtime"] is runtime


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["packed-qkv", "contiguous", "odd-offset"])
def test_rope_is_the_official_formula_bit_for_bit(dtype, layout) -> None:
    """apply_rope's complex product equals LlamaGen's real-valued rotation exactly, whatever the layout."""
    from arvision.nn.transformer import apply_rope

    B, H, L, D = 3, 4, 9, 16
    ang = torch.rand(L, D // 2, dtype=torch.float64).mul(200).float()
    rope = torch.stack([ang.cos(), ang.sin()], -1)
    if layout == "packed-qkv":  # q as the attention takes it: a permuted view of the qkv projection
        x = torch.randn(B, L, 3, H, D).mul(5).to(dtype).permute(2, 0, 3, 1, 4)[0]
    elif layout == "odd-offset":  # a view starting at an odd element: view_as_complex cannot take it as it is
        x = torch.randn(B * H * L * D + 1).mul(5).to(dtype)[1:].view(B, H, L, D)
    else:
        x = torch.randn(B, H, L, D).mul(5).to(dtype)
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1, cos, sin = xf[..., 0], xf[..., 1], rope[..., 0], rope[..., 1]
    official = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2).type_as(x)
    assert torch.equal(apply_rope(x, rope), official)
    assert torch.equal(apply_rope(x[:, :, 2:5], rope[2:5]), official[:, :, 2:5])  # a window of positions (a decode step)
