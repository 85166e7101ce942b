"""stop_sequences: the API's `stop`, matched on generated text across token boundaries.

Text that could still be the start of a stop string is held back, and only that; on a
match the output is cut just before the stop string, the choice finishes with "stop",
and the gateway cancels the row so its KV slot is freed at the next step.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nanochat_gateway.plugins import GenerationContext, Plugin, TextEvent


class StopSequenceMatcher:
    """Incremental matcher for one choice: feed text deltas, get back what is safe to emit."""

    __slots__ = ("stops", "longest", "pending", "matched")

    def __init__(self, stops: list[str]):
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.pending = ""
        self.matched = False

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        """Return (text to emit now, whether a stop string was found)."""
        if self.matched:
            return "", True
        buffer = self.pending + text
        cut = min((i for s in self.stops if (i := buffer.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.pending, self.matched = "", True
            return buffer[:cut], True
        if final:
            self.pending = ""
            return buffer, False
        keep = self._partial_suffix(buffer)
        self.pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that some stop string starts with."""
        for k in range(min(len(buffer), self.longest - 1), 0, -1):
            tail = buffer[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0


class StopSequencesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_stop: list[str] = Field(
        default_factory=list, description="Stop strings applied to every request, besides the request's own."
    )


class StopSequences(Plugin):
    name = "stop_sequences"
    Settings = StopSequencesSettings
    settings: StopSequencesSettings

    async def on_request(self, ctx: GenerationContext) -> None:
        stops = [*ctx.stop, *self.settings.default_stop]
        if any(stops):
            ctx.scratch[self.name] = [StopSequenceMatcher(stops) for _ in range(ctx.choices)]

    def on_text(self, ctx: GenerationContext, event: TextEvent) -> None:
        matchers = ctx.scratch.get(self.name)
        if matchers is None:
            return
        event.text, matched = matchers[event.choice].feed(event.text, final=event.final)
        if matched:
            event.stop, event.finish_reason = True, "stop"
