"""JPEG-LM (tokenizers/jpeg.py): canonical byte streams of real JPEG files, END/PAD layout, decoding
that counts the streams it cannot decode and never raises, and PAD after END in sampling."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.data import get_dataset
from arvision.evaluate import ordered_batches
from arvision.generators import SequenceConfig, SequenceGenerator
from arvision.modeling import load_model
from arvision.pipeline import Pipeline
from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS, llamagen_backbone
from arvision.samplers import SamplingConfig, decode
from arvision.tokenizers import JpegConfig, JpegTokenizer, TokenLayout
from arvision.tokenizers.jpeg import ScanGrammar, check_scan, jpeg_bytes, parse_header, split_header


@pytest.fixture(scope="module")
def tok() -> JpegTokenizer:
    return JpegTokenizer(TOKENIZER_PRESETS["mnist-jpeg-codec"].config).eval()


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    ds = get_dataset("mnist", split="test", image_size=28, channels=1)
    return next(ordered_batches(ds, 64))  # (64, 1, 28, 28) in [-1, 1]


def pixels(x: torch.Tensor) -> np.ndarray:
    return ((x[0].float() + 1) * 127.5).round().to(torch.uint8).numpy()


def test_streams_are_canonical_and_the_header_is_shared(tok: JpegTokenizer, digits: torch.Tensor) -> None:
    files = [jpeg_bytes(pixels(x), 25) for x in digits]
    assert files == [jpeg_bytes(pixels(x), 25) for x in digits]  # same image, same bytes
    assert {split_header(f)[0] for f in files} == {tok.header_bytes()}  # one header for every image, the stored one
    assert len(tok.header_bytes()) == 328
    assert tok.streams(digits) == [split_header(f)[1] for f in files]
    assert torch.equal(tok.encode(digits), tok.encode(digits.clone()))


def test_decode_equals_pillows_own_round_trip(tok: JpegTokenizer, digits: torch.Tensor) -> None:
    images, ok = tok.decode(tok.encode(digits), return_ok=True)
    assert ok.all() and images.shape == digits.shape
    for x, y in zip(digits, images):
        ref = np.asarray(Image.open(io.BytesIO(jpeg_bytes(pixels(x), 25))).convert("L"))
        assert np.array_equal(pixels(y), ref)
    assert tok.decode(tok.encode(digits)).sub(digits).abs().mean() < 0.1  # a lossy but close copy


def test_tokens_are_bytes_then_end_then_padding(tok: JpegTokenizer, digits: torch.Tensor) -> None:
    lay = tok.layout
    assert (lay.kind, lay.vocab_size, lay.length, lay.end_id, lay.pad_id) == ("sequence", 258, 200, 256, 257)
    tokens = tok.encode(digits)
    assert tokens.shape == (64, 200) and tokens.dtype == torch.long
    for row, scan in zip(tokens.tolist(), tok.streams(digits)):
        n = len(scan)
        assert bytes(row[:n]) == scan and scan.endswith(b"\xff\xd9")
        assert row[n] == 256 and set(row[n + 1 :]) <= {257}
    # a stream longer than max_len is cut, with no END: it decodes as a failure, never as a partial image
    short = JpegTokenizer(JpegConfig(max_len=40))
    cut = short.encode(digits[:4])
    assert (cut != 256).all()
    assert not short.decode(cut, return_ok=True)[1].any()


def test_fit_records_stream_lengths_and_bits(tok: JpegTokenizer, digits: torch.Tensor) -> None:
    t = JpegTokenizer(tok.config)
    assert t.bits_per_image() is None
    t.fit([digits[:32], digits[32:]])
    lengths = [len(s) for s in tok.streams(digits)]
    assert t.info["streams"]["mean_bytes"] == pytest.approx(sum(lengths) / 64, abs=1e-3)
    assert t.info["streams"]["max_bytes"] == max(lengths) and t.info["streams"]["too_long"] == 0
    assert t.bits_per_image() == pytest.approx(8 * sum(lengths) / 64, abs=1e-2)


def test_bad_streams_are_counted_never_raised(tok: JpegTokenizer, digits: torch.Tensor) -> None:
    good = tok.encode(digits[:8])
    rows = []
    for r in good.tolist():
        n = r.index(256)
        for cut in (1, 2, 3, 5, n // 2, n - 1):  # truncated (the END moved earlier): libjpeg would fill in grey
            rows.append(r[: n - cut] + [256] + [257] * (200 - n + cut - 1))
        rows.append(r[:n] + [257] * (200 - n))  # no END
        rows.append([257] + r[:n] + [256] + [257] * (200 - n - 2))  # PAD before END
        rows.append(r[: n - 2] + [0xAB] + r[n - 2 : n] + [256] + [257] * (200 - n - 2))  # a stray byte before EOI
        rows.append([0xFF, 0xD9, 256] + [257] * 197)  # an empty scan
    _, ok = tok.decode(torch.tensor(rows), return_ok=True)
    assert not ok.any()
    # fuzz: random byte sequences with an END somewhere, and valid streams with a byte flipped
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, 256, (300, 200), generator=g)
    ends = torch.randint(1, 200, (300,), generator=g)
    for i, e in enumerate(ends.tolist()):
        rand[i, e], rand[i, e + 1 :] = 256, 257
    images, ok = tok.decode(rand, return_ok=True)
    assert not ok.any() and torch.equal(images, torch.full_like(images, -1.0))  # blank images
    flipped = good.repeat(20, 1)
    n = (flipped != 257).sum(1) - 1
    pos = (torch.rand(len(flipped), generator=g) * n).long()
    flipped[torch.arange(len(flipped)), pos] = torch.randint(0, 256, (len(flipped),), generator=g)
    images, ok = tok.decode(flipped, return_ok=True)  # some still decode (a flip may give another valid stream)
    assert ok.dtype == torch.bool and torch.isfinite(images).all()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 258\)"):
        tok.decode(torch.full((1, 200), 300))


def test_the_scan_check_accepts_every_real_stream(tok: JpegTokenizer, digits: torch.Tensor) -> None:
    spec = parse_header(tok.header_bytes())
    assert spec.blocks == 16
    grammar = ScanGrammar(spec)
    assert all(check_scan(s, grammar) for s in tok.streams(digits))
    noise = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    assert all(check_scan(s, grammar) for s in tok.streams(noise))


def test_save_load_round_trip(tok: JpegTokenizer, digits: torch.Tensor, tmp_path) -> None:
    t = JpegTokenizer(tok.config).fit([digits])
    t.save_pretrained(tmp_path)
    back = load_model(tmp_path)
    assert isinstance(back, JpegTokenizer) and back.header_bytes() == t.header_bytes()
    assert torch.equal(back.encode(digits), t.encode(digits))
    assert back.bits_per_image() == t.bits_per_image()


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="grayscale"):
        JpegConfig(in_channels=3)
    with pytest.raises(ValueError, match="quality must be in 1..95"):
        JpegConfig(quality=100)
    with pytest.raises(ValueError, match="end_id and pad_id go together"):
        TokenLayout("sequence", 10, length=4, end_id=8)
    with pytest.raises(ValueError, match="end_id=12 is not a token id"):
        SequenceConfig(transformer=llamagen_backbone(2, 32, 2), vocab_size=10, num_classes=10, end_id=12, pad_id=9)


def test_sampling_pads_after_the_end_token() -> None:
    lay = TokenLayout("sequence", 10, length=16, end_id=8, pad_id=9)
    torch.manual_seed(0)
    gen = SequenceGenerator(SequenceGenerator.config_for(lay, transformer=llamagen_backbone(2, 32, 2), num_classes=10,
                                                         head_bias=True)).eval()  # fmt: skip
    assert (gen.config.end_id, gen.config.pad_id) == (8, 9)
    with torch.no_grad():
        gen.head.bias[8] = 2.0  # END often, early
        gen.head.bias[9] = 1.0  # and PAD too, before END: kept (a stream the tokenizer will refuse)
    out = decode(gen, None, torch.arange(10).repeat(20), SamplingConfig(cfg=2.0), torch.Generator().manual_seed(0))
    ended = 0
    for row in out.tokens.tolist():
        if 8 in row:
            ended += 1
            assert set(row[row.index(8) + 1 :]) <= {9}
    assert ended > 100
    # the same model without end/pad ids samples other tokens after END: the padding was forced
    free = SequenceGenerator(gen.config.replace(end_id=None, pad_id=None)).eval()
    free.load_state_dict(gen.state_dict())
    raw = decode(free, None, torch.arange(10).repeat(20), SamplingConfig(cfg=2.0), torch.Generator().manual_seed(0)).tokens
    assert any(8 in r and set(r[r.index(8) + 1 :]) - {9} for r in raw.tolist())
    # editing: tokens fixed by the caller stay, even after an END
    prior = torch.full((2, 16), 3)
    prior[:, 2] = 8
    known = torch.zeros(2, 16, dtype=torch.bool)
    known[:, [2, 5]] = True
    out = decode(gen, None, torch.tensor([1, 2]), SamplingConfig(), torch.Generator().manual_seed(0), prior_BL=prior, known_BL=known)
    assert (out.tokens[:, 5] == 3).all() and (out.tokens[:, 3:5] == 9).all() and (out.tokens[:, 6:] == 9).all()


def test_pipeline_counts_streams_that_do_not_decode() -> None:
    gp, tp = GENERATOR_PRESETS["tiny-jpeg"], TOKENIZER_PRESETS["tiny-jpeg"]
    tok = JpegTokenizer(tp.config)
    torch.manual_seed(0)
    gen = gp.model_class(gp.build_config(tok, 10))
    pipe = Pipeline(tok, gen)
    out = pipe.sample([1, 2, 3], 4, seed=0)
    _, ok = tok.decode(out.tokens, return_ok=True)
    assert out.stats.undecodable == int((~ok).sum()) > 0  # an untrained model writes no valid JPEG
    assert (out.images[~ok] == 0).all()  # blank in [0, 1]
    # teacher-forced real streams all decode
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    real = tok.encode(x)
    out = pipe.sample([1, 2, 3], 1, seed=0)
    from arvision.samplers.loop import decode as run_decode
    res = run_decode(gen, tok, torch.tensor([1, 2, 3]), SamplingConfig(), prior_BL=real, known_BL=torch.ones_like(real, dtype=torch.bool))
    images, ok = gen.order_class(gen, tok).images_ok(res.state)
    assert ok.all() and torch.equal(images, tok.decode(real))


# -- grammar-constrained decoding (tokenizers/grammar.py, ScanGrammar) --------------------------------
def mutation_verdicts(tok: JpegTokenizer, real: list[list[int]], *, cut: float) -> tuple[int, int, int]:
    """Six mutations of each real token row (a changed byte, or an END cut with probability ``cut``):
    (how many the grammar judges as check_scan does, how many are valid, how many in all)."""
    g, rng = tok.grammar(), np.random.default_rng(0)
    agree = valid = 0
    for r in real:
        end = r.index(tok.end_id)
        for _ in range(6):
            m = list(r)
            i = int(rng.integers(end))
            m[i] = int(rng.integers(256)) if rng.random() >= cut else tok.end_id
            ref = tok.end_id in m and check_scan(bytes(m[: m.index(tok.end_id)]), g)
            ref = ref and all(t == tok.pad_id for t in m[m.index(tok.end_id) + 1 :])
            agree += g.accepts(m) == ref
            valid += ref
    return agree, valid, 6 * len(real)


def assert_length_bound_holds(tok: JpegTokenizer, real: list[list[int]]) -> None:
    """The grammar's bytes-to-finish bound never exceeds what a real stream still needs."""
    g = tok.grammar()
    for r in real:
        state, left = g.start(1), r.index(tok.end_id) + 1
        for i, t in enumerate(r[:left]):
            assert int(g._min_table[int(state)]) <= left - i  # a lower bound: it never rules out a real stream
            state = g.advance(state, torch.tensor([t]))
        assert int(g._min_table[int(state)]) == 0


def test_the_grammar_accepts_exactly_what_the_scan_check_accepts(tok: JpegTokenizer, digits: torch.Tensor) -> None:
    g = tok.grammar()
    real = tok.encode(digits[:16]).tolist()
    assert all(g.accepts(r) for r in real)
    agree, valid, n = mutation_verdicts(tok, real, cut=0.2)  # one changed byte (or a cut) in each real stream
    assert agree == n == 96 and 0 < valid < 96
    assert not g.accepts(real[0][:-1] + [0])  # a byte after the end token


def test_the_length_bound_never_exceeds_the_real_remainder(tok: JpegTokenizer, digits: torch.Tensor) -> None:
    assert_length_bound_holds(tok, tok.encode(digits[:8]).tolist())


def test_constrained_sampling_decodes_every_stream_of_an_untrained_model() -> None:
    gp, tp = GENERATOR_PRESETS["tiny-jpeg"], TOKENIZER_PRESETS["tiny-jpeg"]
    tok = JpegTokenizer(tp.config)
    torch.manual_seed(0)
    pipe = Pipeline(tok, gp.model_class(gp.build_config(tok, 10)))
    free = pipe.sample(list(range(10)), 3, seed=0)
    assert free.stats.undecodable > 20  # random bytes almost never form a scan
    out = pipe.sample(list(range(10)), 3, seed=0, constrained=True)
    assert out.stats.undecodable == 0 and tok.decode(out.tokens, return_ok=True)[1].all()
    assert torch.equal(out.tokens, pipe.sample(list(range(10)), 3, seed=0, constrained=True).tokens)  # seeded


def test_constrained_is_refused_where_it_cannot_apply() -> None:
    gp, tp = GENERATOR_PRESETS["tiny-jpeg"], TOKENIZER_PRESETS["tiny-jpeg"]
    tok = JpegTokenizer(tp.config)
    pipe = Pipeline(tok, gp.model_class(gp.build_config(tok, 10)))
    with pytest.raises(ValueError, match="num_tokens"):
        pipe.sample([1], 1, constrained=True, num_tokens=5)
    with pytest.raises(ValueError, match="constrained must be True or False"):
        SamplingConfig(constrained="yes")
    gen = GENERATOR_PRESETS["tiny-raster"]
    from arvision.tokenizers import VQTokenizer

    vq = VQTokenizer(TOKENIZER_PRESETS[gen.tokenizer].config)
    with pytest.raises(ValueError, match="constrained"):
        Pipeline(vq, gen.model_class(gen.build_config(vq, 10))).sample([1], 1, constrained=True)


def test_constrained_sampling_continues_a_fixed_prefix() -> None:
    gp, tp = GENERATOR_PRESETS["tiny-jpeg"], TOKENIZER_PRESETS["tiny-jpeg"]
    tok = JpegTokenizer(tp.config)
    torch.manual_seed(0)
    gen = gp.model_class(gp.build_config(tok, 10))
    real = tok.encode(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    known = torch.zeros_like(real, dtype=torch.bool)
    known[:, :3] = True  # the first bytes of real streams, the rest generated under the grammar
    out = decode(gen, tok, torch.tensor([1, 2, 3, 4]), SamplingConfig(constrained=True), torch.Generator().manual_seed(0),
                 prior_BL=real, known_BL=known)  # fmt: skip
    assert torch.equal(out.tokens[:, :3], real[:, :3]) and tok.decode(out.tokens, return_ok=True)[1].all()


def test_decoding_stops_once_every_row_has_ended_with_the_tokens_of_a_full_run() -> None:
    from arvision.samplers.loop import DecodeRun

    lay = TokenLayout("sequence", 10, length=16, end_id=8, pad_id=9)
    torch.manual_seed(0)
    gen = SequenceGenerator(SequenceGenerator.config_for(lay, transformer=llamagen_backbone(2, 32, 2), num_classes=10,
                                                         head_bias=True)).eval()  # fmt: skip
    with torch.no_grad():
        gen.head.bias[8] = 6.0  # END almost at once in every row
    labels, s = torch.arange(10).repeat(2), SamplingConfig(cfg=2.0)
    out = decode(gen, None, labels, s, torch.Generator().manual_seed(0))
    full = DecodeRun(gen, None, labels, s, torch.Generator().manual_seed(0))
    for step in full.plan:  # every pass of the plan, no early stop
        full.step(step)
    assert torch.equal(out.tokens, full.state.tokens_BL)
    assert out.stats.forward_passes < 16 == full.output(0.0).stats.forward_passes
    assert not out.state.open_BL.any()


# -- restart markers (JpegConfig.restart_interval) ----------------------------------------------------
@pytest.fixture(scope="module", params=[1, 3])
def rst(request) -> JpegTokenizer:
    return JpegTokenizer(JpegConfig(image_size=28, quality=25, max_len=240, restart_interval=request.param)).eval()


def test_restart_streams_are_pillows_files_and_decode(rst: JpegTokenizer, digits: torch.Tensor) -> None:
    r = rst.config.restart_interval
    spec = parse_header(rst.header_bytes())
    assert spec.restart == r and spec.blocks == 16
    streams = rst.streams(digits)
    assert streams == [split_header(jpeg_bytes(pixels(x), 25, r))[1] for x in digits]
    markers = [sum(s[i] == 0xFF and 0xD0 <= s[i + 1] <= 0xD7 for i in range(len(s) - 1)) for s in streams]
    assert set(markers) == {15 // r}  # one after every r blocks but the last run
    images, ok = rst.decode(rst.encode(digits), return_ok=True)
    assert ok.all()
    for x, y in zip(digits, images):
        ref = np.asarray(Image.open(io.BytesIO(jpeg_bytes(pixels(x), 25, r))).convert("L"))
        assert np.array_equal(pixels(y), ref)
    noise = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert all(check_scan(s, rst.grammar()) for s in rst.streams(noise))  # FF stuffing before markers too


def test_restart_marker_errors_are_caught(rst: JpegTokenizer, digits: torch.Tensor) -> None:
    g, s = rst.grammar(), rst.streams(digits[:1])[0]
    i = next(i for i in range(len(s) - 1) if s[i] == 0xFF and 0xD0 <= s[i + 1] <= 0xD7)
    wrong = s[: i + 1] + bytes([0xD0 + (s[i + 1] - 0xD0 + 1) % 8]) + s[i + 2 :]  # the next marker's number
    dropped = s[:i] + s[i + 2 :]  # no marker where one is due
    assert check_scan(s, g) and not check_scan(wrong, g) and not check_scan(dropped, g)
    plain = JpegTokenizer(JpegConfig(image_size=28, quality=25)).grammar()
    assert not check_scan(s, plain)  # a marker where the header declares no restart interval
    with pytest.raises(ValueError, match="restart_interval must be 0"):
        JpegConfig(restart_interval=-1)


def test_restart_grammar_agrees_with_the_scan_check_and_bounds_the_length(rst: JpegTokenizer, digits: torch.Tensor) -> None:
    g = rst.grammar()
    real = rst.encode(digits[:12]).tolist()
    assert all(g.accepts(r) for r in real)
    agree, valid, n = mutation_verdicts(rst, real, cut=0.0)
    assert agree == n == 72 and 0 < valid < 72
    assert_length_bound_holds(rst, real[:4])


def test_constrained_sampling_with_restart_markers_decodes() -> None:
    gp = GENERATOR_PRESETS["tiny-jpeg"]
    tok = JpegTokenizer(JpegConfig(image_size=16, quality=25, max_len=80, restart_interval=1))
    torch.manual_seed(0)
    pipe = Pipeline(tok, gp.model_class(gp.build_config(tok, 10)))
    out = pipe.sample(list(range(10)), 2, seed=0, constrained=True)
    assert out.stats.undecodable == 0 and tok.decode(out.tokens, return_ok=True)[1].all()


# -- the parser state as an input (SequenceConfig.parse_state) ------------------------------------------
def test_parser_state_features_follow_the_stream(rst: JpegTokenizer, digits: torch.Tensor) -> None:
    from arvision.tokenizers.jpeg import STATE_KINDS

    g = rst.grammar()
    tokens = rst.encode(digits[:4])
    f = g.prefix_features(tokens)  # (B, L + 1, 4): block, kind, coefficient, bits
    assert f.shape == (4, tokens.shape[1] + 1, 4)
    for i, n in enumerate(g.feature_sizes):
        assert 0 <= f[..., i].min() and f[..., i].max() < n - 1  # real streams never reach the DEAD ids
    for b in range(4):
        row = tokens[b].tolist()
        end = row.index(rst.end_id)
        kinds = [STATE_KINDS[k] for k in f[b, :, 1].tolist()]
        assert f[b, 0].tolist() == [0, STATE_KINDS.index("dc"), 0, 0]  # before the first byte: block 0's DC code
        assert kinds[end + 1 :] == ["end"] * (len(row) - end)  # after END (and every PAD)
        assert kinds[end - 1 : end + 1] == ["eoi1", "eoi2"]  # after FF, after D9
        # the blocks done never fall; with a marker after every block (a block starts on a byte) one byte ends at most one
        blocks = f[b, :, 0].tolist()
        steps = {blocks[j] - blocks[j - 1] for j in range(1, end + 1)}
        assert min(steps) == 0 and (max(steps) == 1 if g.spec.restart == 1 else max(steps) >= 1)
        assert blocks[end] == g.spec.blocks
        in_block = [f[b, j, 2] for j in range(end) if kinds[j] in ("dc", "dcx", "ac", "acx")]
        assert all(0 <= k <= 64 for k in in_block)
    bad = tokens[:1].clone()
    bad[0, 3:5] = torch.tensor([0xFF, 0x12])  # a data FF must be followed by a stuffed 00: DEAD from there on
    fb = g.prefix_features(bad)
    dead = torch.tensor(g.feature_sizes) - 1
    assert torch.equal(fb[0, :4], f[0, :4]) and (fb[0, 5:] == dead).all()


@pytest.mark.parametrize("constrained", [False, True])
def test_a_parse_state_model_samples_what_its_full_forward_predicts(constrained: bool) -> None:
    """Decoding feeds each step the parser state the automaton reached, free or constrained: every step's
    logits equal one teacher-forced forward over the sampled tokens with the grammar's features."""
    gp, tp = GENERATOR_PRESETS["tiny-jpeg-parse"], TOKENIZER_PRESETS["tiny-jpeg"]
    tok = JpegTokenizer(tp.config)
    torch.manual_seed(0)
    gen = gp.model_class(gp.build_config(tok, 10)).eval()
    assert gen.config.state_sizes == tok.grammar().feature_sizes
    seen = []
    labels = torch.tensor([1, 2, 3, 4])
    out = decode(gen, tok, labels, SamplingConfig(constrained=constrained), torch.Generator().manual_seed(0),
                 callback=lambda info: seen.append((info.step, info.logits)))  # fmt: skip
    with torch.no_grad():
        ref = gen.reference_logits(out.tokens, labels, tok)
        plain = gen.__class__(gen.config.replace(parse_state=False, state_sizes=()))
        plain.load_state_dict({k: v for k, v in gen.state_dict().items() if not k.startswith("state_emb")})
        without = plain.reference_logits(out.tokens, labels, tok)
    assert len(seen) > 5
    for step, logits in seen:
        torch.testing.assert_close(logits, ref[:, step.predicts], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ref[:, 1:], without[:, 1:], atol=1e-3)  # the features do reach the model
    run = max(step.end for step, _ in seen)  # positions read before decoding stopped (every row had ended)
    assert torch.equal(out.state.extra["parse"][:, :run], tok.grammar().prefix_features(out.tokens)[:, :run])


def test_parse_state_settings_that_cannot_work_are_clear_errors() -> None:
    gp, tp = GENERATOR_PRESETS["tiny-jpeg-parse"], TOKENIZER_PRESETS["tiny-jpeg"]
    tok = JpegTokenizer(tp.config)
    gen = gp.model_class(gp.build_config(tok, 10))
    with pytest.raises(ValueError, match="parse_state.*state_sizes"):
        SequenceConfig(vocab_size=258, seq_len=40, transformer=llamagen_backbone(2, 32, 2), num_classes=10, parse_state=True)
    from arvision.tokenizers import VQTokenizer

    with pytest.raises(ValueError, match="no grammar with state features"):
        SequenceGenerator.config_for_tokenizer(VQTokenizer(TOKENIZER_PRESETS["tiny-vq"].config), parse_state=True,
                                               transformer=llamagen_backbone(2, 32, 2))  # fmt: skip
    with pytest.raises(ValueError, match="pass the tokenizer"):
        decode(gen, None, torch.tensor([1]), SamplingConfig(), torch.Generator().manual_seed(0))
    tokens = tok.encode(torch.rand(2, 1, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match="parse_BLF of shape"):
        gen(tokens, torch.tensor([1, 2]))
    other = JpegTokenizer(JpegConfig(image_size=16, quality=25, max_len=80))  # 4 blocks: other feature sizes
    with pytest.raises(ValueError, match="feature sizes"):
        gen.training_inputs(tokens, torch.tensor([1, 2]), other)


def test_codec_floor_benchmark_runs_and_orders_the_qualities(tmp_path) -> None:
    """benchmarks/jpeg_floor.py (the JPEG codec's own MNIST-FID, docs/jpeg.md) on a few digits:
    the real row first, then a stream longer and a PSNR higher at the higher quality."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "jpeg_floor.py"
    out = tmp_path / "floor.json"
    res = subprocess.run([sys.executable, str(script), "--n", "200", "--qualities", "25,90", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "| JPEG quality 25 |" in res.stdout and "x the floor" in res.stdout
    real, q25, q90 = json.loads(out.read_text())["rows"]
    assert real["quality"] is None and (q25["quality"], q90["quality"]) == (25, 90)
    assert 100 < q25["scan_bytes"] < q90["scan_bytes"] and 24 < q25["psnr"] < q90["psnr"]
    assert q90["mnist_fid"] < q25["mnist_fid"]
