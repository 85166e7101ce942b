"""GenerationRun: one generation from plugin hooks to the engine and back as text.

Shared by /v1/chat/completions and /v1/completions. It runs the plugins' on_request
hooks, submits to the router, turns each step's tokens into UTF-8-safe text per choice,
passes every delta through the plugins' on_text hooks (stop sequences live there), and
ends with on_response. It also watches for the client going away and for the request
deadline, and always cancels the engine requests when it stops early, so no slot leaks.

A completions request that batches k prompts is still one run: one on_request, one
on_response and one usage for the HTTP request, k engine requests (one per prompt, so each
is admitted and scheduled on its own), and k x n choices numbered prompt by prompt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, MutableSet
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nanochat_gateway.api import errors
from nanochat_gateway.api.schemas import FinishReason, PromptTokensDetails, Usage
from nanochat_gateway.config import ServerSettings
from nanochat_gateway.engine.detokenizer import IncrementalDetokenizer, ToolCallMode
from nanochat_gateway.engine.grammar import Grammar
from nanochat_gateway.engine.request import (
    ChoiceDelta,
    EngineError,
    GenerationRequest,
    PromptLogprobs,
    TokenLogprob,
)
from nanochat_gateway.engine.router import Router
from nanochat_gateway.engine.stream import RequestStream, StreamGroup, StreamItem
from nanochat_gateway.model.tokenizer import NanochatTokenizer
from nanochat_gateway.plugins import GenerationContext, GenerationResult, Plugin, TextEvent
from nanochat_gateway.state import InFlightRun

if TYPE_CHECKING:
    from nanochat_gateway.api.structured import ForcedCall

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a quiet request checks that its client is still there


class ClientGone(Exception):
    """The client closed the connection; the generation was cancelled."""


# What a vanished client looks like: our own check, a failed write, or aiohttp-sse's send timeout.
CLIENT_GONE_ERRORS = (ClientGone, ConnectionResetError, TimeoutError)


@dataclass(slots=True)
class ChoiceOutput:
    """Text (after plugins) and token details of one choice from one engine step; ``index`` is
    the choice's number in the response (prompt-major when several prompts were sent)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: FinishReason | None


@dataclass
class ChoiceTotal:
    """Everything one choice produced, for a non-streamed response."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason = "stop"


def client_finish_reason(reason: str) -> FinishReason:
    """What a client is told: OpenAI's reasons only (a plugin may name its own; it reads as "stop")."""
    if reason == "length":
        return "length"
    if reason == "content_filter":
        return "content_filter"
    return "stop"


def engine_error_to_api(exc: EngineError, retry_after_s: float) -> errors.APIError:
    if exc.kind == "overloaded":
        return errors.overloaded(f"The server is overloaded: {exc.message}. Retry later.", retry_after_s)
    if exc.kind == "timeout":
        return errors.timeout(f"Request timed out: {exc.message}")
    if exc.kind == "invalid":
        # The API checks context length and n first, so this is only a backstop.
        return errors.invalid_request(exc.message, code="invalid_value")
    if exc.kind in ("shutdown", "unavailable"):
        return errors.unavailable(f"The server is not serving: {exc.message}", retry_after_s=retry_after_s)
    return errors.internal_error()


class GenerationRun:
    """One generation request in flight: created by prepare_run, then streamed or collected."""

    def __init__(self, ctx: GenerationContext, *, router: Router, plugins: list[Plugin],
                 tokenizer: NanochatTokenizer, stop_token_ids: frozenset[int], server: ServerSettings,
                 tool_calls: ToolCallMode, system_fingerprint: str,
                 in_flight: MutableSet[InFlightRun], grammar: Grammar | None = None,
                 forced_call: ForcedCall | None = None, prompt_logprobs: int | None = None,
                 prefix_scope: str = ""):
        self.ctx = ctx
        self._grammar = grammar  # structured output the engine enforces, if any
        self.forced_call = forced_call  # a reply that is a tool call ends with "tool_calls"
        self.prefix_scope = prefix_scope  # requests share cached prompt prefixes only within one scope
        self.system_fingerprint = system_fingerprint
        self.server = server
        self._router = router
        self._plugins = plugins
        self._text_plugins = [p for p in plugins if p.handles_text]
        self.tokenizer = tokenizer
        self._stop_ids = stop_token_ids
        self._tool_calls = tool_calls
        self._prompt_logprobs = prompt_logprobs
        self._in_flight = in_flight  # the runs a graceful shutdown waits for
        self._deadline = time.monotonic() + server.request_timeout_s
        self._group: StreamGroup | None = None
        self.started_at = time.monotonic()
        self.finish_reasons: list[FinishReason | None] = []
        self.completion_tokens: list[int] = []
        # Scores of each prompt's tokens after the first, once the engine has sent them.
        self.prompt_logprobs: list[list[TokenLogprob] | None] = []
        self._detoks: list[IncrementalDetokenizer] = []
        self._done = False
        self._aborted: errors.APIError | None = None
        self._status: int = 200
        self._error: str | None = None

    # ----------------------------------------------------------------- start
    async def start(self) -> None:
        """Run on_request hooks and queue one engine request per prompt. Raises APIError before any output."""
        for plugin in self._plugins:
            await plugin.on_request(self.ctx)
        ctx = self.ctx
        choices = ctx.choices  # after the hooks, which may change the prompts or n
        self.finish_reasons = [None] * choices
        self.completion_tokens = [0] * choices
        self.prompt_logprobs = [None] * len(ctx.prompts)
        self._detoks = [IncrementalDetokenizer(self.tokenizer, self._tool_calls) for _ in range(choices)]
        streams: list[RequestStream] = []
        try:
            for prompt_ids in ctx.prompts:
                streams.append(self._router.submit(GenerationRequest(
                    prompt_ids=prompt_ids, max_tokens=ctx.max_tokens, sampling=ctx.sampling, n=ctx.n,
                    request_id=ctx.request_id, stop_token_ids=self._stop_ids,
                    queue_timeout_s=self.server.queue_timeout_s, grammar=self._grammar,
                    prompt_logprobs=self._prompt_logprobs, use_prefix_cache=ctx.body.cache_prompt,
                    prefix_scope=self.prefix_scope,
                )))
        except EngineError as exc:
            for stream in streams:  # all of the batch or none of it
                stream.cancel()
            raise engine_error_to_api(exc, self.server.retry_after_s) from None
        self._group = StreamGroup(streams, asyncio.get_running_loop())
        self._in_flight.add(self)

    @property
    def group(self) -> StreamGroup:
        assert self._group is not None, "the run has not been started"
        return self._group

    @property
    def prompt_tokens(self) -> int:
        return self.ctx.prompt_tokens

    @property
    def total_completion_tokens(self) -> int:
        return sum(self.completion_tokens)

    def usage(self) -> Usage:
        """OpenAI usage, counted from the token ids the engine produced (all prompts together)."""
        completion = self.total_completion_tokens
        cached = sum(s.cached_tokens for s in self._group.streams) if self._group is not None else 0
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                     total_tokens=self.prompt_tokens + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))

    # --------------------------------------------------------------- outputs
    async def outputs(self) -> AsyncIterator[list[ChoiceOutput]]:
        """Yield each engine step's outputs until every choice has finished."""
        try:
            while not self._done:
                items = await self._next_items()
                step: list[ChoiceOutput] = []
                for prompt, item in items:
                    if isinstance(item, EngineError):
                        raise engine_error_to_api(item, self.server.retry_after_s)
                    if isinstance(item, PromptLogprobs):
                        self.prompt_logprobs[prompt] = item.entries
                    elif isinstance(item, ChoiceDelta):
                        output = self._on_delta(prompt, item)
                        if output is not None:
                            step.append(output)
                if step:
                    yield step
                self._done = all(r is not None for r in self.finish_reasons)
        finally:
            self.cancel()

    async def collect(self) -> list[ChoiceTotal]:
        """Run to the end, reporting how it ended, and return each choice's text, logprobs and finish reason."""
        totals = [ChoiceTotal() for _ in range(self.ctx.choices)]
        texts: list[list[str]] = [[] for _ in totals]
        async with self.reporting():
            async for step in self.outputs():
                for out in step:
                    texts[out.index].append(out.text)
                    if out.logprobs:
                        totals[out.index].logprobs += out.logprobs
        for total, parts, reason in zip(totals, texts, self.finish_reasons, strict=True):
            total.text, total.finish_reason = "".join(parts), reason or "stop"
        return totals

    def cancel(self) -> None:
        """Free the engine requests unless they already ended (safe to call more than once)."""
        if self._group is not None and not self._done:
            self._group.cancel()

    def record(self, status: int, error: str | None) -> None:
        """How the response ended, for on_response (a stream reports errors in-band, not by raising)."""
        self._status, self._error = status, error

    @asynccontextmanager
    async def reporting(self) -> AsyncIterator[None]:
        """Around writing the response: note how it ended, free the engine request, run on_response once."""
        try:
            yield
        except errors.APIError as exc:
            self.record(exc.status, exc.message)
            raise
        except (*CLIENT_GONE_ERRORS, asyncio.CancelledError):
            self.record(499, "client disconnected")
            raise
        except Exception as exc:
            self.record(500, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            # An abandoned outputs() generator would cancel only when garbage-collected: do it now.
            self.cancel()
            self._in_flight.discard(self)
            await asyncio.shield(self._finish())

    def abort_for_shutdown(self) -> None:
        """End this generation now: the writer sends a 503 'shutting down' as its last event."""
        self._aborted = errors.unavailable("The server is shutting down", code="shutting_down")
        self.cancel()

    async def _next_items(self) -> list[tuple[int, StreamItem]]:
        """The next (prompt position, item) pairs from the engine."""
        group = self.group
        while True:
            if self._aborted is not None:
                raise self._aborted
            # Checked before every wait, not only after idle ones: while tokens flow to a
            # non-streaming request nothing is written, so nothing else would notice.
            self._check_client()
            left = self._deadline - time.monotonic()
            if left <= 0:
                group.cancel()
                raise errors.timeout("The request took longer than the server's request_timeout_s")
            items = await group.next_items(timeout=min(DISCONNECT_POLL_S, left))
            if self._aborted is not None:
                raise self._aborted
            if items:
                return items
            if group.finished:
                raise errors.internal_error("The generation ended without a result")

    def _check_client(self) -> None:
        transport = self.ctx.request.transport
        if transport is None or transport.is_closing():
            self.group.cancel()
            raise ClientGone()

    def _on_delta(self, prompt: int, delta: ChoiceDelta) -> ChoiceOutput | None:
        i = prompt * self.ctx.n + delta.index
        if self.finish_reasons[i] is not None:
            return None  # a plugin already ended this choice; late tokens are dropped
        self.completion_tokens[i] += len(delta.token_ids)
        detok = self._detoks[i]
        text = "".join([detok.push(t) for t in delta.token_ids])
        final = delta.finish_reason is not None
        if final:
            text += detok.flush()
        event = TextEvent(i, text, final=final, finish_reason=delta.finish_reason)
        for plugin in self._text_plugins:
            plugin.on_text(self.ctx, event)
        finish: FinishReason | None = None
        if event.stop:
            finish = client_finish_reason(event.finish_reason or "stop")
            if not final:
                self.group.streams[prompt].cancel(delta.index)
        elif final:
            finish = client_finish_reason(event.finish_reason or delta.finish_reason or "stop")
            if finish == "stop" and self.forced_call is not None:
                finish = "tool_calls"  # the grammar ended the call: it is complete
        self.finish_reasons[i] = finish
        return ChoiceOutput(i, event.text, delta.token_ids, delta.logprobs, finish)

    # ---------------------------------------------------------------- finish
    async def _finish(self) -> None:
        """Record the outcome on the context and report it to on_response hooks, once."""
        self.ctx.result = result = GenerationResult(
            prompt_tokens=self.prompt_tokens, completion_tokens=self.total_completion_tokens,
            finish_reasons=list(self.finish_reasons), status=self._status, error=self._error,
            duration=time.monotonic() - self.started_at, choice_tokens=list(self.completion_tokens),
            **_engine_times(self._group),
        )
        for plugin in self._plugins:
            try:
                await plugin.on_response(self.ctx, result)
            except Exception:  # one plugin's failure must not hide the response from the others
                log.exception("plugin %s failed in on_response", plugin.name)


def _engine_times(group: StreamGroup | None) -> dict[str, float | None]:
    """Queue, time to first token, prefill and decode times from the streams' marks."""
    times: dict[str, float | None] = {"queue_seconds": None, "time_to_first_token": None,
                                      "prefill_seconds": None, "decode_seconds": None}
    if group is None:
        return times
    submitted, admitted = group.submitted_at, group.admitted_at
    first, last = group.first_token_at, group.last_token_at
    if admitted is not None:
        times["queue_seconds"] = admitted - submitted
    if first is not None:
        times["time_to_first_token"] = first - submitted
        if admitted is not None:
            times["prefill_seconds"] = first - admitted
        if last is not None:
            times["decode_seconds"] = last - first
    return times
