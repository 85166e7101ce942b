"""Executor bookkeeping: a Job per admitted request, a Row per choice in a KV slot (with
its sampler and, for structured output, its own grammar state), and the calculator tool's
per-row state machine."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from nanochat_gateway.engine.request import GenerationRequest, TokenLogprob
from nanochat_gateway.engine.sampling import RowSampler
from nanochat_gateway.engine.token_mask import RowGrammar
from nanochat_gateway.engine.tools import evaluate_calculator

if TYPE_CHECKING:
    from nanochat_gateway.engine.stream import RequestStream
    from nanochat_gateway.model.tokenizer import NanochatTokenizer

_arrival = itertools.count()


@dataclass(eq=False)
class Job:
    """One request inside the executor thread."""

    stream: RequestStream
    request: GenerationRequest
    deadline: float  # monotonic time after which a queued request times out
    rows: list[Row] = field(default_factory=list)
    seq: int = field(default_factory=lambda: next(_arrival))  # admission order for prefill


@dataclass(eq=False)
class Row:
    """One sequence (a choice of a job) living in a KV slot."""

    job: Job
    choice: int
    slot: int
    sampler: RowSampler
    feed: list[int]  # tokens to run through the model next: prompt chunks, or the last token
    kv_tokens: list[int] = field(default_factory=list)  # tokens whose K/V the slot holds, in order
    generated: int = 0
    finished: bool = False
    forks: list[Row] = field(default_factory=list)  # n > 1 siblings waiting for this prefill
    in_python: bool = False
    expr_tokens: list[int] = field(default_factory=list)
    grammar: RowGrammar | None = None  # structured output: this choice's own parser state
    # Log probabilities of the prompt tokens prefilled so far; None unless the request asked
    # for them (only the choice that prefills the prompt gathers them).
    prompt_logprobs: list[TokenLogprob] | None = None

    @property
    def pos(self) -> int:
        """Tokens already in the KV cache (the position of the next token fed)."""
        return len(self.kv_tokens)

    @classmethod
    def create(cls, job: Job, choice: int, slot: int, device: torch.device, reused: int = 0) -> Row:
        """A row for choice `choice`; choice 0 starts with the prompt's first `reused` tokens
        already in its slot's KV and feeds the rest (the other choices fork from it)."""
        sampling = job.request.sampling
        # Choice i of a seeded request uses seed + i, so choice 0 equals the same request with n=1.
        sampler = RowSampler(sampling, sampling.resolved_seed() + choice, device)
        prompt = job.request.prompt_ids
        grammar = RowGrammar(job.request.grammar) if job.request.grammar is not None else None
        scored: list[TokenLogprob] | None = [] if choice == 0 and job.request.prompt_logprobs is not None else None
        if choice:
            return cls(job=job, choice=choice, slot=slot, sampler=sampler, feed=[], grammar=grammar)
        return cls(job=job, choice=choice, slot=slot, sampler=sampler, feed=list(prompt[reused:]),
                   kv_tokens=list(prompt[:reused]), grammar=grammar, prompt_logprobs=scored)


class RowTools:
    """nanochat's calculator: <|python_start|>expr<|python_end|> is answered by forcing
    <|output_start|>result<|output_end|> into the sequence, as nanochat's engine does."""

    def __init__(self, tokenizer: NanochatTokenizer, *, calculator: bool = True):
        self.tokenizer, self.enabled = tokenizer, calculator
        self.python_start, self.python_end = tokenizer.python_start, tokenizer.python_end
        self.output_start, self.output_end = tokenizer.output_start, tokenizer.output_end

    def after_token(self, row: Row, token: int) -> list[int]:
        """Update the row's tool state with a sampled token; return tokens to force next."""
        if not self.enabled or row.grammar is not None:  # forced tokens would break the grammar
            return []
        if token == self.python_start:
            row.in_python, row.expr_tokens = True, []
        elif token == self.python_end and row.in_python:
            row.in_python = False
            expr, row.expr_tokens = self.tokenizer.decode(row.expr_tokens), []
            result = evaluate_calculator(expr) if expr else None
            if result is not None:
                return [self.output_start, *self.tokenizer.encode(result), self.output_end]
        elif row.in_python:
            row.expr_tokens.append(token)
        return []
