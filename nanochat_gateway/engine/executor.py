"""DeviceExecutor: the event-loop handle of one device's inference thread.

The handle lives on the event loop: it queues requests (refusing them at once when the
queue is full), forwards cancellations, and keeps the figures the router and /stats read
(requests waiting and running). Its thread loads the model, then hands every step to a
BatchScheduler (scheduler.py), which alone touches the model and the KV cache. The two
sides talk through one inbox of commands and one ``call_soon_threadsafe`` per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

from nanochat_gateway.engine.options import ExecutorOptions, StepCounters, StepHooks
from nanochat_gateway.engine.request import EngineError, GenerationRequest
from nanochat_gateway.engine.scheduler import BatchScheduler, Cancel, Command, Outbox, Stop, Submit
from nanochat_gateway.engine.stream import Admitted, RequestStream
from nanochat_gateway.model.loader import LoadedModel

log = logging.getLogger(__name__)

ExecutorStatus = Literal["starting", "loading", "ready", "failed", "stopped"]


class DeviceExecutor:
    """One device: a model replica and its KV slots, served by one thread."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        load_model: Callable[[torch.device], LoadedModel],
        options: ExecutorOptions,
    ):
        self.name, self.device, self.options = name, device, options
        self._load_model = load_model
        # Written by the thread while it starts, read anywhere.
        self.status: ExecutorStatus = "starting"
        self.failure: str | None = None
        self.ready = threading.Event()
        self.loaded: LoadedModel | None = None
        self.max_seq_len = options.max_seq_len
        self.hooks = StepHooks()  # set on the loop, called on the thread
        self.counters = StepCounters()  # written by the thread, read anywhere
        self.scheduler: BatchScheduler | None = None  # set by the thread once the model is loaded
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Event-loop bookkeeping.
        self.streams: set[RequestStream] = set()
        self._waiting: dict[RequestStream, None] = {}  # submitted, not yet admitted, in order
        self._running_rows = 0  # KV slots held by admitted, unfinished requests

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"executor-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail whatever is still queued or running, then end the thread."""
        if self._thread is None:
            return
        self._inbox.put(Stop())
        self._thread.join(timeout)
        self.status = "stopped"

    # ------------------------------------------------------------ figures
    @property
    def held_requests(self) -> int:
        """Requests this executor holds (waiting + running): the router's measure of load."""
        return len(self.streams)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self.streams) - len(self._waiting)

    @property
    def slots_used(self) -> int:
        return self.scheduler.slots_used if self.scheduler is not None else 0

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "device": str(self.device), "state": self.status, "failure": self.failure,
            "running": self.running, "waiting": self.waiting, "slots_used": self.slots_used,
            "slots_total": self.options.max_batch_size, "steps": self.counters.steps,
            "tokens_prefilled": self.counters.tokens_prefilled, "tokens_decoded": self.counters.tokens_decoded,
            "prefix_cache": self._describe_prefix_cache(),
        }

    def _describe_prefix_cache(self) -> dict[str, Any]:
        counters, rate = self.counters, self.counters.prefix_cache_hit_rate
        return {
            "enabled": self.options.prefix_cache, "min_tokens": self.options.prefix_cache_min_tokens,
            "kept_slots": self.scheduler.prefix.kept_slots if self.scheduler is not None else 0,
            "queried_tokens": counters.prefix_cache_queries, "hit_tokens": counters.prefix_cache_hits,
            "hit_rate": round(rate, 4) if rate is not None else None,
        }

    # ------------------------------------------------------ requests (loop)
    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; fails at once when the queue is full or the executor is down."""
        assert self._loop is not None, "executor not started"
        if self.status in ("failed", "stopped"):
            raise EngineError("shutdown", f"executor {self.name} is {self.status}")
        if request.n > self.options.max_batch_size:
            raise EngineError("invalid", f"n={request.n} exceeds max_batch_size={self.options.max_batch_size}")
        queued, free = self._queue_after_seating()
        # max_queue bounds the requests that must wait for a slot, not those that get one now.
        if (queued or request.n > free) and queued >= self.options.max_queue:
            raise EngineError("overloaded", f"the queue is full ({self.options.max_queue} waiting requests)")
        stream = RequestStream(request, self._cancel, self._loop)
        self.streams.add(stream)
        self._waiting[stream] = None
        stream.add_finish_callback(self._forget)
        self._inbox.put(Submit(stream))
        return stream

    def _queue_after_seating(self) -> tuple[int, int]:
        """(requests that will still wait once free slots are filled FIFO, slots left free)."""
        free, queued = self.options.max_batch_size - self._running_rows, 0
        for stream in self._waiting:
            if queued == 0 and stream.request.n <= free:
                free -= stream.request.n
            else:
                queued += 1  # FIFO: once one request waits, everyone behind it waits too
        return queued, free

    def _cancel(self, stream: RequestStream, choice: int | None) -> None:
        self._inbox.put(Cancel(stream, choice))

    def _forget(self, stream: RequestStream) -> None:
        self.streams.discard(stream)
        if self._waiting.pop(stream, False) is not False:
            return
        self._running_rows -= stream.request.n

    def _deliver(self, outbox: Outbox) -> None:
        for stream, items in outbox.items():
            if stream in self._waiting and any(isinstance(item, Admitted) for item in items):
                del self._waiting[stream]
                self._running_rows += stream.request.n
            stream.push(items)

    # ------------------------------------------------------------- thread
    def _publish(self, outbox: Outbox) -> None:
        """Called on the thread: hand a step's items to the loop in one call."""
        if self._loop is not None:
            # a closed loop raises RuntimeError: nobody is listening any more
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver, outbox)

    def _run(self) -> None:
        try:
            scheduler = self._start_up()
        except Exception as exc:  # a load failure is reported through /ready, not a crash
            log.exception("executor %s failed to start", self.name)
            self.status, self.failure = "failed", str(exc)
            self.ready.set()
            return
        with torch.inference_mode():
            while scheduler.serve_once(self._inbox):
                pass
        self.status = "stopped"

    def _start_up(self) -> BatchScheduler:
        if self.device.type == "cpu" and self.options.cpu_threads:
            torch.set_num_threads(self.options.cpu_threads)
        self.status = "loading"
        start = time.monotonic()
        self.loaded = loaded = self._load_model(self.device)
        self.max_seq_len = self.options.max_seq_len or loaded.config.sequence_len
        scheduler = BatchScheduler(self.name, self.device, loaded, self.options, self.max_seq_len,
                                   hooks=self.hooks, counters=self.counters, publish=self._publish)
        with torch.inference_mode():
            warm_start = time.monotonic()
            scheduler.warm_up()
        log.info("phase=warmup executor=%s device=%s seconds=%.2f", self.name, self.device,
                 time.monotonic() - warm_start)
        log.info("executor %s ready in %.2fs", self.name, time.monotonic() - start)
        self.scheduler = scheduler
        self.status = "ready"
        self.ready.set()
        return scheduler
