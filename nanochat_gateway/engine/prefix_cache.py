"""PrefixCache: which KV slot a new request sits in, and how much of its KV it can reuse.

A finished (or cancelled) row leaves its keys and values in its slot, with the token ids
that produced them. A new request looks for the free slot whose kept tokens share the
longest prefix with its prompt (only among requests of the same scope), reuses that KV
and prefills only the rest. The bookkeeping is here; the scheduler moves the KV.

Rules:
- at least the last prompt token is always prefilled, so the first sampled token has
  fresh logits; a match shorter than ``min_tokens`` counts as none;
- the matched slot is taken in place when the prompt consumes all it kept (the next
  turn of a conversation). When the prompt leaves it earlier, either the kept tokens
  past the match are overwritten, or the matched prefix is copied into the slot that
  would be evicted anyway (two conversations sharing a system prompt, a regenerated
  answer): whichever throws away fewer kept tokens. Copying costs about a thousandth of
  prefilling the same tokens;
- with nothing to reuse, a slot that keeps nothing goes first, then the least recently
  used one.

Kept KV never moves: rows stay in the slot they were admitted to, so nothing running
can overwrite a prefix that a request is about to reuse.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class KeptPrefix:
    """The KV a free slot still holds: positions [0, len(tokens)) of `tokens`."""

    tokens: np.ndarray
    scope: str
    last_used: int


@dataclass(frozen=True, slots=True)
class Seat:
    """Where a new row goes: its slot, and `reused` prompt tokens whose KV it starts with,
    found in slot `source` (the same slot, or one to copy them from)."""

    slot: int
    reused: int = 0
    source: int | None = None

    @property
    def needs_copy(self) -> bool:
        return self.reused > 0 and self.source != self.slot


class PrefixCache:
    """Kept prefixes of the free slots of one KV cache, and the choice of slots for new rows."""

    def __init__(self, n_slots: int, *, enabled: bool = True, min_tokens: int = 16):
        self.enabled, self.min_tokens = enabled, max(1, min_tokens)
        self._kept: list[KeptPrefix | None] = [None] * n_slots
        self._clock = itertools.count(1)

    @property
    def kept_slots(self) -> int:
        return sum(k is not None for k in self._kept)

    def keep(self, slot: int, tokens: list[int], scope: str) -> None:
        """A row left `slot` with the KV of `tokens` in it."""
        if not self.enabled or not tokens:
            self._kept[slot] = None
            return
        self._kept[slot] = KeptPrefix(np.asarray(tokens, dtype=np.int64), scope, next(self._clock))

    def forget(self, slot: int) -> None:
        """The slot's KV is about to change or is no longer trusted."""
        self._kept[slot] = None

    def seat(self, prompt: list[int], scope: str, free: list[int], *, lookup: bool = True) -> Seat:
        """Choose the slot for a request's first row among `free` slots (not empty), and what
        it reuses; `lookup` False (the request opted out) only picks a slot to evict."""
        match_slot, reused = self._longest_match(prompt, scope, free) if self.enabled and lookup else (None, 0)
        if match_slot is None:
            return Seat(self.evictable(free))
        kept = self._kept[match_slot]
        assert kept is not None
        others = [s for s in free if s != match_slot]
        victim = self.evictable(others) if others else match_slot
        victim_kept = self._kept[victim]
        lost_by_copy = len(victim_kept.tokens) if victim_kept is not None and victim != match_slot else 0
        if victim == match_slot or len(kept.tokens) - reused <= lost_by_copy:
            return Seat(match_slot, reused, match_slot)
        kept.last_used = next(self._clock)  # the rest of it stays worth keeping
        return Seat(victim, reused, match_slot)

    def evictable(self, free: list[int]) -> int:
        """The free slot whose kept KV is worth least: an empty one, else the least recently used."""
        if not self.enabled:
            return min(free)  # low slots keep decode attention's slot ranges short
        return min(free, key=lambda s: (k.last_used if (k := self._kept[s]) is not None else 0, s))

    def _longest_match(self, prompt: list[int], scope: str, free: list[int]) -> tuple[int | None, int]:
        limit = len(prompt) - 1  # the last prompt token always runs through the model
        if limit < self.min_tokens:
            return None, 0
        ids = np.asarray(prompt[:limit], dtype=np.int64)
        best_slot, best, best_kept = None, 0, 0
        for slot in free:
            kept = self._kept[slot]
            if kept is None or kept.scope != scope:
                continue
            n = min(limit, len(kept.tokens))
            if n < max(best, self.min_tokens):
                continue
            differ = np.flatnonzero(ids[:n] != kept.tokens[:n])
            length = int(differ[0]) if len(differ) else n
            # equal matches: take the shortest kept prefix, which the prompt may consume whole
            if length >= self.min_tokens and (length > best or (length == best and len(kept.tokens) < best_kept)):
                best_slot, best, best_kept = slot, length, len(kept.tokens)
        return best_slot, best
