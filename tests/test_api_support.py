"""Helpers shared by the test_api_* files (this module holds no tests).

Raw HTTP goes through aiohttp so tests see exactly what the server sends: status, headers,
SSE framing, comments and the final ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

USER_HI = [{"role": "user", "content": "hi"}]


@dataclass
class SSE:
    """A parsed event stream: JSON payloads in order, comment lines, and whether [DONE] ended it."""

    events: list[dict] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    done: bool = False
    after_done: list[str] = field(default_factory=list)  # anything sent after [DONE] (should be nothing)

    @property
    def errors(self) -> list[dict]:
        return [e["error"] for e in self.events if "error" in e]

    @property
    def chunks(self) -> list[dict]:
        return [e for e in self.events if "error" not in e]


def parse_sse(text: str) -> SSE:
    """Parse an event stream the way the OpenAI SDK does (data lines joined, comments ignored)."""
    sse = SSE()
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = []
        for line in block.split("\n"):
            if line.startswith(":"):
                sse.comments.append(line)
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if not data:
            continue
        payload = "\n".join(data)
        if sse.done:
            sse.after_done.append(payload)
        elif payload == "[DONE]":
            sse.done = True
        else:
            sse.events.append(json.loads(payload))
    return sse


async def post_json(session: aiohttp.ClientSession, url: str, body: dict | str | bytes,
                    **kwargs) -> tuple[int, dict, Any]:
    """POST a body (a dict is sent as JSON) and return (status, parsed JSON, headers)."""
    data = json.dumps(body) if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    async with session.post(url, data=data, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def stream_sse(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[aiohttp.ClientResponse, SSE]:
    """POST a streaming request and read the whole event stream."""
    async with session.post(url, json=body) as resp:
        text = await resp.text()
        return resp, parse_sse(text)


async def wait_until(predicate: Callable[[], bool], timeout: float = 1.0, interval: float = 0.01) -> float:
    """Poll until predicate() is true; returns the seconds it took, fails after timeout."""
    start = time.monotonic()
    while not predicate():
        elapsed = time.monotonic() - start
        assert elapsed < timeout, f"condition not met within {timeout}s"
        await asyncio.sleep(interval)
    return time.monotonic() - start


def engine_idle(gateway) -> Callable[[], bool]:
    """True once every executor has nothing running, nothing waiting and no KV slot in use."""
    executors = gateway.state.router.executors
    return lambda: all(e.running == 0 and e.waiting == 0 and e.slots_used == 0 for e in executors)


def byte_token(tokenizer, raw: bytes) -> int:
    """The id of the token whose bytes are exactly ``raw`` (byte-level BPE has every single byte)."""
    for token_id in range(tokenizer.vocab_size):
        if token_id not in tokenizer.special_ids and tokenizer.token_bytes(token_id) == raw:
            return token_id
    raise LookupError(raw)


def script_tokens(monkeypatch, script: list[int]) -> Callable[[], None]:
    """Make the engine pick ``script[i]`` at its i-th sampling step (the last one repeats).

    A +1000 logit on the scripted token beats any sampler setting, so the request runs through
    the real executor, detokenizer, plugins and SSE writer with a known token sequence.
    Returns a function that restarts the script for the next request.
    """
    import nanochat_gateway.engine.scheduler as scheduler_module

    original = scheduler_module.select_tokens
    position = {"i": 0}

    def scripted(logits, samplers):
        logits = logits.clone()
        logits[:, script[min(position["i"], len(script) - 1)]] += 1000.0
        position["i"] += 1
        return original(logits, samplers)

    monkeypatch.setattr(scheduler_module, "select_tokens", scripted)
    return lambda: position.update(i=0)
