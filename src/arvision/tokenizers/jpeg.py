"""JPEG bytes as tokens (JPEG-LM; Han et al. 2024, "JPEG-LM: LLMs as Image Generators with Canonical
Codec Representations", arXiv:2408.08459).

An image's tokens are the bytes of its JPEG file, written by Pillow's codec with fixed settings
(baseline, fixed quality, standard Huffman tables, no optimisation), so that every image has one
canonical byte stream. Everything up to and including the start-of-scan segment (quantization and
Huffman tables, frame and scan headers) is the same for every image of one size and quality: it is
stored once, in the tokenizer (the ``header`` buffer of ``model.safetensors``), and the tokens are
the entropy-coded scan bytes and the end-of-image marker (FF D9), then END, then PAD up to
``max_len``. Streams have different lengths (MNIST at quality 25: 116 bytes on average, at most 194).

A generated sequence need not be a JPEG file. :meth:`JpegTokenizer.decode` never raises on bad
tokens: a sequence without END, with PAD before END, or whose scan is not exactly the image's blocks
(:func:`check_scan` walks the entropy-coded data with the header's Huffman tables, so a truncated
or corrupt scan, which libjpeg would silently fill with grey, is caught) decodes to a blank image,
and ``decode(..., return_ok=True)`` says which rows decoded (the pipeline counts the others in
``SamplingStats.undecodable``). There is no network and nothing to train: :meth:`fit` only records
the stream lengths of the training images (``bits_per_image``).

Legend: B batch, C channels (1), S image side, L tokens (``max_len``).
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageFile
from torch import Tensor

from arvision.config import Config
from arvision.modeling import register_model
from arvision.tokenizers.base import Tokenizer
from arvision.tokenizers.grammar import TokenGrammar
from arvision.tokenizers.layout import TokenLayout

NUM_BYTES = 256
EOI = b"\xff\xd9"
SOS = 0xDA


@dataclass(frozen=True, kw_only=True)
class JpegConfig(Config):
    """Args:
        image_size: side S of the (square, grayscale) images.
        in_channels: 1 (only grayscale streams are supported).
        quality: Pillow's JPEG quality (1-95): sets the quantization tables, so the stream length.
        max_len: L, tokens per image: the longest stream (scan bytes + FF D9) plus the END token.
        restart_interval: 0 (none), or a restart marker (FF D0..D7) after every this many 8x8
            blocks (Pillow's ``restart_marker_blocks``): each run of blocks then starts on a byte
            boundary with its DC coefficient coded afresh, so a byte's place in the image is
            marked in the stream, at the cost of 2-3 bytes per marker.
    """

    image_size: int = 28
    in_channels: int = 1
    quality: int = 25
    max_len: int = 200
    restart_interval: int = 0

    def __post_init__(self) -> None:
        if self.in_channels != 1:
            raise ValueError(f"the JPEG tokenizer codes grayscale images (in_channels=1), got in_channels={self.in_channels}")
        if not 8 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in 8..4096 pixels, got {self.image_size}")
        if not 1 <= self.quality <= 95:
            raise ValueError(f"quality must be in 1..95 (Pillow's JPEG quality), got {self.quality}")
        r = self.restart_interval
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 65535:
            raise ValueError(f"restart_interval must be 0 (no restart markers) or 1..65535 blocks, got {self.restart_interval!r}")
        if self.max_len < 3:
            raise ValueError(f"max_len must be >= 3 tokens (FF D9 and END at least), got {self.max_len}")

    @property
    def end_id(self) -> int:
        return NUM_BYTES

    @property
    def pad_id(self) -> int:
        return NUM_BYTES + 1

    @property
    def vocab_size(self) -> int:
        return NUM_BYTES + 2


def jpeg_bytes(image_SS: np.ndarray, quality: int, restart_interval: int = 0) -> bytes:
    """The canonical JPEG file of a uint8 (S, S) image: baseline, fixed quality, standard tables,
    a restart marker after every ``restart_interval`` blocks (0: none)."""
    buf = io.BytesIO()
    extra = {"restart_marker_blocks": restart_interval} if restart_interval else {}
    Image.fromarray(np.ascontiguousarray(image_SS, dtype=np.uint8)).save(buf, format="JPEG", quality=quality, optimize=False,
                                                                       progressive=False, **extra)  # fmt: skip
    return buf.getvalue()


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header up to and including the SOS segment, scan bytes + EOI) of a JPEG file."""
    i = 2  # after SOI
    while i + 4 <= len(data) and data[i] == 0xFF:
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] == SOS:
            return data[: i + 2 + length], data[i + 2 + length :]
        i += 2 + length
    raise ValueError("not a baseline JPEG file: no start-of-scan segment found")


@dataclass(frozen=True)
class ScanSpec:
    """What checking a single-component baseline scan needs from the header: the block count, the
    DC and AC Huffman codes (a dict from the code as a bit string to its symbol) and the restart
    interval (blocks between restart markers, 0: none)."""

    blocks: int
    dc: dict[str, int]
    ac: dict[str, int]
    restart: int = 0

    def marker_after(self, blocks: int) -> int | None:
        """The restart marker's second byte (D0..D7) due after ``blocks`` blocks, or None."""
        r = self.restart
        if not r or blocks % r or blocks >= self.blocks:
            return None
        return 0xD0 + (blocks // r - 1) % 8


def _huffman_codes(bits: bytes, values: bytes) -> dict[str, int]:
    """Canonical Huffman codes (JPEG Annex C) from the 16 code-length counts and the symbols."""
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[format(code, f"0{length}b")] = values[k]
            code, k = code + 1, k + 1
        code <<= 1
    return codes


def parse_header(header: bytes) -> ScanSpec:
    """The frame size and the scan's Huffman tables from a grayscale baseline header."""
    tables: dict[tuple[int, int], dict[str, int]] = {}
    size = ids = None
    restart = 0
    i = 2
    while i + 4 <= len(header):
        marker, length = header[i + 1], int.from_bytes(header[i + 2 : i + 4], "big")
        seg = header[i + 4 : i + 2 + length]
        if marker == 0xC4:  # DHT: one or more tables
            j = 0
            while j < len(seg):
                tc_th, bits = seg[j], seg[j + 1 : j + 17]
                n = sum(bits)
                tables[(tc_th >> 4, tc_th & 15)] = _huffman_codes(bits, seg[j + 17 : j + 17 + n])
                j += 17 + n
        elif marker == 0xC0:  # SOF0: precision, height, width, components
            size = (int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"))
            if seg[5] != 1:
                raise ValueError(f"the JPEG tokenizer checks single-component (grayscale) scans, the frame has {seg[5]}")
        elif marker == SOS:
            ids = (seg[2] >> 4, seg[2] & 15)
        elif marker == 0xDD:  # DRI: restart interval (in MCUs, one 8x8 block each for one component)
            restart = int.from_bytes(seg[0:2], "big")
        i += 2 + length
    if size is None or ids is None:
        raise ValueError("the JPEG header has no baseline frame (SOF0) or no scan (SOS) segment")
    blocks = -(-size[0] // 8) * -(-size[1] // 8)
    return ScanSpec(blocks=blocks, dc=tables[(0, ids[0])], ac=tables[(1, ids[1])], restart=restart)


def check_scan(scan: bytes, grammar: "ScanGrammar") -> bool:
    """Whether ``scan`` (entropy-coded bytes + FF D9) codes exactly ``grammar.spec.blocks`` 8x8 blocks.

    Every FF inside the data must be a stuffed FF 00 or, with a restart interval, the restart marker
    due (FF D0..D7 in turn, after the 1-bits that pad its run of blocks to a byte); the Huffman codes
    must be valid and every block end within its 64 coefficients; after the last block only the
    1-bits that pad the final byte may remain. libjpeg accepts a short or corrupt scan with a
    warning and fills the rest with grey, so this is what tells a complete stream from a partial one. The bits are
    read by the grammar's own bit reader (:meth:`ScanGrammar.read_bit`), the one definition of these
    rules that constrained decoding uses too.
    """
    if len(scan) < 2 or not scan.endswith(EOI):
        return False
    data, spec = scan[:-2], grammar.spec
    st, padding, i = grammar.block_start(0), 0, 0
    while i < len(data):
        byte = data[i]
        if byte == 0xFF:
            follow = data[i + 1] if i + 1 < len(data) else None
            if follow != 0x00:  # not a stuffed data FF: only the restart marker due may stand here
                if st[1] != "rpad" or padding >= 8 or follow != spec.marker_after(st[0]):
                    return False
                st, padding, i = grammar.block_start(st[0]), 0, i + 2
                continue
            i += 1  # the stuffed 00
        i += 1
        for bit in format(byte, "08b"):
            padding += st[1] in ("pad", "rpad")  # a bit after the last block, or before a restart marker
            st = grammar.read_bit(st, bit)
            if st is None:
                return False
    return st[1] == "pad" and padding < 8


@register_model
class JpegTokenizer(Tokenizer):
    """Grayscale images (B, 1, S, S) <-> the bytes of their canonical JPEG files (B, L), END, PAD."""

    model_type = "jpeg_tokenizer"
    config_class = JpegConfig
    config: JpegConfig
    may_fail_to_decode = True

    def __init__(self, config: JpegConfig) -> None:
        super().__init__(config)
        header, _ = split_header(jpeg_bytes(np.zeros((config.image_size, config.image_size), np.uint8), config.quality,
                                            config.restart_interval))  # fmt: skip
        self.register_buffer("header", torch.frombuffer(bytearray(header), dtype=torch.uint8).clone())
        self._grammar = ScanGrammar(parse_header(header))  # the header's scan rules: decoding and constrained sampling

    # -- layout ---------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.config.vocab_size

    @property
    def end_id(self) -> int:
        return self.config.end_id

    @property
    def pad_id(self) -> int:
        return self.config.pad_id

    @property
    def layout(self) -> TokenLayout:
        c = self.config
        return TokenLayout("sequence", c.vocab_size, length=c.max_len, end_id=c.end_id, pad_id=c.pad_id)

    def _device(self) -> torch.device:
        return self.header.device

    def grammar(self) -> "ScanGrammar":
        """The automaton of the valid token rows (constrained decoding, :func:`check_scan`); one per
        tokenizer, it keeps the states it has expanded."""
        return self._grammar

    def header_bytes(self) -> bytes:
        return bytes(self.header.cpu().tolist())

    # -- streams --------------------------------------------------------------------------------
    def streams(self, images: Tensor) -> list[bytes]:
        """The scan bytes + FF D9 of each image's canonical JPEG file (a clear error if Pillow writes
        another header than the stored one, e.g. a Pillow with other default tables)."""
        self.check_images(images)
        pixels = ((images[:, 0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        header, out = self.header_bytes(), []
        for p in pixels:
            head, scan = split_header(jpeg_bytes(p, self.config.quality, self.config.restart_interval))
            if head != header:
                raise ValueError("Pillow wrote another JPEG header than the one stored in this tokenizer (another Pillow "
                                 "version or quality): rebuild the tokenizer with this Pillow")  # fmt: skip
            out.append(scan)
        return out

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 1, S, S) in [-1, 1] -> ids (B, L): the stream's bytes, END, then PAD. A stream
        longer than L - 1 bytes is cut to L bytes with no END (it decodes as a failure); size
        ``max_len`` on the training set (:meth:`fit` counts them)."""
        L = self.config.max_len
        tokens = torch.full((images.shape[0], L), self.pad_id, dtype=torch.long)
        for i, scan in enumerate(self.streams(images)):
            row = list(scan[:L]) + ([self.end_id] if len(scan) < L else [])
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return tokens.to(self._device())

    def stream_of(self, tokens_L: list[int]) -> bytes | None:
        """The JPEG file of one token row, or None when the row is no stream (no END, PAD before END)."""
        end = self.end_id
        if end not in tokens_L:
            return None
        body = tokens_L[: tokens_L.index(end)]
        if any(t >= NUM_BYTES for t in body):
            return None
        return self.header_bytes() + bytes(body)

    def decode_stream(self, data: bytes | None) -> np.ndarray | None:
        """The (S, S) uint8 image of a JPEG file, or None when it is not a complete valid stream."""
        if data is None or not check_scan(data[len(self.header) :], self.grammar()):
            return None
        S = self.config.image_size
        assert not ImageFile.LOAD_TRUNCATED_IMAGES, "truncated JPEG streams must fail, not be padded with grey"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a warning of the decoder is a failure too
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    if im.size != (S, S) or im.mode != "L":
                        return None
                    return np.asarray(im, dtype=np.uint8).copy()
        except Exception:  # noqa: BLE001 - Pillow raises many kinds on bad data; any of them means "does not decode"
            return None

    @torch.no_grad()
    def decode(self, tokens: Tensor, *, return_ok: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Ids (B, L) -> images (B, 1, S, S) in [-1, 1]. A row that is no valid stream becomes a blank
        (black, -1) image; with ``return_ok`` also (B,) bool: which rows decoded."""
        self.check_tokens(tokens)
        S = self.config.image_size
        out = np.zeros((tokens.shape[0], S, S), np.uint8)
        ok = torch.zeros(tokens.shape[0], dtype=torch.bool)
        for i, row in enumerate(tokens.cpu().tolist()):
            img = self.decode_stream(self.stream_of(row))
            if img is not None:
                out[i], ok[i] = img, True
        images = (torch.from_numpy(out).float().div(127.5).sub(1)).unsqueeze(1).to(self._device())
        return (images, ok.to(self._device())) if return_ok else images

    # -- fitting (no gradients): the stream lengths of the training images ------------------------
    @torch.no_grad()
    def fit(self, images: Iterable[Tensor], *, base: None = None) -> "JpegTokenizer":
        """Record the stream lengths of ``images`` (batches (B, 1, S, S) in [-1, 1]) in
        ``info["streams"]``: mean and longest stream in bytes, how many do not fit ``max_len``."""
        if base is not None:
            raise ValueError("the JPEG tokenizer has no weights to take from a base tokenizer: leave base unset")
        lengths = [len(s) for x in images for s in self.streams(x)]
        if not lengths:
            raise ValueError("no images to fit on: the dataset is empty")
        self.info["streams"] = {"images": len(lengths), "mean_bytes": round(sum(lengths) / len(lengths), 3),
                                "max_bytes": max(lengths), "too_long": sum(n >= self.config.max_len for n in lengths),
                                "quality": self.config.quality}  # fmt: skip
        return self

    def bits_per_image(self) -> float | None:
        """8 bits per byte of the mean stream (scan bytes + FF D9) of the training images; None
        before :meth:`fit` (the header is shared by every image and not counted)."""
        mean = self.info.get("streams", {}).get("mean_bytes")
        return None if mean is None else 8 * float(mean)


# the kinds of ScanGrammar states (its features): parts of a block, a data FF's pending 00, restart marker bytes, the end
STATE_KINDS = ("dc", "dcx", "ac", "acx", "rpad", "pad", "ff", "rst00", "rstff", "rstd", "done", "doneff", "eoi1", "eoi2", "end")


class ScanGrammar(TokenGrammar):
    """The token sequences :meth:`JpegTokenizer.decode` accepts, as an automaton over bytes (see
    :mod:`arvision.tokenizers.grammar`): the entropy-coded scan of exactly ``spec.blocks`` blocks
    with the header's Huffman codes (what :func:`check_scan` checks, one byte at a time), every FF
    in it followed by a stuffed 00, the last byte padded with 1-bits, then FF D9, END and PAD.

    A state between bytes is ``("scan", bits, ff)``: ``bits`` where the bit reader stands
    (``(blocks done, part, code prefix or bits left, next coefficient)``, part "dc"/"dcx"/"ac"/"acx",
    or "rpad"/"pad": 1-bits up to the byte's end before a restart marker / after the last block)
    and ``ff`` whether the last byte was a data FF (a 00 must follow); ``("rst", blocks, due)``
    between a run of blocks and the next (``due``: "00" a stuffed 00, "ff" the marker's FF, "d" its
    D0..D7); then ``("done", ff)`` once every block is read, ``("eoi", n)`` after n bytes of FF D9,
    and ``("end",)`` after END.

    Its features (:meth:`features`, what a generator with ``parse_state`` reads beside each byte):
    the blocks done, the kind of state (:data:`STATE_KINDS`: the part of a block the reader is in,
    a pending stuffed 00, a byte of a restart marker or of FF D9, END), the next coefficient (0-64)
    and how far into a code the reader is (bits of a code prefix read, or value bits still due).
    """

    def __init__(self, spec: ScanSpec) -> None:
        # blocks 0..blocks; kinds; coefficient 0..64 and 65 outside a block; bits 0..16 and 17 outside one; + DEAD
        self.feature_sizes = (spec.blocks + 2, len(STATE_KINDS) + 1, 67, 19)
        super().__init__(NUM_BYTES + 2)
        self.spec = spec
        self.end_id, self.pad_id = NUM_BYTES, NUM_BYTES + 1
        self._eob = min(len(c) for c, s in spec.ac.items() if s == 0x00)
        self._block_min = min(len(c) + s for c, s in spec.dc.items() if s <= 11) + self._eob  # bits of the cheapest block

    @staticmethod
    def block_start(blocks: int) -> tuple:
        """The bit reader at the start of a block, ``blocks`` blocks done (its DC code comes next)."""
        return (blocks, "dc", "", 0)

    def initial(self) -> tuple:
        return ("scan", self.block_start(0), False)

    def features(self, state: tuple) -> tuple[int, int, int, int]:
        kind = state[0]
        if kind == "scan":
            _, (blocks, part, arg, k), ff = state
            bits = len(arg) if part in ("dc", "ac") else arg if part in ("dcx", "acx") else 0
            return blocks, STATE_KINDS.index("ff" if ff else part), k, bits
        if kind == "rst":
            return state[1], STATE_KINDS.index("rst" + state[2]), 65, 17
        name = "end" if kind == "end" else f"eoi{state[1]}" if kind == "eoi" else "doneff" if state[1] else "done"
        return self.spec.blocks, STATE_KINDS.index(name), 65, 17

    # -- the bit reader -------------------------------------------------------------------------
    def _block_end(self, blocks: int) -> tuple:
        done = blocks + 1
        if done == self.spec.blocks:
            return (done, "pad", "", 0)
        return (done, "rpad", "", 0) if self.spec.marker_after(done) is not None else self.block_start(done)

    @functools.lru_cache(maxsize=1 << 20)  # noqa: B019 - bit steps recur across the byte states
    def read_bit(self, st: tuple, bit: str) -> tuple | None:
        """The reader's state after one more bit, or None if the bit makes the scan invalid."""
        blocks, part, arg, k = st
        if part in ("pad", "rpad"):
            return st if bit == "1" else None
        if part in ("dcx", "acx"):
            left = arg - 1
            if left:
                return (blocks, part, left, k)
            if part == "acx" and k == 64:
                return self._block_end(blocks)
            return (blocks, "ac", "", k if part == "acx" else 1)
        code = arg + bit
        table = self.spec.dc if part == "dc" else self.spec.ac
        sym = table.get(code)
        if sym is None:
            return (blocks, part, code, k) if self._live(part, code, k) else None
        if part == "dc":
            if sym > 11:
                return None
            return (blocks, "dcx", sym, 1) if sym else (blocks, "ac", "", 1)
        run, size = sym >> 4, sym & 15
        if size == 0:
            if run == 0:  # end of block
                return self._block_end(blocks)
            if run != 15 or k + 16 > 64:
                return None
            return self._block_end(blocks) if k + 16 == 64 else (blocks, "ac", "", k + 16)
        if k + run > 63:
            return None
        return (blocks, "acx", size, k + run + 1)

    @functools.lru_cache(maxsize=None)  # noqa: B019 - (part, prefix, coefficient) keys: a few thousand
    def _live(self, part: str, prefix: str, k: int) -> bool:
        """Whether some code under ``prefix`` can be read at coefficient ``k`` (a run that would
        pass coefficient 63 cannot, so near a block's end fewer codes are open)."""
        if part == "dc":
            return any(c.startswith(prefix) and s <= 11 for c, s in self.spec.dc.items())
        for c, s in self.spec.ac.items():
            if c.startswith(prefix):
                run, size = s >> 4, s & 15
                if (size == 0 and (run == 0 or (run == 15 and k + 16 <= 64))) or (size and k + run <= 63):
                    return True
        return False

    def _bits_to_block_end(self, st: tuple) -> int:
        """A lower bound on the bits that finish the current block."""
        blocks, part, arg, k = st
        eob = self._eob
        if part in ("pad", "rpad"):
            return 0
        if part == "dcx":
            return arg + eob
        if part == "acx":
            return arg + (eob if k < 64 else 0)
        return self._code_cost(part, arg)

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one grammar per tokenizer, a few hundred (part, prefix) keys
    def _code_cost(self, part: str, arg: str) -> int:
        """Bits that finish the block from a code prefix (lower bound): the cheapest code under it."""
        eob = self._eob
        table = self.spec.dc if part == "dc" else self.spec.ac
        best = None
        for code, sym in table.items():
            if not code.startswith(arg):
                continue
            rest = len(code) - len(arg)
            if part == "dc":
                cost = rest + sym + eob if sym <= 11 else None
            elif sym == 0x00:
                cost = rest
            else:
                cost = rest + (sym & 15)
            if cost is not None and (best is None or cost < best):
                best = cost
        return best if best is not None else 0

    # -- the automaton over bytes -------------------------------------------------------------------
    def transitions(self, state: tuple) -> dict[int, tuple]:
        kind = state[0]
        if kind == "end":
            return {self.pad_id: state}
        if kind == "eoi":
            return {0xD9: ("eoi", 2)} if state[1] == 1 else {self.end_id: ("end",)}
        if kind == "done":
            return {0x00: ("done", False)} if state[1] else {0xFF: ("eoi", 1)}
        if kind == "rst":
            _, blocks, due = state
            if due == "00":
                return {0x00: ("rst", blocks, "ff")}
            if due == "ff":
                return {0xFF: ("rst", blocks, "d")}
            return {self.spec.marker_after(blocks): ("scan", self.block_start(blocks), False)}
        _, bits, ff = state
        if ff:
            return {0x00: ("scan", bits, False)}
        out: dict[int, tuple] = {}
        self._bytes_from(bits, 0, 0, out)
        return out

    def _bytes_from(self, st: tuple, value: int, depth: int, out: dict[int, tuple]) -> None:
        """Walk the 8 bits of a byte as a binary tree (prefixes shared: 510 bit steps per state,
        not 2048): ``out[byte]`` = the state after each byte the reader accepts from ``st``."""
        if depth == 8:
            if st[1] == "pad":
                out[value] = ("done", value == 0xFF)
            elif st[1] == "rpad":
                out[value] = ("rst", st[0], "00" if value == 0xFF else "ff")
            else:
                out[value] = ("scan", st, value == 0xFF)
            return
        for bit in (0, 1):
            nxt = self.read_bit(st, "01"[bit])
            if nxt is not None:
                self._bytes_from(nxt, 2 * value + bit, depth + 1, out)

    def min_to_finish(self, state: tuple) -> int:
        kind = state[0]
        if kind == "end":
            return 0
        if kind == "eoi":
            return 3 - state[1]
        if kind == "done":
            return 3 + state[1]
        if kind == "rst":  # the marker's bytes still due, then the runs of blocks after it
            _, blocks, due = state
            return {"00": 3, "ff": 2, "d": 1}[due] + self._runs_bytes(blocks)
        _, bits, ff = state
        blocks, part = bits[0], bits[1]
        if part in ("pad", "rpad"):  # the run is complete up to its padding
            return ff + (3 if part == "pad" else 2 + self._runs_bytes(blocks))
        run_end = self._run_end(blocks)
        need = self._bits_to_block_end(bits) + (run_end - blocks - 1) * self._block_min  # this run, from this byte on
        return -(-need // 8) + ff + (3 if run_end == self.spec.blocks else 2 + self._runs_bytes(run_end))

    def _run_end(self, blocks: int) -> int:
        """The block count at which the run of blocks holding block ``blocks`` ends (the next restart
        marker, or the last block)."""
        r, total = self.spec.restart, self.spec.blocks
        return min(total, (blocks // r + 1) * r) if r else total

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one entry per run start
    def _runs_bytes(self, start: int) -> int:
        """A lower bound on the bytes from the start of the run beginning at block count ``start``
        (byte-aligned, its marker already written) to END: each run's cheapest blocks padded to a
        byte, a 2-byte marker between runs, then FF D9 and END."""
        end = self._run_end(start)
        run = -(-(end - start) * self._block_min // 8)
        return run + (3 if end == self.spec.blocks else 2 + self._runs_bytes(end))
