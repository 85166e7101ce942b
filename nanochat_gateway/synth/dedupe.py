"""Exact and near-duplicate detection of first user messages.

Text is normalised first (Unicode NFKC, case-folded, punctuation dropped, whitespace collapsed), so
"How do I pick a lock?" and "how do i pick a lock" are exact duplicates. Near duplicates are found
with rapidfuzz's normalised Indel similarity (``fuzz.ratio``, 0-100) against every message kept so
far, the file's earlier lines included; rapidfuzz does that scan in C++, which keeps a few thousand
comparisons per conversation cheap.
"""

from __future__ import annotations

import re
import unicodedata

from rapidfuzz import fuzz, process

DEFAULT_THRESHOLD = 90.0
_NOT_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """The comparison form of a message."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


class FirstMessageIndex:
    """The first user messages kept so far, to reject repeats of them."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self._exact: set[str] = set()
        self._kept: list[str] = []

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, text: str) -> None:
        key = normalise(text)
        if key not in self._exact:
            self._exact.add(key)
            self._kept.append(key)

    def repeat_of(self, text: str) -> str | None:
        """"duplicate", "near_duplicate" or None for a message not seen before."""
        key = normalise(text)
        if key in self._exact:
            return "duplicate"
        if self.threshold <= 100 and process.extractOne(key, self._kept, scorer=fuzz.ratio,
                                                        score_cutoff=self.threshold) is not None:
            return "near_duplicate"
        return None
