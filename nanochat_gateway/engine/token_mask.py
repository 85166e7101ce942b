"""Grammar enforcement on the executor thread: per-row matchers and the step's token mask.

- :class:`RowGrammar` is one sequence's parser state. It advances with each accepted token,
  refuses a token its grammar forbids (leaving the state as it was), and says when the
  output is complete (nothing but an end token may follow).
- :class:`TokenMasker` computes the allowed-token bitmasks of a step's constrained rows in
  one parallel llguidance call (which releases the GIL) and sets every forbidden logit to
  -inf in place. A step without constrained rows returns before doing anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import numpy as np
import torch
from llguidance.numpy import fill_next_token_bitmask_par

from nanochat_gateway.engine.grammar import Grammar

__all__ = ["RowGrammar", "TokenMasker"]


class RowGrammar:
    """The grammar state of one sequence (one choice of a request)."""

    __slots__ = ("matcher",)

    def __init__(self, grammar: Grammar) -> None:
        self.matcher = grammar.new_matcher()

    def accept(self, token: int) -> bool:
        """Advance by ``token``; False, with the state unchanged, if the grammar forbids it."""
        return bool(self.matcher.try_consume_tokens([token]) == 1)

    @property
    def complete(self) -> bool:
        """True once the output is finished: only an end token could follow."""
        return bool(self.matcher.is_stopped())

    def allowed(self, vocab_size: int) -> np.ndarray:
        """Booleans over the vocabulary: which tokens may come next (for tests and tools)."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, count=vocab_size, bitorder="little").astype(bool)


class TokenMasker:
    """Applies the rows' grammars to a step's logits; one per executor, reused every step."""

    def __init__(self, vocab_size: int, threads: int | None = None) -> None:
        """``threads``: llguidance worker threads for the masks (None: its default)."""
        self.vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32
        self._bits = np.zeros((0, self._words), dtype=np.int32)
        self._threads = threads
        self._executor: llguidance.LLExecutor | None = None  # its thread pool starts on first use

    def apply(self, logits: torch.Tensor, grammars: Sequence[RowGrammar | None]) -> None:
        """Set to -inf, in place, the logits that each row's grammar forbids (None: no grammar).

        ``logits`` is (rows, vocab_size) float; rows without a grammar are left untouched.
        """
        rows = [i for i, grammar in enumerate(grammars) if grammar is not None]
        if not rows:
            return
        if self._executor is None:
            self._executor = llguidance.LLExecutor(self._threads)
        if len(rows) > len(self._bits):
            self._bits = np.zeros((len(rows), self._words), dtype=np.int32)
        bits = self._bits[: len(rows)]
        matchers = [(grammars[i].matcher, j) for j, i in enumerate(rows)]  # type: ignore[union-attr]
        fill_next_token_bitmask_par(self._executor, matchers, bits)
        # Unpacking the inverted bits gives the forbidden tokens as bytes, viewed as bools for free.
        unpacked = np.unpackbits(np.invert(bits).view(np.uint8), axis=1, count=self.vocab_size, bitorder="little")
        forbidden = unpacked.view(np.bool_)
        every_row = len(rows) == logits.shape[0]
        if logits.device.type == "cpu":
            # numpy writes the -inf single-threaded: on a busy CPU that is several times faster
            # than an OpenMP masked_fill, whose threads wait on the cores the model just used.
            values = logits.numpy()
            if every_row:
                np.copyto(values, -np.inf, where=forbidden)
            else:
                part = values[rows]
                np.copyto(part, -np.inf, where=forbidden)
                values[rows] = part
            return
        mask = torch.from_numpy(forbidden).to(logits.device, non_blocking=True)
        if every_row:
            logits.masked_fill_(mask, float("-inf"))
        else:
            index = torch.tensor(rows, device=logits.device)
            logits[index] = logits[index].masked_fill_(mask, float("-inf"))
