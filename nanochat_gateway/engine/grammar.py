"""Structured output grammars: JSON schemas compiled by llguidance for one tokenizer.

- Every format reduces to a JSON schema: ``{"type": "object"}`` for JSON mode, the client's
  schema for ``json_schema``, and :func:`tool_call_schema` for forced tool calls.
- :class:`GrammarCompiler` compiles a schema once (an LRU cache keyed by the schema's text,
  which remembers refusals too), within a size limit and a time limit, on a small worker
  pool so the event loop never waits on it; a schema llguidance cannot compile, or one using
  keywords it does not implement, raises :class:`GrammarError` with llguidance's reason.
- A :class:`Grammar` holds a validated matcher in its start state; each row that uses it
  gets its own copy (:mod:`nanochat_gateway.engine.token_mask` drives those per step).
- The llguidance tokenizer is built on first use (about 0.2 s for a 32k vocabulary), so a
  server that never sees a structured request never pays for it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance
from llguidance.tiktoken import lltokenizer_from_encoding

from nanochat_gateway.model.tokenizer import NanochatTokenizer

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = [
    "JSON_OBJECT_SCHEMA",
    "Grammar",
    "GrammarCompiler",
    "GrammarError",
    "GrammarLimits",
    "ToolFunction",
    "tool_call_schema",
]

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}

# Whitespace between JSON tokens: enough for pretty-printed output, but bounded per gap so a
# weak model cannot spend its whole budget on blanks.
_WHITESPACE = r"(\x20|\x0A[\x20\x09]{0,24})?"
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_pattern": _WHITESPACE}
_CACHE_SIZE = 256  # distinct schemas kept compiled (a pydantic-sized grammar is a few hundred KB)


class GrammarError(ValueError):
    """A schema that cannot be enforced; the message says why, for the client."""


@dataclass(frozen=True, slots=True)
class GrammarLimits:
    """How large a schema may be and how long compiling it may take."""

    max_schema_bytes: int = 65536
    compile_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ToolFunction:
    """A function the reply may call: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True, eq=False)
class Grammar:
    """A compiled grammar; ``start`` is a matcher in the initial state, copied for each row."""

    key: str
    start: llguidance.LLMatcher

    def new_matcher(self) -> llguidance.LLMatcher:
        """A fresh matcher in the start state (cheap: a copy, not a compilation)."""
        return self.start.deep_copy()


def tool_call_schema(functions: Sequence[ToolFunction]) -> dict[str, Any]:
    """The schema a forced tool call is decoded with.

    One function: its arguments object itself. Several: ``{"name": ..., "arguments": {...}}``
    where the name picks the function and the arguments follow that function's schema.
    """
    if not functions:
        raise ValueError("a tool call needs at least one function")
    if len(functions) == 1:
        return functions[0].parameters or dict(JSON_OBJECT_SCHEMA)
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": f.name}, "arguments": f.parameters or dict(JSON_OBJECT_SCHEMA)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for f in functions
        ]
    }


class GrammarCompiler:
    """Compiles JSON schemas for one tokenizer and vocabulary, with a cache and limits."""

    def __init__(self, tokenizer: NanochatTokenizer, vocab_size: int, limits: GrammarLimits | None = None,
                 *, workers: int = 1) -> None:
        """``vocab_size`` is the width of the model's logits (it may exceed the tokenizer's)."""
        self.limits = limits or GrammarLimits()
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._cache: OrderedDict[str, Grammar | GrammarError] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache
        self._tokenizer_lock = threading.Lock()  # a slow first build must not block cache hits
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grammar")

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def close(self) -> None:
        """Stop the worker pool (compilations already running finish in the background)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def compile(self, schema: dict[str, Any]) -> Grammar:
        """Compile ``schema`` (or return it from the cache); raises GrammarError."""
        key = self._key(schema)
        if (found := self._cached(key)) is not None:
            return found
        return self._compile(key, schema)

    async def compile_async(self, schema: dict[str, Any]) -> Grammar:
        """compile() on the worker pool, refused after ``compile_timeout_s`` (queueing included)."""
        key = self._key(schema)
        if (found := self._cached(key)) is not None:
            return found
        future = asyncio.wrap_future(self._pool.submit(self._compile, key, schema))
        try:
            return await asyncio.wait_for(future, self.limits.compile_timeout_s)
        except TimeoutError:
            # wait_for cancelled the future: a compilation still queued never runs.
            raise GrammarError(
                f"the schema took longer than {self.limits.compile_timeout_s:g} s to compile; simplify it"
            ) from None

    def _key(self, schema: dict[str, Any]) -> str:
        if not isinstance(schema, dict):
            raise GrammarError("the schema must be a JSON object")
        # Property order shapes the grammar, so the key keeps it (no sort_keys).
        key = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        if len(key.encode()) > self.limits.max_schema_bytes:
            raise GrammarError(f"the schema is larger than {self.limits.max_schema_bytes} bytes")
        return key

    def _cached(self, key: str) -> Grammar | None:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
        if isinstance(found, GrammarError):
            raise GrammarError(str(found))
        return found

    def _remember(self, key: str, result: Grammar | GrammarError) -> None:
        with self._lock:
            self._cache[key] = result
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _compile(self, key: str, schema: dict[str, Any]) -> Grammar:
        try:
            text = llguidance.LLMatcher.grammar_from_json_schema(key, overrides=_JSON_OPTIONS)
        except ValueError as exc:
            error = GrammarError(f"the schema cannot be compiled: {exc}")
        else:
            matcher = llguidance.LLMatcher(self._llg_tokenizer(), text, log_level=0)
            if not matcher.is_error():
                grammar = Grammar(key, matcher)
                self._remember(key, grammar)
                return grammar
            error = GrammarError(_reason(matcher.get_error()))
        self._remember(key, error)
        raise error

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        with self._tokenizer_lock:
            if self._lltokenizer is None:
                tok = self._tokenizer
                # A reply ends on either end token; the mask allows them once the JSON is complete.
                self._lltokenizer = lltokenizer_from_encoding(
                    tok.enc, n_vocab=self._vocab_size, eos_token=[tok.assistant_end, tok.bos_id]
                )
            return self._lltokenizer


def _reason(error: str) -> str:
    """llguidance's error, minus its parser-state dump: what a client can act on."""
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    if "Unimplemented keys" in first:
        return f"the schema uses keywords this server does not support: {first}"
    return f"the schema cannot be enforced: {first}"
