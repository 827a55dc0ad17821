"""Grammar-constrained decoding: which next tokens keep a sequence valid.

A codec tokenizer (JPEG bytes) can be handed token sequences that are no valid stream: one wrong
bit of a Huffman code makes the rest of the scan unreadable. When the tokenizer knows its own
grammar, the sampler can rule such tokens out before drawing (``SamplingConfig.constrained``): the
probabilities of the tokens that keep the sequence a prefix of some valid sequence, and that leave
room to finish it within the layout's length, are renormalised; the others get probability 0. This
is the constrained decoding of structured-output LLM samplers, applied to an image codec.

:class:`TokenGrammar` is a deterministic automaton over token ids, built lazily: a subclass says
what a state is (any hashable value), which tokens it allows and where they lead
(:meth:`TokenGrammar.transitions`), and how many tokens it needs at least to finish
(:meth:`TokenGrammar.min_to_finish`). The class numbers the states it meets and keeps, per state, a
row of next-state numbers (-1: the token is not allowed), so that decoding a batch is a gather.
Only states that samples actually reach are ever expanded.

A grammar may also describe each state by a few small ids (:attr:`TokenGrammar.feature_sizes`,
:meth:`TokenGrammar.features`; JPEG: the block, the coefficient and the part of the code the bit
reader stands at). A generator can read them beside each token (``SequenceConfig.parse_state``):
where a token's bits land is a function of the whole prefix that a small model cannot compute
itself, and the automaton knows it exactly, for training data and samples alike.

Legend: B batch, L tokens, V vocabulary, F features of a state, S states met so far.
"""

from __future__ import annotations

from typing import Hashable

import torch
from torch import Tensor

DEAD = -1  # a row whose prefix is not in the grammar (fixed by the caller): nothing is ruled out


class TokenGrammar:
    """A lazily expanded automaton over ``vocab_size`` token ids; see the module docstring."""

    feature_sizes: tuple[int, ...] = ()  # ids per feature of a state; the last id of each is DEAD's

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._states: list[Hashable] = []
        self._ids: dict[Hashable, int] = {}
        self._expanded: list[bool] = []
        # per state (rows up to a capacity that doubles): next-state numbers (int32, DEAD: not allowed), tokens to finish
        self._table = torch.empty(0, vocab_size, dtype=torch.int32)
        self._min_table = torch.empty(0, dtype=torch.long)
        self._feature_table = torch.empty(0, len(self.feature_sizes), dtype=torch.long)
        self._dead_features = torch.tensor(self.feature_sizes, dtype=torch.long) - 1  # DEAD reads the last id of each

    # -- what a subclass defines -------------------------------------------------------------------
    def initial(self) -> Hashable:
        raise NotImplementedError

    def transitions(self, state: Hashable) -> dict[int, Hashable]:
        """The allowed tokens of ``state`` and the state each leads to."""
        raise NotImplementedError

    def min_to_finish(self, state: Hashable) -> int:
        """A lower bound on the tokens a sequence in ``state`` still needs (its end token included;
        0: finished)."""
        raise NotImplementedError

    def features(self, state: Hashable) -> tuple[int, ...]:
        """The state's feature ids, one per entry of :attr:`feature_sizes` (each below its size - 1:
        the last id stands for DEAD). Only grammars with features define it."""
        raise NotImplementedError(f"{type(self).__name__} describes its states by no features")

    # -- the automaton -------------------------------------------------------------------------------
    def _number(self, state: Hashable) -> int:
        i = self._ids.get(state)
        if i is None:
            i = self._ids[state] = len(self._states)
            self._states.append(state)
            self._expanded.append(False)
            if i >= self._table.shape[0]:  # double the capacity, so that growing stays linear
                cap = max(64, 2 * i)
                self._table = torch.cat([self._table, torch.full((cap - i, self.vocab_size), DEAD, dtype=torch.int32)])
                self._min_table = torch.cat([self._min_table, torch.zeros(cap - i, dtype=torch.long)])
                self._feature_table = torch.cat([self._feature_table, torch.zeros(cap - i, len(self.feature_sizes), dtype=torch.long)])
            self._min_table[i] = self.min_to_finish(state)
            if self.feature_sizes:
                self._feature_table[i] = torch.tensor(self.features(state))
        return i

    def _expand(self, states_B: Tensor) -> None:
        """Compute the transition rows of the states in ``states_B`` that have none yet."""
        for i in sorted(set(states_B.tolist())):
            if i == DEAD or self._expanded[i]:
                continue
            row = [DEAD] * self.vocab_size
            for token, nxt in self.transitions(self._states[i]).items():
                row[token] = self._number(nxt)
            self._table[i] = torch.tensor(row, dtype=torch.int32)
            self._expanded[i] = True

    def start(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """(B,) the initial state of every row."""
        return torch.full((batch_size,), self._number(self.initial()), dtype=torch.long, device=device)

    def allowed(self, states_B: Tensor, room_B: Tensor | int) -> Tensor:
        """(B, V) bool: the tokens each row may take next, given ``room_B`` positions left including
        this one (a token is allowed if its next state can finish in the room after it; where none
        can, every valid token is). A DEAD row allows everything."""
        self._expand(states_B)
        s = states_B.cpu()
        nxt_BV = self._table[s.clamp(min=0)].long()
        room = torch.as_tensor(room_B).cpu().reshape(-1, 1)
        valid = nxt_BV != DEAD
        ok = valid & (self._min_table[nxt_BV.clamp(min=0)] <= room - 1)
        short = ~ok.any(1)  # no room to finish (min_to_finish is only a bound): keep the row valid at least
        ok[short] = valid[short]
        ok[(s == DEAD) | ~ok.any(1)] = True
        return ok.to(states_B.device)

    def advance(self, states_B: Tensor, tokens_B: Tensor) -> Tensor:
        """(B,) the states after each row takes its token (DEAD if the token is not allowed)."""
        self._expand(states_B)
        s, t = states_B.cpu(), tokens_B.cpu().long()
        out = self._table[s.clamp(min=0), t.clamp(0, self.vocab_size - 1)].long()
        out[(s == DEAD) | (t < 0) | (t >= self.vocab_size)] = DEAD
        return out.to(states_B.device)

    def state_features(self, states_B: Tensor) -> Tensor:
        """(B, F) the feature ids of each row's state (DEAD: the last id of every feature)."""
        s = states_B.cpu()
        out = self._feature_table[s.clamp(min=0)]
        out[s == DEAD] = self._dead_features
        return out.to(states_B.device)

    def prefix_features(self, tokens_BL: Tensor) -> Tensor:
        """(B, L + 1, F): the feature ids of each row's state before its first token and after each
        of its tokens (a row that leaves the grammar is DEAD from there on)."""
        if not self.feature_sizes:
            raise ValueError(f"{type(self).__name__} describes its states by no features")
        g = self.start(tokens_BL.shape[0], tokens_BL.device)
        out = [self.state_features(g)]
        for j in range(tokens_BL.shape[1]):
            g = self.advance(g, tokens_BL[:, j])
            out.append(self.state_features(g))
        return torch.stack(out, 1)

    def accepts(self, tokens: list[int]) -> bool:
        """Whether the whole sequence ``tokens`` is in the grammar (a finished state is reached and
        every token after it is allowed there, e.g. padding)."""
        state = self.start(1)
        for t in tokens:
            state = self.advance(state, torch.tensor([t]))
            if int(state) == DEAD:
                return False
        return int(self._min_table[int(state)]) == 0

    @property
    def num_states(self) -> int:
        return len(self._states)
