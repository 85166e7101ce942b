"""DeviceExecutor: one thread per device running continuous micro-batching.

Each loop iteration:
  1. take commands from the inbox (new requests, cancellations), expire queued ones;
  2. admit waiting requests into free KV slots (FIFO; a request with n choices takes n);
  3. run one packed step: a decode token for every running row plus prompt chunks of
     newly admitted requests, within a budget of prefill_chunk_tokens;
  4. pick each row's next token with its own sampler, run the calculator tool, check
     stop conditions, free finished rows (their slots are reused next iteration);
  5. hand the step's token events to the event loop in one call_soon_threadsafe.

Only this thread touches the model and the cache. A failing step fails the requests in
it and the thread keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from nanochat_gateway.engine.kv_cache import SlotKVCache
from nanochat_gateway.engine.options import ExecutorOptions, StepInfo, check_kv_fits
from nanochat_gateway.engine.request import ChoiceDelta, EngineError, GenerationRequest, TokenLogprob
from nanochat_gateway.engine.rows import Job, Row, RowTools
from nanochat_gateway.engine.sampling import select_tokens
from nanochat_gateway.engine.stream import ADMITTED, RequestStream, StreamItem
from nanochat_gateway.model.device import kv_cache_dtype
from nanochat_gateway.model.loader import LoadedModel
from nanochat_gateway.model.step import StepBatch

log = logging.getLogger(__name__)


class DeviceExecutor:
    """Owns one model replica and its KV slots on one device, in its own thread."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        load: Callable[[torch.device], LoadedModel],
        options: ExecutorOptions,
    ):
        self.name, self.device, self.options = name, device, options
        self._load = load
        self.loaded: LoadedModel | None = None
        self.state = "starting"  # starting | loading | ready | failed | stopped
        self.failure: str | None = None
        self.ready = threading.Event()
        self.step_listeners: list[Callable[[StepInfo], None]] = []
        self.fault_injector: Callable[[StepBatch], None] | None = None  # tests raise from here
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Loop-side bookkeeping (touched only on the event loop thread).
        self.streams: set[RequestStream] = set()
        self._waiting: dict[RequestStream, None] = {}  # submitted, not yet admitted, in order
        self._running_rows = 0  # KV slots held by admitted, unfinished requests
        # Thread-side state.
        self._queue: deque[Job] = deque()
        self._slot_rows: list[Row | None] = []
        self._outbox: dict[RequestStream, list[StreamItem]] = {}
        self._max_seq_len = options.max_seq_len
        self.stats_steps = 0
        self.stats_prefilled = 0
        self.stats_decoded = 0
        self.stats_step_seconds = 0.0

    # ================================================================ loop side
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=f"executor-{self.name}", daemon=True)
        self._thread.start()

    @property
    def load(self) -> int:
        """Requests this executor holds (waiting + running): the router's measure."""
        return len(self.streams)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self.streams) - len(self._waiting)

    def _queue_after_seating(self) -> tuple[int, int]:
        """(requests that will still wait once free slots are filled FIFO, slots left free)."""
        free, queued = self.options.max_batch_size - self._running_rows, 0
        for stream in self._waiting:
            if queued == 0 and stream.request.n <= free:
                free -= stream.request.n
            else:
                queued += 1  # FIFO: once one request waits, everyone behind it waits too
        return queued, free

    @property
    def slots_used(self) -> int:
        return sum(row is not None for row in self._slot_rows)

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; fails at once when the queue is full or the executor is down."""
        assert self._loop is not None, "executor not started"
        if self.state in ("failed", "stopped"):
            raise EngineError("shutdown", f"executor {self.name} is {self.state}")
        if request.n > self.options.max_batch_size:
            raise EngineError("invalid", f"n={request.n} exceeds max_batch_size={self.options.max_batch_size}")
        queued, free = self._queue_after_seating()
        # max_queue bounds the requests that must wait for a slot, not those that get one now.
        if (queued or request.n > free) and queued >= self.options.max_queue:
            raise EngineError("overloaded", f"the queue is full ({self.options.max_queue} waiting requests)")
        stream = RequestStream(request, self, self._loop)
        self.streams.add(stream)
        self._waiting[stream] = None
        stream.add_finish_callback(self._forget)
        self._inbox.put(("submit", stream))
        return stream

    def _forget(self, stream: RequestStream) -> None:
        self.streams.discard(stream)
        if self._waiting.pop(stream, False) is not False:
            return
        self._running_rows -= stream.request.n

    def cancel(self, stream: RequestStream, choice: int | None = None) -> None:
        self._inbox.put(("cancel", stream, choice))

    def stop(self, timeout: float = 10.0) -> None:
        """Fail whatever is still queued or running, then end the thread."""
        if self._thread is None:
            return
        self._inbox.put(("stop",))
        self._thread.join(timeout)
        self.state = "stopped"

    def _deliver(self, outbox: dict[RequestStream, list[StreamItem]]) -> None:
        for stream, items in outbox.items():
            if stream in self._waiting and ADMITTED in items:
                del self._waiting[stream]
                self._running_rows += stream.request.n
            stream.push(items)

    def describe(self) -> dict:
        return {
            "name": self.name, "device": str(self.device), "state": self.state, "failure": self.failure,
            "running": self.running, "waiting": self.waiting, "slots_used": self.slots_used,
            "slots_total": self.options.max_batch_size, "steps": self.stats_steps,
            "tokens_prefilled": self.stats_prefilled, "tokens_decoded": self.stats_decoded,
        }

    # ============================================================= thread side
    def _run(self) -> None:
        try:
            self._start_up()
        except Exception as exc:  # a load failure is reported through /ready, not a crash
            log.exception("executor %s failed to start", self.name)
            self.state, self.failure = "failed", str(exc)
            self.ready.set()
            return
        with torch.inference_mode():
            while self._serve_once():
                pass
        self.state = "stopped"

    def _start_up(self) -> None:
        if self.device.type == "cpu" and self.options.cpu_threads:
            torch.set_num_threads(self.options.cpu_threads)
        self.state = "loading"
        start = time.monotonic()
        self.loaded = loaded = self._load(self.device)
        config = loaded.config
        self._max_seq_len = self.options.max_seq_len or config.sequence_len
        n_slots = self.options.max_batch_size
        kv_dtype = kv_cache_dtype(self.device, loaded.dtype)
        needed = SlotKVCache.bytes_needed(config, n_slots, self._max_seq_len, kv_dtype)
        check_kv_fits(self.device, needed, self.options, config.kv_bytes_per_token(kv_dtype))
        self.cache = SlotKVCache(
            config, n_slots, self._max_seq_len, dtype=kv_dtype, device=self.device, smear=loaded.spec.smear
        )
        self._slot_rows = [None] * n_slots
        self._tools = RowTools(loaded.tokenizer, calculator=self.options.calculator)
        log.info(
            "executor %s: %s on %s, KV cache %.1f MiB (%d slots x %d tokens x %d B/token), %d threads",
            self.name, loaded.generation, self.device, self.cache.nbytes / 2**20, n_slots, self._max_seq_len,
            config.kv_bytes_per_token(kv_dtype), torch.get_num_threads(),
        )
        with torch.inference_mode():
            warm_start = time.monotonic()
            self._warm_up()
        log.info("phase=warmup executor=%s device=%s seconds=%.2f", self.name, self.device,
                 time.monotonic() - warm_start)
        log.info("executor %s ready in %.2fs", self.name, time.monotonic() - start)
        self.state = "ready"
        self.ready.set()

    def _warm_up(self) -> None:
        # One prefill and one decode so the first real request does not pay kernel set-up.
        model = self.loaded.model
        model.forward_step(StepBatch.build([], [(0, 0, [0] * 8)], [0], self.device), self.cache)
        model.forward_step(StepBatch.build([(0, 8, 0)], [], [0], self.device), self.cache)

    def _serve_once(self) -> bool:
        idle = not self._queue and self.slots_used == 0
        if not self._take_commands(block=idle):
            self._shutdown()
            return False
        self._expire_queue()
        self._admit()
        if self.slots_used:
            self._step()
        self._flush()
        return True

    def _take_commands(self, block: bool) -> bool:
        """Apply inbox commands; returns False on stop."""
        try:
            command = self._inbox.get(timeout=self._next_deadline_wait()) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        commands = [command]
        if block and command[0] == "submit" and self.options.admit_window_ms > 0:
            # Gather arrivals of the next few ms so their prompts prefill in one step.
            until = time.monotonic() + self.options.admit_window_ms / 1000
            while (left := until - time.monotonic()) > 0:
                try:
                    commands.append(self._inbox.get(timeout=left))
                except queue.Empty:
                    break
        while True:
            try:
                commands.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for command in commands:
            if command[0] == "stop":
                return False
            if command[0] == "submit":
                self._enqueue(command[1])
            elif command[0] == "cancel":
                self._cancel(command[1], command[2])
        return True

    def _next_deadline_wait(self) -> float | None:
        if not self._queue:
            return None
        return max(0.0, min(job.deadline for job in self._queue) - time.monotonic())

    def _enqueue(self, stream: RequestStream) -> None:
        request = stream.request
        if len(request.prompt_ids) + 1 > self._max_seq_len:
            self._emit(stream, EngineError("invalid", f"prompt of {len(request.prompt_ids)} tokens does not fit "
                                           f"the context of {self._max_seq_len}"))
            return
        self._queue.append(Job(stream, request, time.monotonic() + request.queue_timeout_s))

    def _expire_queue(self) -> None:
        now = time.monotonic()
        if any(job.deadline <= now for job in self._queue):
            for job in [j for j in self._queue if j.deadline <= now]:
                self._queue.remove(job)
                self._emit(job.stream, EngineError("timeout", "the request waited too long for a free slot"))

    def _cancel(self, stream: RequestStream, choice: int | None) -> None:
        for job in self._queue:
            if job.stream is stream:
                self._queue.remove(job)
                for i in range(job.request.n):
                    self._emit(stream, ChoiceDelta(i, [], finish_reason="cancelled"))
                return
        for row in list(self._slot_rows):
            if row is not None and row.job.stream is stream and (choice is None or row.choice == choice):
                self._finish_row(row, "cancelled")
        self._compact()

    def _admit(self) -> None:
        while self._queue:
            job = self._queue[0]
            n = job.request.n
            free = self.options.max_batch_size - self.slots_used
            if n > free:
                return
            self._queue.popleft()
            first = self.slots_used
            job.rows = [Row.create(job, i, first + i, self.device) for i in range(n)]
            job.rows[0].forks = job.rows[1:]
            for row in job.rows:
                self._slot_rows[row.slot] = row
            self._emit(job.stream, ADMITTED)

    # ------------------------------------------------------------------ step
    def _step(self) -> None:
        rows = [r for r in self._slot_rows if r is not None and r.feed]
        decode = [r for r in rows if len(r.feed) == 1]
        budget = self.options.prefill_chunk_tokens
        chunks: list[tuple[Row, int]] = []
        for row in sorted((r for r in rows if len(r.feed) > 1), key=lambda r: r.job.seq):
            if budget <= 0:
                break
            take = min(len(row.feed), budget)
            chunks.append((row, take))
            budget -= take
        # row numbers in the packed step: decode rows first, then prefill chunks
        completing = [len(decode) + i for i, (row, take) in enumerate(chunks) if take == len(row.feed)]
        completes = [chunks[i - len(decode)][0] for i in completing]
        order = decode + [row for row, _ in chunks]
        batch = StepBatch.build(
            decode=[(r.slot, r.pos, r.feed[0]) for r in decode],
            prefill=[(r.slot, r.pos, r.feed[:take]) for r, take in chunks],
            logits_for=[*range(len(decode)), *completing],
            device=self.device,
        )
        start = time.perf_counter()
        try:
            if self.fault_injector is not None:
                self.fault_injector(batch)
            logits = self.loaded.model.forward_step(batch, self.cache)
        except torch.OutOfMemoryError:
            log.exception("executor %s: out of memory in a step", self.name)
            # Failing the prefilling requests frees the memory the chunk needed; decode rows
            # did not advance and simply run again next step.
            victims = [r for r, _ in chunks] or decode
            self._fail_jobs({r.job for r in victims}, "out of memory while processing the prompt")
            return
        except Exception:
            log.exception("executor %s: step failed", self.name)
            self._fail_jobs({r.job for r in order}, "the model failed while generating")
            return
        for row in decode:
            row.pos += 1
            row.feed = []
        for row, take in chunks:
            row.pos += take
            row.feed = row.feed[take:]
        try:
            self._sample(decode + completes, logits)
        except Exception:
            log.exception("executor %s: sampling failed", self.name)
            self._fail_jobs({r.job for r in decode + completes}, "sampling failed")
        seconds = time.perf_counter() - start
        self._record(len(order), sum(t for _, t in chunks), len(decode), seconds)
        self._compact()

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> None:
        # A finished prompt prefill of an n > 1 request forks its KV into the sibling slots,
        # and every choice samples from the same logits with its own generator.
        sample_rows, logit_rows = [], []
        for i, row in enumerate(rows):
            group = [row]
            if row.forks:
                for fork in row.forks:
                    self.cache.copy(row.slot, fork.slot, row.pos)
                    fork.pos = row.pos
                group += row.forks
                row.forks = []
            sample_rows += group
            logit_rows += [i] * len(group)
        selected = logits if len(logit_rows) == len(rows) else logits[logit_rows]
        tokens, logprobs = select_tokens(selected, [r.sampler for r in sample_rows])
        for row, token, logprob in zip(sample_rows, tokens, logprobs, strict=True):
            self._accept(row, token, logprob)

    def _accept(self, row: Row, token: int, logprob: TokenLogprob | None) -> None:
        request = row.job.request
        emitted = [token]
        row.generated += 1
        if token in request.stop_token_ids:
            self._finish_row(row, "stop", emitted, logprob)
            return
        forced = self._tools.after_token(row, token)
        room = request.max_tokens - row.generated
        if forced:
            forced = forced[:room]
            emitted += forced
            row.generated += len(forced)
        feed = [token, *forced]
        if row.generated >= request.max_tokens or row.pos + len(feed) > self._max_seq_len:
            self._finish_row(row, "length", emitted, logprob)
            return
        row.feed = feed
        self._emit(row.job.stream, ChoiceDelta(row.choice, emitted, [logprob] if logprob else None))

    def _finish_row(self, row: Row, reason: str, tokens: list[int] | None = None,
                    logprob: TokenLogprob | None = None) -> None:
        self._emit(row.job.stream, ChoiceDelta(row.choice, tokens or [], [logprob] if logprob else None, reason))
        row.feed = []
        row.finished = True
        for fork in row.forks:  # siblings still waiting for a prompt that will never finish
            self._finish_row(fork, reason)
        row.forks = []

    def _fail_jobs(self, jobs: set[Job], message: str) -> None:
        for job in jobs:
            self._emit(job.stream, EngineError("internal", message))
            for row in job.rows:
                row.feed, row.finished, row.forks = [], True, []
        self._compact()

    def _compact(self) -> None:
        """Free finished rows' slots, moving the highest running rows into the holes so
        running rows always occupy slots [0, n): batched decode attention then reads a
        dense prefix of the cache."""
        used = [r for r in self._slot_rows if r is not None and not r.finished]
        if len(used) == self.slots_used:
            return
        used.sort(key=lambda r: r.slot)
        for target, row in enumerate(used):
            if row.slot != target:
                self.cache.copy(row.slot, target, row.pos)
                row.slot = target
        self._slot_rows = used + [None] * (len(self._slot_rows) - len(used))

    def _record(self, batch_size: int, prefill: int, decode: int, seconds: float) -> None:
        self.stats_steps += 1
        self.stats_prefilled += prefill
        self.stats_decoded += decode
        self.stats_step_seconds += seconds
        if self.step_listeners:
            info = StepInfo(self.name, batch_size, prefill, decode, seconds, self.slots_used)
            for listener in self.step_listeners:
                listener(info)

    # ------------------------------------------------------------ delivery
    def _emit(self, stream: RequestStream, item: StreamItem) -> None:
        self._outbox.setdefault(stream, []).append(item)

    def _flush(self) -> None:
        if self._outbox and self._loop is not None:
            outbox, self._outbox = self._outbox, {}
            # a closed loop raises RuntimeError: nobody is listening any more
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver, outbox)

    def _shutdown(self) -> None:
        for job in self._queue:
            self._emit(job.stream, EngineError("shutdown", "the server is shutting down"))
        self._queue.clear()
        jobs = {r.job for r in self._slot_rows if r is not None}
        for job in jobs:
            self._emit(job.stream, EngineError("shutdown", "the server is shutting down"))
        self._slot_rows = [None] * len(self._slot_rows)
        self._flush()
