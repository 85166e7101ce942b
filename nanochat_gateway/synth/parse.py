"""Find the conversation in a model's reply, however it was wrapped.

Replies arrive as bare JSON, as JSON inside markdown code fences, with prose around them, as a bare
array of messages or as an object holding one (``{"messages": [...]}``). The first JSON value that
holds messages wins; it is then normalised (role spellings, whitespace, extra keys, a leading system
message dropped) and checked against the CustomJSON rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nanochat_gateway.synth.conversation import Message, conversation_problems

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_ROLE_ALIASES = {"human": "user", "ai": "assistant", "bot": "assistant", "model": "assistant"}
_CONTAINER_KEYS = ("messages", "conversation", "conversations", "dialogue", "turns")
_MAX_START_POSITIONS = 200  # bounds the work on long replies full of brackets


@dataclass(frozen=True)
class Extraction:
    """A valid conversation, or why none was found (``reason`` is "unparseable" or "malformed")."""

    messages: list[Message] | None
    reason: str | None = None
    detail: str = ""


def extract_conversation(text: str) -> Extraction:
    """The conversation in ``text``, or the reason there is none."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    found: list[Any] | None = None
    for candidate in candidates:
        found = _first_message_list(candidate)
        if found is not None:
            break
    if found is None:
        snippet = " ".join(text.split())[:80]
        return Extraction(None, "unparseable", f"no JSON conversation in the reply: {snippet!r}")
    messages = _normalised(found)
    problems = conversation_problems(messages)
    if problems:
        return Extraction(None, "malformed", "; ".join(problems[:3]))
    return Extraction(messages)


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (fences and prose tolerated), for small graded answers."""
    for candidate in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        for value in _json_values(candidate):
            if isinstance(value, dict):
                return value
    return None


def _first_message_list(text: str) -> list[Any] | None:
    for value in _json_values(text):
        messages = _message_list(value)
        if messages is not None:
            return messages
    return None


def _json_values(text: str) -> Iterator[Any]:
    """Yield each JSON object or array that starts at a bracket in ``text``, left to right."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"[\[{]", text)][:_MAX_START_POSITIONS]
    end = -1
    for start in starts:
        if start < end:
            continue  # inside a value already yielded
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        yield value


def _message_list(value: Any) -> list[Any] | None:
    if isinstance(value, dict):
        for key in _CONTAINER_KEYS:
            inner = value.get(key)
            if isinstance(inner, list):
                # An empty list is a conversation found empty (malformed), not a missing one.
                return inner if not inner else _message_list(inner)
        return None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return None


def _normalised(messages: list[Any]) -> list[Any]:
    out: list[Any] = []
    for message in messages:
        role = message.get("role")
        if isinstance(role, str):
            role = role.strip().lower()
            role = _ROLE_ALIASES.get(role, role)
        content = message.get("content")
        if isinstance(content, str):
            content = content.strip()
        out.append({"role": role, "content": content})
    if out and out[0]["role"] == "system":
        out = out[1:]  # nanochat would fold it into the first user turn; the data should not carry one
    return out
