"""What a run has done so far: a live progress line and the summary at the end."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from nanochat_gateway.synth.client import ClientStats
from nanochat_gateway.synth.reasons import FORMAT_REASONS, explain

_BAR_WIDTH = 20


@dataclass
class RunStats:
    """Counters of one run; ``written`` counts every line of the output, earlier runs' included."""

    target: int
    written: int
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # rejection and failure reasons (several per attempt)
    accepted_by_category: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first detail seen for each reason
    client: ClientStats = field(default_factory=ClientStats)

    @property
    def attempts(self) -> int:
        return self.accepted + self.rejected + self.failed

    @property
    def tokens(self) -> int:
        return self.client.prompt_tokens + self.client.completion_tokens


def _top(counter: Counter[str], n: int = 3) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common(n))


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else str(n)


def progress_line(stats: RunStats, paused_for: float = 0.0) -> str:
    """One line: written of target, a bar, rejections by reason, retries, tokens."""
    done = min(stats.written, stats.target)
    filled = _BAR_WIDTH * done // max(stats.target, 1)
    parts = [f"{stats.written}/{stats.target} written [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}]"]
    if stats.rejected or stats.failed:
        parts.append(f"rejected {stats.rejected + stats.failed} ({_top(stats.reasons)})")
    retries = stats.client.retries
    if retries:
        parts.append(f"retries {sum(retries.values())} ({_top(retries)})")
    parts.append(f"tokens {_count(stats.tokens)}")
    if paused_for > 0:
        parts.append(f"paused {paused_for:.0f}s (429)")
    return "  ".join(parts)


class ProgressDisplay:
    """Redraws the progress line in place on a terminal; prints it now and then elsewhere (logs, CI)."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = 0.25 if self.tty else 10.0
        self._last = ""

    def show(self, line: str, *, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        elif line != self._last:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last = line

    def finish(self, line: str) -> None:
        """Show the last state and leave the line in place."""
        self.show(line, final=True)

    async def run(self, render: Callable[[], str]) -> None:
        """Show ``render()`` every interval until cancelled."""
        while True:
            self.show(render())
            await asyncio.sleep(self.interval)


@dataclass
class RunSummary:
    """Everything the final report says."""

    out: str
    stats: RunStats
    elapsed_s: float
    length_counter: str
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return self.stats.written >= self.stats.target

    def lines(self) -> list[str]:
        s = self.stats
        out = [f"== synth safety: {s.written} of {s.target} conversations in {self.out} ==",
               f"  this run: {s.accepted} accepted, {s.rejected} rejected, {s.failed} failed, from {s.attempts} "
               f"attempts in {self.elapsed_s:.1f} s",
               f"  requests: {s.client.requests}; retries: {_top(s.client.retries, 10) or 'none'}"
               + (f"; paused {s.client.paused_s:.1f} s for 429s" if s.client.paused_s else ""),
               f"  tokens used: {s.client.prompt_tokens:,} prompt + {s.client.completion_tokens:,} completion",
               f"  lengths counted with {self.length_counter}"]
        if s.accepted_by_category:
            out.append(f"  accepted by category: {_top(s.accepted_by_category, 20)}")
        if s.reasons:
            out.append("  not written because (an attempt can have several reasons):")
            width = max(len(k) for k in s.reasons)
            for reason, n in s.reasons.most_common():
                out.append(f"    {reason:<{width}}  {n:>5}  {explain(reason)}")
                if s.examples.get(reason):
                    out.append(f"    {'':<{width}}         e.g. {s.examples[reason][:150]}")
        out += [f"  note: {note}" for note in self.notes]
        if self.fatal:
            out.append(f"STOPPED: {self.fatal}")
        if self.interrupted:
            out.append(f"INTERRUPTED: {s.written} of {s.target} conversations written. Rerun the same command "
                       "to continue where this run stopped.")
        elif not self.complete and not self.fatal:
            why = f"; most attempts failed as '{s.reasons.most_common(1)[0][0]}'" if s.reasons else ""
            out.append(f"INCOMPLETE: {s.written} of {s.target} conversations written{why}. Rerun the same "
                       "command to continue, or raise --max-attempts.")
            if s.reasons and not s.accepted and set(s.reasons) <= FORMAT_REASONS:
                out.append("No reply held a usable JSON conversation: this model cannot write this data (a model "
                           "with random weights never can). Use a capable instruction-following model.")
        return out
