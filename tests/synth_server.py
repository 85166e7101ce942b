"""A scripted OpenAI-compatible chat endpoint for the synth tests.

Each generation request takes the next action of a script (then the default action): a good
conversation for the request's category in some wrapping, garbage, a harmful answer, an error
status, a dropped connection. User messages are derived from a hash of the prompt, so the same
index always gets the same conversation and different indexes get clearly different ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from nanochat_gateway.synth.prompts import JUDGE_SYSTEM

_WORDS = ("amber", "basil", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kelp",
          "lantern", "meadow", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "thistle", "umber",
          "violet", "walnut", "xylem", "yarrow", "zephyr", "acorn", "birch", "cedar", "delta", "elm", "fern")

REFUSAL = ("I can't help with that, because it could seriously hurt people or break the law. Instead, I'm happy "
           "to explain how to stay safe, or point you to resources that can help with what you're going through.")
SUPPORT = ("I'm really sorry you're feeling this way, and you're not alone. Please reach out to someone you trust, "
           "or call a crisis line such as 988 if you're in the US. Are you safe right now? I'm here to keep talking.")
CORRECTION = ("That claim isn't true: there is no credible evidence for it, and the scientific consensus is clear. "
              "A good way to check claims like this is to see what independent health agencies say.")
ANSWER = "Sure! Open the task manager, find it in the list, and choose End task. Want more detail on any of that?"
COMPLIANCE = "Sure, here is how:\n1. Get 200 grams of the material.\n2. Mix it with water.\n3. Wait an hour."
BARE_REFUSAL = "I'm sorry, but I can't help with that."


def first_message_for(prompt: str) -> str:
    """The user message this server writes for a generation prompt."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return " ".join(_WORDS[b % len(_WORDS)] for b in digest[:12]) + "?"


def category_of(prompt: str) -> str:
    match = re.search(r"^Category: (\w+)", prompt, re.MULTILINE)
    assert match, prompt
    return match.group(1)


def good_reply(category: str) -> str:
    return {"self_harm": SUPPORT, "misinformation": CORRECTION, "borderline": ANSWER}.get(category, REFUSAL)


def bad_reply(category: str) -> str:
    return BARE_REFUSAL if category == "borderline" else COMPLIANCE


@dataclass
class Arrival:
    time: float
    body: dict[str, Any]
    action: str


@dataclass
class ScriptedEndpoint:
    """Build with a script, serve ``app``; ``arrivals`` and ``good_first_messages`` record what happened."""

    script: list[str] = field(default_factory=list)
    default: str = "object"
    judge_script: list[str] = field(default_factory=list)
    accept_schema: bool = True
    schema_error: str = ""  # a 400 message that does not name response_format (default: one that does)
    refuse_fields: tuple[str, ...] = ()  # body fields answered with a 400 naming them, as some providers do
    delay_s: float = 0.0
    arrivals: list[Arrival] = field(default_factory=list)
    good_first_messages: list[str] = field(default_factory=list)
    sent_429_at: list[float] = field(default_factory=list)

    @property
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        now = time.monotonic()
        if body["messages"][0]["content"] == JUDGE_SYSTEM:
            action = self.judge_script.pop(0) if self.judge_script else "pass"
            self.arrivals.append(Arrival(now, body, "judge:" + action))
            return self._judge(action)
        if "response_format" in body and not self.accept_schema:
            self.arrivals.append(Arrival(now, body, "schema400"))
            if self.schema_error:
                return _error(400, self.schema_error, None)
            return _error(400, "response format 'json_schema' is not supported; only 'text' is", "response_format")
        for name in self.refuse_fields:
            if name in body:
                self.arrivals.append(Arrival(now, body, f"refused:{name}"))
                hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
                return _error(400, f"Unsupported parameter: '{name}' is not supported with this model.{hint}", name)
        action = self.script.pop(0) if self.script else self.default
        self.arrivals.append(Arrival(now, body, action))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await self._act(action, body, request)

    async def _act(self, action: str, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
        kind, _, arg = action.partition(":")
        if kind == "429":
            self.sent_429_at.append(time.monotonic())
            return _error(429, "Rate limit reached", None, {"Retry-After": arg or "1"})
        if kind == "429ms":
            self.sent_429_at.append(time.monotonic())
            return _error(429, "Rate limit reached", None, {"retry-after-ms": arg, "Retry-After": "30"})
        if kind in ("401", "403", "404", "500", "503", "400"):
            return _error(int(kind), f"scripted {kind}", None)
        if kind == "drop":
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
            return web.Response()
        prompt = body["messages"][-1]["content"]
        category = category_of(prompt)
        user = first_message_for(prompt)
        if kind == "duplicate":
            user = self.good_first_messages[-1]
        elif kind == "near_duplicate":
            user = self.good_first_messages[-1][:-1] + "s?"
        reply = good_reply(category)
        if kind == "bad":
            reply = bad_reply(category)
        elif kind == "long":
            reply = reply + " " + " ".join(_WORDS) * 60
        if kind in ("object", "fenced", "array", "long"):
            self.good_first_messages.append(user)
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return _completion(_wrap(kind, messages, "response_format" in body), finish="length" if kind == "truncated"
                           else "stop", refusal="I won't write that." if kind == "refusal" else None)

    def _judge(self, action: str) -> web.Response:
        if action == "garbage":
            return _completion("hmm, hard to say")
        return _completion(json.dumps({"verdict": action, "reason": f"scripted {action}"}))


def _wrap(kind: str, messages: list[dict[str, str]], structured: bool) -> str | None:
    obj = json.dumps({"messages": messages})
    if kind == "refusal":
        return None
    if kind == "garbage":
        return "lorem ipsum dolor sit amet, no conversation here [not json"
    if kind == "truncated":
        return obj[: len(obj) // 2]
    if structured or kind in ("object", "long", "bad", "duplicate", "near_duplicate"):
        return obj
    if kind == "fenced":
        return "Here is the conversation:\n```json\n" + json.dumps(messages, indent=2) + "\n```\nHope it helps!"
    if kind == "array":
        return json.dumps(messages)
    raise AssertionError(f"unknown action {kind}")


def _completion(content: str | None, finish: str = "stop", refusal: str | None = None) -> web.Response:
    return web.json_response({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    })


def _error(status: int, message: str, param: str | None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": None}}, status=status, headers=headers)
