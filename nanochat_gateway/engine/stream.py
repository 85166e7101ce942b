"""RequestStream: the asyncio side of one submitted request.

The executor thread never touches these objects directly: once per step it hands a
list of (stream, items) to the event loop with a single ``call_soon_threadsafe``, and
``push`` runs on the loop. Handlers ``await stream.next_items()`` (or iterate) and call
``cancel`` when the client goes away. A StreamGroup reads the streams of a request that
sent several prompts as one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from nanochat_gateway.engine.request import (
    ChoiceDelta,
    EngineError,
    FinishReason,
    GenerationRequest,
    PromptLogprobs,
)


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request left the queue and holds KV slots; `cached_tokens` of its prompt reuse
    kept KV and are not prefilled again."""

    cached_tokens: int = 0


StreamItem = ChoiceDelta | PromptLogprobs | EngineError | Admitted


class RequestStream:
    """Token deltas of one request, in order, as the engine produces them."""

    def __init__(self, request: GenerationRequest, cancel: Callable[[RequestStream, int | None], None],
                 loop: asyncio.AbstractEventLoop):
        self.request = request
        self._cancel = cancel  # asks the executor thread to free this request's slots
        self._loop = loop
        self._items: list[StreamItem] = []
        self._waiter: asyncio.Future[None] | None = None
        self._open_choices = set(range(request.n))
        self.admitted = False
        self.cached_tokens = 0  # prompt tokens whose KV was reused (known once admitted)
        self.error: EngineError | None = None
        self.completion_tokens = [0] * request.n
        self.finish_reasons: list[FinishReason | None] = [None] * request.n
        now = time.monotonic()
        self.submitted_at = now
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.finished_at: float | None = None
        self._on_finish: list[Callable[[RequestStream], None]] = []
        self.on_push: Callable[[], None] | None = None  # a StreamGroup reading this stream

    # ------------------------------------------------------------- loop side
    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    def add_finish_callback(self, callback: Callable[[RequestStream], None]) -> None:
        if self.finished:
            callback(self)
        else:
            self._on_finish.append(callback)

    def push(self, items: list[StreamItem]) -> None:
        """Called on the loop by the executor bridge with this step's items."""
        if self.finished:
            return
        now = time.monotonic()
        for item in items:
            if isinstance(item, ChoiceDelta):
                if item.token_ids:
                    self.completion_tokens[item.index] += len(item.token_ids)
                    if self.first_token_at is None:
                        self.first_token_at = now
                    self.last_token_at = now
                if item.finish_reason is not None:
                    self.finish_reasons[item.index] = item.finish_reason
                    self._open_choices.discard(item.index)
            elif isinstance(item, EngineError):
                self.error = item
                self._open_choices.clear()
            elif isinstance(item, Admitted):
                self.admitted, self.admitted_at, self.cached_tokens = True, now, item.cached_tokens
        self._items.extend(items)
        if not self._open_choices:
            self._finish(now)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_push is not None:
            self.on_push()

    def _finish(self, now: float) -> None:
        self.finished_at = now
        callbacks, self._on_finish = self._on_finish, []
        for callback in callbacks:
            callback(self)

    async def next_items(self, timeout: float | None = None) -> list[StreamItem]:
        """Wait for new items; [] on timeout or once everything has been delivered."""
        while not self._items:
            if self.finished:
                return []
            self._waiter = waiter = self._loop.create_future()
            # A timer that resolves the waiter is cheaper than wait_for: this runs every step.
            timer = self._loop.call_later(timeout, _wake, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._items and timer is not None:
                return []
        items, self._items = self._items, []
        return items

    def take(self) -> list[StreamItem]:
        """The items delivered since the last call, without waiting."""
        items, self._items = self._items, []
        return items

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        while True:
            items = await self.next_items()
            if not items:
                return
            for item in items:
                yield item

    def cancel(self, choice: int | None = None) -> None:
        """Stop generating (one choice, or all). The slot is freed at the next step."""
        if not self.finished:
            self._cancel(self, choice)


class StreamGroup:
    """The streams of one HTTP request that sent several prompts, read as one: each item comes
    with the position of its stream, and one wait covers them all."""

    def __init__(self, streams: list[RequestStream], loop: asyncio.AbstractEventLoop):
        self.streams = streams
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        for stream in streams:
            stream.on_push = self._wake

    @property
    def finished(self) -> bool:
        return all(stream.finished for stream in self.streams)

    def _wake(self) -> None:
        if self._waiter is not None:
            _wake(self._waiter)

    def _take(self) -> list[tuple[int, StreamItem]]:
        return [(k, item) for k, stream in enumerate(self.streams) for item in stream.take()]

    async def next_items(self, timeout: float) -> list[tuple[int, StreamItem]]:
        """(stream position, item) pairs delivered since the last call; [] after ``timeout``."""
        items = self._take()
        if items or self.finished:
            return items
        self._waiter = waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
        return self._take()

    def cancel(self) -> None:
        """Stop every stream of the group (those already finished are left alone)."""
        for stream in self.streams:
            stream.cancel()

    @property
    def submitted_at(self) -> float:
        return min(stream.submitted_at for stream in self.streams)

    @property
    def admitted_at(self) -> float | None:
        """When the first of the streams got a KV slot."""
        return min((s.admitted_at for s in self.streams if s.admitted_at is not None), default=None)

    @property
    def first_token_at(self) -> float | None:
        return min((s.first_token_at for s in self.streams if s.first_token_at is not None), default=None)

    @property
    def last_token_at(self) -> float | None:
        return max((s.last_token_at for s in self.streams if s.last_token_at is not None), default=None)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
