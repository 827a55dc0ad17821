"""Raster next-token generation over a 1-D token sequence (layout kind "sequence").

The same model and decoding step as :mod:`arvision.generators.next_token` (class token, then one
token per forward pass with a KV cache); only the positions differ: 1-D RoPE over the sequence
(or learned absolute embeddings) instead of 2D RoPE over a grid. For tokenizers whose tokens are a
sequence rather than a picture: 1-D latent tokens (TiTok/FlexTok), codec bytes.

``num_tokens`` (a sampling setting) stops after the first k tokens: for tokenizers that decode a
prefix (FlexTok's nested dropout: fewer tokens, a coarser image) the number of tokens, and so of
forward passes, is chosen at sampling time.

Sequences of variable length (``end_id``/``pad_id`` from the tokenizer's layout, JPEG bytes): every
token after a row's first ``end_id`` is ``pad_id``, whatever the model samples there, so a sampled
sequence is always a valid end-padded sequence. ``constrained`` (a sampling setting) goes further
for tokenizers with a grammar (JPEG bytes, ``tokenizer.grammar()``): at every step the tokens that
would leave the row no valid completion get probability 0.

``parse_state`` (a config field, for tokenizers whose grammar describes its states: JPEG bytes):
beside each token the model reads where the tokenizer's parser stands after it (JPEG: the block,
the coefficient and the part of a Huffman code the next bits belong to), as a sum of small
embeddings added to the token's. The automaton computes it exactly from the prefix, for training
streams and for samples (free or constrained) alike, so the model need not learn to parse a bit
stream; a row that leaves the grammar reads the DEAD ids from there on.

Legend: B batch, L tokens of the layout, k tokens generated, T positions of a step, R rows of a step
(2B with guidance), F features of a parser state, C width, V vocabulary, Dh head width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.generators.base import GeneratorConfig
from arvision.generators.next_token import NextTokenGenerator, NextTokenOrder
from arvision.generators.parts import match_rows
from arvision.modeling import register_model
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Step, register_order
from arvision.tokenizers.grammar import TokenGrammar

POSITIONS = ("rope1d", "learned")


@dataclass(frozen=True, kw_only=True)
class SequenceConfig(GeneratorConfig):
    """A generator over a sequence of ``seq_len`` tokens (derived from the tokenizer's layout).

    Args:
        seq_len: L, tokens per image.
        positions: "rope1d" (1-D rotary embedding; the class token is position 0, token i is
            position i + 1) or "learned" absolute embeddings.
        rope_base: RoPE's frequency base.
        end_id, pad_id: variable-length sequences: after ``end_id`` only ``pad_id`` is sampled
            (None: fixed length).
        parse_state: read the tokenizer's parser state beside each token (needs a tokenizer
            whose grammar has features; see the module docstring).
        state_sizes: ids per feature of that state (derived from the tokenizer's grammar by
            :meth:`SequenceGenerator.config_for_tokenizer`; empty without ``parse_state``).
    """

    seq_len: int = 16
    positions: str = "rope1d"
    rope_base: float = 10000.0
    end_id: int | None = None
    pad_id: int | None = None
    parse_state: bool = False
    state_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1 tokens, got {self.seq_len}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.uses_rope and self.transformer.head_dim % 2:
            raise ValueError(f"1-D RoPE rotates pairs of channels: head_dim must be even, got {self.transformer.head_dim}")
        if (self.end_id is None) != (self.pad_id is None):
            raise ValueError("end_id and pad_id go together (a sequence is padded after its end token); set both or neither")
        for name in ("end_id", "pad_id"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < self.vocab_size:
                raise ValueError(f"{name}={v} is not a token id: use one of 0..{self.vocab_size - 1}")
        if self.parse_state != bool(self.state_sizes) or any(n < 1 for n in self.state_sizes):
            raise ValueError(f"parse_state={self.parse_state} with state_sizes={self.state_sizes}: the sizes of the parser "
                             "state's features come with parse_state (derived from the tokenizer's grammar); "
                             "build the config with SequenceGenerator.config_for_tokenizer")  # fmt: skip

    @property
    def uses_rope(self) -> bool:
        return self.positions == "rope1d"


def rope_1d_table(length: int, head_dim: int, base: float) -> Tensor:
    """(length, Dh/2, 2) cos/sin of positions 0..length-1: pair i turns at base^(-2i/Dh) per position."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), freqs)  # (length, Dh/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


@register_order
class SequenceOrder(NextTokenOrder):
    """Next-token over a 1-D sequence: pass i predicts token i, for the first ``num_tokens``
    tokens (default: all of them). The state then holds those k tokens, which the tokenizer decodes."""

    name = "next-token-1d"
    own_settings = ("num_tokens", "constrained")
    length: int | None = None  # tokens of the last plan
    grammar: TokenGrammar | None = None  # the tokenizer's automaton (constrained decoding, parse_state)
    constrained: bool = False  # the last plan's setting

    def check(self, s: SamplingConfig) -> None:
        super().check(s)
        if self.generator.config.parse_state and (self.tokenizer is None or self.tokenizer.grammar() is None):
            raise ValueError("this model reads the tokenizer's parser state beside each token (parse_state), so it samples "
                             "only with its tokenizer (a JPEG byte tokenizer): pass the tokenizer it was trained with")  # fmt: skip
        if s.constrained and (self.tokenizer is None or self.tokenizer.grammar() is None):
            what = "no tokenizer was given" if self.tokenizer is None else f"{type(self.tokenizer).__name__} has no grammar"
            raise ValueError(f"constrained=True needs a tokenizer that says which sequences are valid (JPEG bytes), but {what}: "
                             "every id sequence of this tokenizer decodes, so leave constrained unset")  # fmt: skip

    def plan(self, s: SamplingConfig) -> list[Step]:
        self.length = self.generator.check_num_tokens(s.num_tokens)
        if s.constrained and self.length != self.generator.num_tokens:
            raise ValueError(f"constrained decoding checks whole sequences: num_tokens={s.num_tokens} cuts them to "
                             f"{self.length} of {self.generator.num_tokens} tokens; leave num_tokens unset")  # fmt: skip
        self.constrained = bool(s.constrained)
        uses = s.constrained or self.generator.config.parse_state  # (check() has said so where there is no tokenizer)
        self.grammar = self.tokenizer.grammar() if uses and self.tokenizer is not None else None
        return [Step(i, i, i, i + 1) for i in range(self.length)]

    def start(self, batch_size: int, prior_BL: Tensor | None, known_BL: Tensor | None, device: torch.device) -> DecodeState:
        """The state over the first k tokens (``prior_BL``/``known_BL``, if given, cover all L and are cut to k)."""
        state = super().start(batch_size, prior_BL, known_BL, device)
        k = self.length if self.length is not None else self.generator.num_tokens
        if k != state.tokens_BL.shape[1]:
            state = DecodeState(tokens_BL=state.tokens_BL[:, :k].clone(), known_BL=state.known_BL[:, :k].clone(),
                                open_BL=state.open_BL[:, :k].clone())  # fmt: skip
        if self.grammar is not None:
            g = state.extra["grammar"] = self.grammar.start(batch_size, device)  # (B,) automaton state per row
            if self.generator.config.parse_state:  # (B, k, F): position p reads the state after p tokens
                parse = torch.zeros(batch_size, k, len(self.grammar.feature_sizes), dtype=torch.long, device=device)
                parse[:, 0] = self.grammar.state_features(g)
                p = self.merged_prefix(state.known_BL)  # a prefix fixed in every row: one merged pass reads it
                if p:
                    parse[:, : p + 1] = self.grammar.prefix_features(state.tokens_BL[:, :p])
                state.extra["parse"] = parse
        return state

    def update(self, state: DecodeState, step: Step, logits_BTV: Tensor, sampler) -> None:
        """Sample the step's tokens; then, for variable-length sequences, every decided token after a
        row's first end token becomes padding (tokens fixed by the caller stay as they are).
        Constrained decoding: tokens the grammar rules out get probability 0 before the draw."""
        last = step.end - 1  # the position this pass samples; a merged pass first teacher-forces a known prefix
        if self.grammar is not None:
            g = state.extra["grammar"]
            for j in range(step.start, last):  # known in every row (NextTokenOrder.skip_known)
                g = self.grammar.advance(g, state.tokens_BL[:, j])
        if self.constrained:
            allowed_BV = self.grammar.allowed(g, self.generator.num_tokens - last)
            logits_BTV = logits_BTV.clone()
            logits_BTV[:, -1].masked_fill_(~allowed_BV, float("-inf"))
        super().update(state, step, logits_BTV, sampler)
        if self.grammar is not None:  # the row's automaton takes the token it got (sampled or fixed by the caller)
            g = state.extra["grammar"] = self.grammar.advance(g, state.tokens_BL[:, last])
            parse = state.extra.get("parse")
            if parse is not None and last + 1 < parse.shape[1]:
                parse[:, last + 1] = self.grammar.state_features(g)
        c = self.generator.config
        if c.end_id is None:
            return
        t = state.tokens_BL
        is_end = (t == c.end_id).long()
        after_end = (is_end.cumsum(1) - is_end) > 0  # an end token lies strictly before the position
        force = after_end & ~state.open_BL & ~state.known_BL
        t[force] = c.pad_id

    def stop_early(self, state: DecodeState) -> bool:
        """Variable-length sequences: once every row holds a decided end token, the open positions
        can only become padding, so they are filled and decoding stops (the forward passes that
        would sample them are saved; the tokens are those of a full-length run)."""
        c = self.generator.config
        if c.end_id is None:
            return False
        ended = ((state.tokens_BL == c.end_id) & ~state.open_BL).any(1)
        if not bool(ended.all()):
            return False
        state.tokens_BL[state.open_BL] = c.pad_id
        state.open_BL[:] = False
        return True


@register_model
class SequenceGenerator(NextTokenGenerator):
    """Class-conditional raster next-token generator over a 1-D token sequence."""

    model_type = "sequence_generator"
    config_class = SequenceConfig
    config: SequenceConfig
    order_class = SequenceOrder
    layout_kind = "sequence"
    layout_map = {"seq_len": "length", "end_id": "end_id", "pad_id": "pad_id"}

    def __init__(self, config: SequenceConfig) -> None:
        super().__init__(config)
        if config.parse_state:  # one embedding per feature of the parser's state, summed into the token's
            self.state_emb = nn.ModuleList(nn.Embedding(n, config.transformer.width) for n in config.state_sizes)
            self.init_weights()  # again, now that they exist (the same recipe for every part)

    @classmethod
    def config_for_tokenizer(cls, tokenizer, **fields) -> SequenceConfig:
        """The config for a sequence tokenizer; with ``parse_state``, the sizes of its grammar's features."""
        if fields.get("parse_state"):
            grammar = tokenizer.grammar()
            if grammar is None or not grammar.feature_sizes:
                raise ValueError(f"parse_state reads the tokenizer's parser state, and {type(tokenizer).__name__} has "
                                 "no grammar with state features (JPEG byte tokenizers have one): leave parse_state unset")  # fmt: skip
            fields["state_sizes"] = tuple(grammar.feature_sizes)
        return cls.config_for(tokenizer.layout, **fields)

    @property
    def num_tokens(self) -> int:
        return self.config.seq_len

    def embed_states(self, parse_BTF: Tensor) -> Tensor:
        """(B, T, C) the sum of the feature embeddings of parser states (B, T, F)."""
        return sum(emb(parse_BTF[..., f]) for f, emb in enumerate(self.state_emb))

    def hidden(self, tokens_BL: Tensor, labels_B: Tensor, parse_BLF: Tensor | None = None) -> Tensor:
        """Teacher-forced backbone outputs (B, L, C); ``parse_BLF`` (with parse_state): the parser's
        state after p tokens for position p (:meth:`TokenGrammar.prefix_features`)."""
        if not self.config.parse_state:
            if parse_BLF is not None:
                raise ValueError("parse_BLF was given, but this model does not read parser states (parse_state is off)")
            return super().hidden(tokens_BL, labels_B)
        if parse_BLF is None or parse_BLF.shape != (*tokens_BL.shape, len(self.config.state_sizes)):
            got = None if parse_BLF is None else tuple(parse_BLF.shape)
            raise ValueError(f"this model reads the parser's state beside each token: pass parse_BLF of shape "
                             f"{(*tokens_BL.shape, len(self.config.state_sizes))} (parse_inputs(tokens_BL, tokenizer)), got {got}")  # fmt: skip
        cond = self.class_emb(labels_B)
        x = self._embed(cond, tokens_BL[:, :-1], 0) + self.embed_states(parse_BLF)
        return self.transformer(x, cond_BD=self._adaln(cond), is_causal=True, rope=self._rope(0, x.shape[1]))

    def forward(self, tokens_BL: Tensor, labels_B: Tensor, parse_BLF: Tensor | None = None) -> Tensor:
        return self.head(self.hidden(tokens_BL, labels_B, parse_BLF))

    def parse_inputs(self, tokens_BL: Tensor, tokenizer) -> Tensor:
        """(B, L, F) the parser states the model reads for teacher-forced ``tokens_BL`` (position p: the
        state after p tokens), from the tokenizer's grammar; a clear error for a tokenizer it was not built for."""
        grammar = tokenizer.grammar() if tokenizer is not None else None
        sizes = tuple(grammar.feature_sizes) if grammar is not None else None
        if sizes != self.config.state_sizes:
            raise ValueError(f"this model reads parser states with feature sizes {self.config.state_sizes}, and the "
                             f"tokenizer's grammar has {sizes}: use the tokenizer its config was built for")  # fmt: skip
        return grammar.prefix_features(tokens_BL)[:, : tokens_BL.shape[1]]

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        """Logits (B, L, V) in one forward pass; with ``parse_state`` the tokenizer's grammar gives the
        parser states of the tokens (what decoding computes one token at a time)."""
        if not self.config.parse_state:
            return super().reference_logits(tokens_BL, labels_B, tokenizer)
        return self(tokens_BL, labels_B, self.parse_inputs(tokens_BL, tokenizer))

    def step_inputs(self, state: DecodeState, cond_RD: Tensor, start: int, end: int) -> Tensor:
        x = super().step_inputs(state, cond_RD, start, end)
        if self.config.parse_state:
            x = x + self.embed_states(match_rows(state.extra["parse"][:, start:end], cond_RD.shape[0]))
        return x

    def build_rope_table(self) -> Tensor:
        """(1 + L, Dh/2, 2): the class token at position 0 (no rotation), token i at position i + 1."""
        c = self.config
        return rope_1d_table(c.seq_len + 1, c.transformer.head_dim, c.rope_base)

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        """Variable-length sequences: the batch is cut after its last non-padding token (the
        padding columns every row shares carry no loss worth their compute). With ``parse_state``
        the tokenizer's grammar adds the parser state of every position (``parse_BLF``)."""
        c = self.config
        inputs, extra = super().training_inputs(tokens_BL, labels_B, tokenizer, generator)
        if c.pad_id is not None:
            used = (tokens_BL != c.pad_id).any(0).nonzero()
            k = extra["length"] = int(used[-1]) + 1 if used.numel() else 1
            inputs["tokens_BL"] = tokens_BL[:, :k]
        if c.parse_state:
            inputs["parse_BLF"] = self.parse_inputs(inputs["tokens_BL"], tokenizer)
        return inputs, extra

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        return self.loss(logits_BLV, tokens_BL[:, : extra.get("length", tokens_BL.shape[1])])

    def check_num_tokens(self, k: int | None) -> int:
        """The number of tokens to generate (None = all L), or a clear error."""
        L = self.num_tokens
        if k is None:
            return L
        if k > L:
            raise ValueError(f"num_tokens={k}: this model generates sequences of at most {L} tokens; use 1..{L} (None = all)")
        return k
