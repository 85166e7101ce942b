"""BatchScheduler: the thread side of a DeviceExecutor, running continuous micro-batching.

Each iteration of ``serve_once``:
  1. take commands from the inbox (new requests, cancellations), expire queued ones;
  2. admit waiting requests into free KV slots (FIFO; a request with n choices takes n),
     reusing the KV a finished row left behind when it shares a prefix with the prompt
     (prefix_cache.py), so only the rest of the prompt is prefilled;
  3. run one packed step: a decode token for every running row plus prompt chunks of
     newly admitted requests, within a budget of prefill_chunk_tokens;
  4. mask the logits of rows with a structured-output grammar, pick each row's next token
     with its own sampler, run the calculator tool, check stop conditions (a grammar that
     is complete ends its row), free finished rows (their slots keep their KV for later prompts);
  5. publish the step's token events to the event loop in one call.

Only this thread touches the model and the cache. A failing step fails the requests in
it and the thread keeps serving.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nanochat_gateway.engine.kv_cache import SlotKVCache
from nanochat_gateway.engine.options import ExecutorOptions, StepCounters, StepHooks, StepInfo, check_kv_fits
from nanochat_gateway.engine.prefix_cache import PrefixCache
from nanochat_gateway.engine.request import (
    ChoiceDelta,
    EngineError,
    FinishReason,
    PromptLogprobs,
    TokenLogprob,
)
from nanochat_gateway.engine.rows import Job, Row, RowTools
from nanochat_gateway.engine.sampling import prompt_logprob_entries, select_tokens
from nanochat_gateway.engine.stream import Admitted, RequestStream, StreamItem
from nanochat_gateway.engine.token_mask import TokenMasker
from nanochat_gateway.model.device import kv_cache_dtype
from nanochat_gateway.model.loader import LoadedModel
from nanochat_gateway.model.step import StepBatch

log = logging.getLogger(__name__)

Outbox = dict[RequestStream, list[StreamItem]]


@dataclass(frozen=True, slots=True)
class Submit:
    stream: RequestStream


@dataclass(frozen=True, slots=True)
class Cancel:
    stream: RequestStream
    choice: int | None  # None cancels every choice


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Command = Submit | Cancel | Stop


class BatchScheduler:
    """Owns one model replica and its KV slots; runs on its executor's thread only."""

    def __init__(self, name: str, device: torch.device, loaded: LoadedModel, options: ExecutorOptions,
                 max_seq_len: int, *, hooks: StepHooks, counters: StepCounters,
                 publish: Callable[[Outbox], None]):
        self.name, self.device, self.loaded, self.options = name, device, loaded, options
        self.max_seq_len = max_seq_len
        self._hooks, self._counters, self._publish = hooks, counters, publish
        config = loaded.config
        n_slots = options.max_batch_size
        kv_dtype = kv_cache_dtype(device, loaded.dtype)
        check_kv_fits(device, options, max_seq_len, config.kv_bytes_per_token(kv_dtype))
        self.cache = SlotKVCache(config, n_slots, max_seq_len, dtype=kv_dtype, device=device,
                                 smear=loaded.spec.smear)
        self._tools = RowTools(loaded.tokenizer, calculator=options.calculator)
        self._masker = TokenMasker(config.vocab_size, threads=torch.get_num_threads())
        self.prefix = PrefixCache(n_slots, enabled=options.prefix_cache, min_tokens=options.prefix_cache_min_tokens)
        self._queue: deque[Job] = deque()
        self._slot_rows: list[Row | None] = [None] * n_slots
        self._outbox: Outbox = {}
        log.info(
            "executor %s: %s on %s, KV cache %.1f MiB (%d slots x %d tokens x %d B/token), %d threads",
            name, loaded.architecture, device, self.cache.nbytes / 2**20, n_slots, max_seq_len,
            config.kv_bytes_per_token(kv_dtype), torch.get_num_threads(),
        )

    @property
    def slots_used(self) -> int:
        return sum(row is not None for row in self._slot_rows)

    def warm_up(self) -> None:
        """One prefill and one decode, so the first real request does not pay kernel set-up."""
        model = self.loaded.model
        model.forward_step(StepBatch.build([], [(0, 0, [0] * 8)], [0], self.device), self.cache)
        model.forward_step(StepBatch.build([(0, 8, 0)], [], [0], self.device), self.cache)

    # ------------------------------------------------------------ main loop
    def serve_once(self, inbox: queue.SimpleQueue[Command]) -> bool:
        """One iteration: commands, admission, a step, delivery. False once told to stop."""
        idle = not self._queue and self.slots_used == 0
        if not self._take_commands(inbox, block=idle):
            self._shutdown()
            return False
        self._expire_queue()
        self._admit()
        self._flush()  # admissions reach the loop now, not with the step's tokens: queue time ends here
        if self.slots_used:
            self._step()
        self._flush()
        return True

    def _take_commands(self, inbox: queue.SimpleQueue[Command], block: bool) -> bool:
        """Apply inbox commands; returns False on stop."""
        try:
            command = inbox.get(timeout=self._next_deadline_wait()) if block else inbox.get_nowait()
        except queue.Empty:
            return True
        commands = [command]
        if block and isinstance(command, Submit) and self.options.admit_window_ms > 0:
            # Gather arrivals of the next few ms so their prompts prefill in one step.
            until = time.monotonic() + self.options.admit_window_ms / 1000
            while (left := until - time.monotonic()) > 0:
                try:
                    commands.append(inbox.get(timeout=left))
                except queue.Empty:
                    break
        while True:
            try:
                commands.append(inbox.get_nowait())
            except queue.Empty:
                break
        for command in commands:
            if isinstance(command, Stop):
                return False
            if isinstance(command, Submit):
                self._enqueue(command.stream)
            else:
                self._cancel(command.stream, command.choice)
        return True

    def _next_deadline_wait(self) -> float | None:
        if not self._queue:
            return None
        return max(0.0, min(job.deadline for job in self._queue) - time.monotonic())

    def _enqueue(self, stream: RequestStream) -> None:
        request = stream.request
        # A prompt needs room for one generated token, unless none was asked for (scoring).
        if len(request.prompt_ids) + min(request.max_tokens, 1) > self.max_seq_len:
            self._emit(stream, EngineError("invalid", f"prompt of {len(request.prompt_ids)} tokens does not fit "
                                           f"the context of {self.max_seq_len}"))
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
        self._release_finished()

    def _admit(self) -> None:
        while self._queue:
            job = self._queue[0]
            free = [slot for slot, row in enumerate(self._slot_rows) if row is None]
            if job.request.n > len(free):
                return
            self._queue.popleft()
            reused = self._seat(job, free)
            self._emit(job.stream, Admitted(cached_tokens=reused))

    def _seat(self, job: Job, free: list[int]) -> int:
        """Put a job's rows into free slots, the first one reusing kept KV of a prefix of its
        prompt when there is some; returns how many prompt tokens are reused."""
        request, prefix = job.request, self.prefix
        prompt = request.prompt_ids
        # Scoring a prompt needs logits at every one of its positions: it is prefilled whole.
        lookup = request.use_prefix_cache and request.prompt_logprobs is None and request.max_tokens > 0
        seat = prefix.seat(prompt, request.prefix_scope, free, lookup=lookup)
        if prefix.enabled and lookup:
            self._counters.prefix_cache_queries += len(prompt)
            self._counters.prefix_cache_hits += seat.reused
        slots = [seat.slot]
        for _ in range(request.n - 1):  # forks get a copy of the prompt's KV once it is prefilled
            slots.append(prefix.evictable([s for s in free if s not in slots]))
        if seat.needs_copy:
            assert seat.source is not None
            self.cache.copy(seat.source, seat.slot, seat.reused)
        if seat.reused:
            self.loaded.model.resume_slot(self.cache, seat.slot, prompt[seat.reused - 1])
        job.rows = [Row.create(job, i, slot, self.device, seat.reused) for i, slot in enumerate(slots)]
        job.rows[0].forks = job.rows[1:]
        for row in job.rows:
            prefix.forget(row.slot)
            self._slot_rows[row.slot] = row
        return seat.reused

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
        # row numbers in the packed step: decode rows first, then prefill chunks. A prompt whose
        # request wants no tokens (max_tokens 0, to score it) needs no logits to sample from.
        completing = [len(decode) + i for i, (row, take) in enumerate(chunks)
                      if take == len(row.feed) and row.job.request.max_tokens > 0]
        completes = [chunks[i - len(decode)][0] for i in completing]
        scored = [i for i, (row, _) in enumerate(chunks) if row.prompt_logprobs is not None]
        order = decode + [row for row, _ in chunks]
        batch = StepBatch.build(
            decode=[(r.slot, r.pos, r.feed[0]) for r in decode],
            prefill=[(r.slot, r.pos, r.feed[:take]) for r, take in chunks],
            logits_for=[*range(len(decode)), *completing],
            device=self.device,
            every_position=scored,
        )
        start = time.perf_counter()
        try:
            if self._hooks.fault_injector is not None:
                self._hooks.fault_injector(batch)
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
        sampled = len(decode) + len(completes)
        try:
            self._score_prompts([chunks[i] for i in scored], logits[sampled:])
        except Exception:
            log.exception("executor %s: prompt scoring failed", self.name)
            self._fail_jobs({chunks[i][0].job for i in scored}, "scoring the prompt failed")
        for row in decode:
            row.kv_tokens += row.feed
            row.feed = []
        for row, take in chunks:
            row.kv_tokens += row.feed[:take]
            row.feed = row.feed[take:]
            if not row.feed and row.job.request.max_tokens == 0 and not row.finished:
                self._finish_row(row, "length")  # the prompt alone was asked for
        try:
            self._sample(decode + completes, logits[:sampled])
        except Exception:
            log.exception("executor %s: sampling failed", self.name)
            self._fail_jobs({r.job for r in decode + completes}, "sampling failed")
        seconds = time.perf_counter() - start
        # a prompt whose last token alone was left to feed runs as a decode row; it is still prefill
        prompt_tails = sum(r.generated == 0 for r in decode)
        self._record(len(order), sum(t for _, t in chunks) + prompt_tails, len(decode) - prompt_tails, seconds)
        self._release_finished()

    def _score_prompts(self, chunks: list[tuple[Row, int]], logits: torch.Tensor) -> None:
        """Add each scored chunk's prompt-token log probabilities to its row (before the rows
        advance); a row whose prompt is now complete sends them all, ahead of its first token."""
        offset = 0
        for row, take in chunks:
            request, scores = row.job.request, row.prompt_logprobs
            assert scores is not None and request.prompt_logprobs is not None
            # Position p predicts token p + 1; the prompt's last position predicts the first
            # generated token, which is not the prompt's to score.
            targets = request.prompt_ids[row.pos + 1 : row.pos + take + 1]
            scores += prompt_logprob_entries(logits[offset : offset + len(targets)], targets,
                                             request.prompt_logprobs)
            offset += take
            if take == len(row.feed):
                self._emit(row.job.stream, PromptLogprobs(scores))
                row.prompt_logprobs = None

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> None:
        # A finished prompt prefill of an n > 1 request forks its KV into the sibling slots,
        # and every choice samples from the same logits with its own generator.
        sample_rows, logit_rows = [], []
        for i, row in enumerate(rows):
            group = [row]
            if row.forks:
                for fork in row.forks:
                    self.cache.copy(row.slot, fork.slot, row.pos)
                    fork.kv_tokens = list(row.kv_tokens)
                group += row.forks
                row.forks = []
            sample_rows += group
            logit_rows += [i] * len(group)
        selected = logits if len(logit_rows) == len(rows) else logits[logit_rows]
        grammars = [r.grammar for r in sample_rows]
        if any(g is not None for g in grammars):
            # Forbidden tokens go to -inf before any sampling step sees the logits.
            start = time.perf_counter()
            self._masker.apply(selected, grammars)
            self._counters.grammar_mask_seconds += time.perf_counter() - start
        tokens, logprobs = select_tokens(selected, [r.sampler for r in sample_rows])
        for row, token, logprob in zip(sample_rows, tokens, logprobs, strict=True):
            self._accept(row, token, logprob)

    def _accept(self, row: Row, token: int, logprob: TokenLogprob | None) -> None:
        if row.finished:
            return  # failed earlier in this step (prompt scoring): nothing more is sent
        request = row.job.request
        emitted = [token]
        row.generated += 1
        if token in request.stop_token_ids:
            self._finish_row(row, "stop", emitted, logprob)
            return
        if row.grammar is not None:
            if not row.grammar.accept(token):  # the mask makes this unreachable
                log.error("executor %s: a sampled token broke the output grammar", self.name)
                self._fail_jobs({row.job}, "the structured output could not be continued")
                return
            if row.grammar.complete:  # complete output wins over max_tokens reached by the same token
                self._finish_row(row, "stop", emitted, logprob)
                return
        forced = self._tools.after_token(row, token)
        room = request.max_tokens - row.generated
        if forced:
            forced = forced[:room]
            emitted += forced
            row.generated += len(forced)
        feed = [token, *forced]
        if row.generated >= request.max_tokens or row.pos + len(feed) > self.max_seq_len:
            self._finish_row(row, "length", emitted, logprob)
            return
        row.feed = feed
        self._emit(row.job.stream, ChoiceDelta(row.choice, emitted, [logprob] if logprob else None))

    def _finish_row(self, row: Row, reason: FinishReason, tokens: list[int] | None = None,
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
                # what a failed step left in the slot is not trusted for reuse
                row.feed, row.finished, row.forks, row.kv_tokens = [], True, [], []
        self._release_finished()

    def _release_finished(self) -> None:
        """Free finished rows' slots. Rows never move: each freed slot keeps its KV and the
        tokens behind it for a later prompt with the same prefix, and running rows' KV
        stays where it is (decode attention groups the rows by slot ranges around holes)."""
        for slot, row in enumerate(self._slot_rows):
            if row is not None and row.finished:
                self._slot_rows[slot] = None
                self.prefix.keep(slot, row.kv_tokens, row.job.request.prefix_scope)

    def _record(self, batch_size: int, prefill: int, decode: int, seconds: float) -> None:
        counters = self._counters
        counters.steps += 1
        counters.tokens_prefilled += prefill
        counters.tokens_decoded += decode
        if self._hooks.listeners:
            info = StepInfo(self.name, batch_size, prefill, decode, seconds, self.slots_used)
            for listener in self._hooks.listeners:
                listener(info)

    # ------------------------------------------------------------ delivery
    def _emit(self, stream: RequestStream, item: StreamItem) -> None:
        self._outbox.setdefault(stream, []).append(item)

    def _flush(self) -> None:
        if self._outbox:
            outbox, self._outbox = self._outbox, {}
            self._publish(outbox)

    def _shutdown(self) -> None:
        for job in self._queue:
            self._emit(job.stream, EngineError("shutdown", "the server is shutting down"))
        self._queue.clear()
        jobs = {r.job for r in self._slot_rows if r is not None}
        for job in jobs:
            self._emit(job.stream, EngineError("shutdown", "the server is shutting down"))
        self._slot_rows = [None] * len(self._slot_rows)
        self._flush()
