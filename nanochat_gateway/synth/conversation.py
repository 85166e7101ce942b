"""The conversation format nanochat's CustomJSON task reads, and its rules.

One JSON array per line, for example
``[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]``:
at least two messages, alternating user then assistant, starting with user and ending with
assistant, each an object with exactly the keys ``role`` and ``content``, content a non-empty string.
nanochat's loader asserts the alternation and string content; the stricter rules here (no empty
content, no extra keys, a final assistant turn to train on) keep every line useful for SFT.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

Message = dict[str, str]


def conversation_problems(value: Any) -> list[str]:
    """Every way ``value`` breaks the CustomJSON rules; empty when it is a valid conversation."""
    if not isinstance(value, list):
        return [f"expected a JSON array of messages, got {_json_type(value)}"]
    if len(value) < 2:
        return [f"a conversation needs at least 2 messages, got {len(value)}"]
    problems: list[str] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            problems.append(f"message {i} is {_json_type(message)}, not an object")
            continue
        expected = "user" if i % 2 == 0 else "assistant"
        role = message.get("role")
        if role != expected:
            problems.append(f"message {i} has role {role!r}, expected {expected!r}")
        content = message.get("content")
        if not isinstance(content, str):
            problems.append(f"message {i} content is {_json_type(content)}, not a string")
        elif not content.strip():
            problems.append(f"message {i} content is empty")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            problems.append(f"message {i} has keys other than role and content: {', '.join(extra)}")
    if len(value) % 2:
        problems.append("the last message must be from the assistant")
    return problems


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def to_line(messages: list[Message]) -> str:
    """The JSONL line (without newline) for a valid conversation; non-ASCII text is kept readable."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def line_digest(line: str) -> str:
    """A short fingerprint of a line, linking it to its record in the sidecar file."""
    return hashlib.sha256(line.encode("utf-8")).hexdigest()[:16]


def first_user_message(messages: list[Message]) -> str:
    return messages[0]["content"]
