"""One `synth safety` run: plan, ask, parse, filter, write, until --count conversations are in the file.

A dispatcher keeps at most ``concurrency`` attempts in flight, and no more than are still needed, and
settles each finished attempt in the event loop's one thread, so duplicate detection and file writes
need no locks. Attempts ask for indexes in increasing order, skipping those an earlier run settled.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import aiohttp

from nanochat_gateway.synth.client import ChatClient, FatalEndpointError, RequestFailed
from nanochat_gateway.synth.conversation import Message, first_user_message
from nanochat_gateway.synth.dedupe import DEFAULT_THRESHOLD, FirstMessageIndex
from nanochat_gateway.synth.filter import behaviour_problems
from nanochat_gateway.synth.length import TokenCounter, choose_counter, load_cl100k
from nanochat_gateway.synth.parse import extract_conversation, extract_json_object
from nanochat_gateway.synth.plan import DEFAULT_BORDERLINE_FRACTION, ConversationPlan, plan_conversation
from nanochat_gateway.synth.progress import ProgressDisplay, RunStats, RunSummary, progress_line
from nanochat_gateway.synth.prompts import generation_request, judge_request
from nanochat_gateway.synth.store import ConversationStore


@dataclass(frozen=True)
class SynthOptions:
    """Everything a run needs; the CLI flags map one to one."""

    base_url: str
    model: str
    out: Path
    count: int = 600
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # named in messages only; the key itself is ``api_key``
    concurrency: int = 8
    seed: int = 0
    temperature: float | None = 1.0
    max_tokens: int = 2048
    timeout_s: float = 120.0
    max_retries: int = 8
    resume: bool = True
    max_attempts: int | None = None  # default: three per conversation still missing
    borderline_fraction: float = DEFAULT_BORDERLINE_FRACTION
    dedupe_threshold: float = DEFAULT_THRESHOLD
    tokenizer: Path | None = None
    max_context: int | None = None
    judge_model: str | None = None
    judge_base_url: str | None = None


@dataclass(frozen=True)
class Outcome:
    plan: ConversationPlan
    status: str  # "accepted", "rejected" or "failed"
    reasons: list[str]
    messages: list[Message] | None = None
    detail: str = ""


class SynthRun:
    """The attempts of one run against one store."""

    def __init__(self, options: SynthOptions, store: ConversationStore, counter: TokenCounter, stats: RunStats,
                 generator: ChatClient, judge: ChatClient | None) -> None:
        self.options, self.store, self.counter, self.stats = options, store, counter, stats
        self.generator, self.judge = generator, judge
        self.seen = FirstMessageIndex(options.dedupe_threshold)
        for text in store.first_messages:
            self.seen.add(text)
        missing = max(0, stats.target - stats.written)
        self.max_attempts = options.max_attempts if options.max_attempts is not None else 3 * missing

    def _indexes(self) -> Iterator[int]:
        index = attempts = 0
        while attempts < self.max_attempts:
            if index not in self.store.done:
                attempts += 1
                yield index
            index += 1

    async def run(self) -> None:
        """Attempt indexes until the file holds ``count`` conversations or attempts run out."""
        indexes = self._indexes()
        pending: set[asyncio.Task[Outcome]] = set()
        try:
            while True:
                while (len(pending) < self.options.concurrency
                       and self.stats.written + len(pending) < self.stats.target
                       and (index := next(indexes, None)) is not None):
                    pending.add(asyncio.create_task(self.attempt(index)))
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self.settle(task.result())
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def attempt(self, index: int) -> Outcome:
        """Ask for, parse and grade conversation ``index``; FatalEndpointError propagates."""
        options = self.options
        plan = plan_conversation(options.seed, index, options.borderline_fraction)
        request = generation_request(plan, options.model, max_tokens=options.max_tokens,
                                     temperature=options.temperature)
        try:
            reply = await self.generator.complete(request)
        except RequestFailed as exc:
            return Outcome(plan, "failed", [exc.reason], detail=exc.message)
        if reply.refusal:
            return Outcome(plan, "rejected", ["generator_refused"], detail=reply.refusal)
        found = extract_conversation(reply.content)
        if found.messages is None:
            reason = "truncated" if reply.finish_reason == "length" else found.reason or "unparseable"
            return Outcome(plan, "rejected", [reason], detail=found.detail)
        messages = found.messages
        reasons = behaviour_problems(plan, messages)
        details = [f"assistant: {_snippet(messages[-1]['content'])}"] if reasons else []
        tokens = self.counter.count(messages)
        if tokens > self.counter.limit:
            reasons.append("too_long")
            details.append(f"{tokens} tokens, limit {self.counter.limit}")
        repeat = self.seen.repeat_of(first_user_message(messages))
        if repeat:
            reasons.append(repeat)
            details.append(f"user: {_snippet(first_user_message(messages))}")
        if reasons or self.judge is None:
            return Outcome(plan, "rejected" if reasons else "accepted", reasons, messages, "; ".join(details))
        return await self._judged(plan, messages)

    async def _judged(self, plan: ConversationPlan, messages: list[Message]) -> Outcome:
        assert self.judge is not None and self.options.judge_model is not None
        try:
            reply = await self.judge.complete(judge_request(plan, messages, self.options.judge_model))
        except RequestFailed as exc:
            return Outcome(plan, "failed", [exc.reason], detail=f"judge: {exc.message}")
        verdict = extract_json_object(reply.content) or {}
        reason = str(verdict.get("reason", ""))[:300]
        if verdict.get("verdict") == "pass":
            return Outcome(plan, "accepted", [], messages, reason)
        if verdict.get("verdict") == "fail":
            return Outcome(plan, "rejected", ["judge_rejected"], messages, reason)
        return Outcome(plan, "rejected", ["judge_unparseable"], messages, reply.content[:200])

    def settle(self, outcome: Outcome) -> None:
        """Write or record a finished attempt (in the loop's thread, one at a time)."""
        stats, plan = self.stats, outcome.plan
        if outcome.status == "accepted" and outcome.messages is not None:
            # Attempts run concurrently: two may carry the same question, and only settling sees both.
            repeat = self.seen.repeat_of(first_user_message(outcome.messages))
            if repeat:
                outcome = replace(outcome, status="rejected", reasons=[repeat],
                                  detail=f"user: {_snippet(first_user_message(outcome.messages))}")
        if outcome.status == "accepted" and outcome.messages is not None:
            self.store.append(plan.index, plan.category, outcome.messages)
            self.seen.add(first_user_message(outcome.messages))
            stats.accepted += 1
            stats.accepted_by_category[plan.category] += 1
            stats.written = self.store.written
            return
        self.store.record(plan.index, plan.category, outcome.status, outcome.reasons, outcome.detail)
        stats.reasons.update(outcome.reasons)
        for reason in outcome.reasons:
            stats.examples.setdefault(reason, outcome.detail)
        if outcome.status == "rejected":
            stats.rejected += 1
        else:
            stats.failed += 1


def _snippet(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return json.dumps(flat if len(flat) <= limit else flat[:limit] + "...", ensure_ascii=False)


def _fatal_message(exc: FatalEndpointError, options: SynthOptions) -> str:
    if exc.status in (401, 403):
        key = (f"${options.api_key_env} is not set, so no key was sent" if not options.api_key
               else f"check the key in ${options.api_key_env}")
        return (f"{exc.url} answered {exc.status} ({exc.message}): {key}; --api-key-env names another variable. "
                "Nothing more is sent after an authentication error.")
    return (f"{exc.url} answered {exc.status} ({exc.message}): check --base-url (the API root, usually ending in /v1) "
            "and --model")


async def run_safety(options: SynthOptions, *, progress: TextIO = sys.stderr, tty: bool | None = None,
                     cl100k: Callable[[], Callable[[str], int]] = load_cl100k) -> RunSummary:
    """Run `synth safety` to completion (or to a fatal answer, or to Ctrl-C) and summarise it.

    Raises TokenizerUnavailable or StoreError before any request when the options cannot work.
    """
    start = time.monotonic()
    counter, counter_note = choose_counter(options.tokenizer, options.max_context, cl100k)
    header = {"seed": options.seed, "borderline_fraction": options.borderline_fraction, "model": options.model,
              "started": datetime.now(UTC).isoformat(timespec="seconds")}
    store = ConversationStore(options.out, resume=options.resume, header=header)
    stats = RunStats(target=options.count, written=store.written)
    notes = list(store.repairs) + ([counter_note] if counter_note else [])
    display = ProgressDisplay(progress, tty=tty)
    fatal: str | None = None
    interrupted = False
    async with aiohttp.ClientSession() as session:
        def client(base_url: str) -> ChatClient:
            return ChatClient(session, base_url, options.api_key, timeout_s=options.timeout_s,
                              max_retries=options.max_retries, stats=stats.client)

        generator = client(options.base_url)
        judge_url = options.judge_base_url or options.base_url
        judge = None if not options.judge_model else generator if judge_url == options.base_url else client(judge_url)
        run = SynthRun(options, store, counter, stats, generator, judge)
        ticker = asyncio.create_task(display.run(lambda: progress_line(stats, generator.paused_for())))
        try:
            await run.run()
        except FatalEndpointError as exc:
            fatal = _fatal_message(exc, options)
        except asyncio.CancelledError:  # Ctrl-C: everything accepted so far is on disk already
            interrupted = True
        finally:
            ticker.cancel()
            store.close()
    display.finish(progress_line(stats))
    notes += generator.notes + (judge.notes if judge and judge is not generator else [])
    return RunSummary(str(options.out), stats, time.monotonic() - start,
                      f"{counter.name}, limit {counter.limit} tokens", notes, fatal, interrupted)
