"""What the engine is asked to do, and what it answers, independent of HTTP."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from nanochat_gateway.engine.grammar import Grammar

# How a choice ended inside the engine; "cancelled" never reaches a client as such.
FinishReason = Literal["stop", "length", "cancelled"]
EngineErrorKind = Literal["overloaded", "timeout", "internal", "invalid", "shutdown", "unavailable"]


@dataclass
class SamplingParams:
    """Per-request sampling. temperature 0 (or below 1e-5) is greedy; top_k 0 and top_p 1 are off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0

    def resolved_seed(self) -> int:
        # A missing seed means fresh randomness per request (nanochat's fixed default of 42
        # would make every unseeded request sample the same way).
        if self.seed is None:
            self.seed = secrets.randbits(63)
        return self.seed


@dataclass
class GenerationRequest:
    """A tokenized prompt and how to continue it."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    request_id: str = ""
    stop_token_ids: frozenset[int] = frozenset()
    queue_timeout_s: float = 60.0
    grammar: Grammar | None = None  # structured output: every choice's tokens must follow it
    # None: no prompt logprobs; k >= 0: every prompt token after the first gets its log
    # probability and the k most likely alternatives at its position (for scoring).
    prompt_logprobs: int | None = None
    use_prefix_cache: bool = True  # False: prefill the whole prompt, whatever KV is kept
    prefix_scope: str = ""  # kept prefixes are shared only between requests of one scope


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token_id, logprob), best first


@dataclass(slots=True)
class ChoiceDelta:
    """New tokens of one choice from one engine step; finish_reason set on its last delta."""

    index: int
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None


@dataclass(slots=True)
class PromptLogprobs:
    """Log probabilities of the prompt's tokens 1..P-1 (the first has no context), sent once,
    before the request's first ChoiceDelta."""

    entries: list[TokenLogprob]


class EngineError(Exception):
    """A request-level failure, of one of the EngineErrorKind kinds."""

    def __init__(self, kind: EngineErrorKind, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message
