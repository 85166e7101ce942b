"""What conversation number N asks: a pure function of (seed, index).

Each index gets its own random generator seeded from the text ``"<seed>:<index>"`` (Python seeds str
through SHA-512, so the choice is the same on every machine and Python run). Indexes therefore do not
depend on each other: a resumed run, a larger ``--count`` or another concurrency asks the same
questions for the same indexes, and another seed asks different ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from nanochat_gateway.synth.catalog import (
    ALL_CATEGORIES,
    ATTACKS,
    BORDERLINE,
    BORDERLINE_KINDS,
    HARM_CATEGORIES,
    MULTI_TURN_ATTACKS,
    OPENINGS,
    PERSONAS,
    Category,
)

DEFAULT_BORDERLINE_FRACTION = 0.25


@dataclass(frozen=True)
class ConversationPlan:
    """The choices behind one synthetic conversation."""

    index: int
    category: str
    topic: str
    persona: str
    opening: str
    style: str  # an ATTACKS key for harmful requests, a BORDERLINE_KINDS key for borderline ones
    exchanges: int  # user/assistant pairs, 1 to 3

    @property
    def is_borderline(self) -> bool:
        return self.category == BORDERLINE

    @property
    def details(self) -> Category:
        return ALL_CATEGORIES[self.category]


def plan_conversation(seed: int, index: int, borderline_fraction: float = DEFAULT_BORDERLINE_FRACTION
                      ) -> ConversationPlan:
    """The deterministic plan of conversation ``index`` for ``seed``."""
    rng = random.Random(f"{seed}:{index}")
    persona = rng.choice(PERSONAS)
    opening = rng.choice(OPENINGS)
    exchanges = rng.randint(1, 3)
    if rng.random() < borderline_fraction:
        kind = rng.choice(sorted(BORDERLINE_KINDS))
        return ConversationPlan(index, BORDERLINE, rng.choice(BORDERLINE_KINDS[kind]), persona, opening, kind,
                                exchanges)
    category = rng.choice(HARM_CATEGORIES)
    style = rng.choice(list(ATTACKS))
    if style in MULTI_TURN_ATTACKS:
        exchanges = max(exchanges, 2)
    return ConversationPlan(index, category.key, rng.choice(category.topics), persona, opening, style, exchanges)
