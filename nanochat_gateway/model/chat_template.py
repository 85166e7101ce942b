"""Render a chat conversation into the token ids nanochat's models were trained on.

The layout follows nanochat's ``render_for_completion``:
``<|bos|> (<|user_start|> text <|user_end|> <|assistant_start|> text <|assistant_end|>)*
<|user_start|> text <|user_end|> <|assistant_start|>``, with a leading system message folded into the
first user message. Unlike nanochat, nothing is truncated and every malformed conversation raises
ConversationError pointing at the offending message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nanochat_gateway.model.tokenizer import NanochatTokenizer

__all__ = ["ConversationError", "render_for_completion"]

_ROLES = ("system", "user", "assistant")


class ConversationError(ValueError):
    """A conversation that cannot be rendered; ``param`` names the offending field (OpenAI style)."""

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _validated(messages: object) -> list[tuple[str, str]]:
    """Return (role, content) pairs, raising ConversationError for any malformed message."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ConversationError("'messages' must be a list of messages", "messages")
    if not messages:
        raise ConversationError("'messages' must contain at least one message", "messages")
    out: list[tuple[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ConversationError(
                f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]"
            )
        role = msg.get("role")
        if role not in _ROLES:
            raise ConversationError(
                f"messages[{i}] has unsupported role {role!r}; expected one of 'system', 'user', 'assistant'",
                f"messages[{i}].role",
            )
        content = msg.get("content")
        if not isinstance(content, str):
            raise ConversationError(
                f"messages[{i}].content must be a string, got {type(content).__name__}",
                f"messages[{i}].content",
            )
        out.append((role, content))
    return out


def render_for_completion(
    tokenizer: NanochatTokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    default_system_prompt: str | None = None,
) -> list[int]:
    """Token ids that prime the assistant to answer ``messages``; ends with ``<|assistant_start|>``.

    ``messages`` are ``{"role", "content"}`` dicts with string content ("developer" must already be
    mapped to "system"). An optional leading system message is merged into the first user message as
    ``system + "\\n\\n" + user``; ``default_system_prompt`` (if non-empty) is used the same way when the
    conversation has no system message. Then user and assistant turns must alternate, starting and
    ending with user. Violations raise ConversationError with the offending message's ``param``.
    """
    turns = _validated(messages)
    system: str | None = default_system_prompt or None
    start = 0
    if turns[0][0] == "system":
        system = turns[0][1]
        start = 1
        if len(turns) == 1:
            raise ConversationError("a system message must be followed by a user message", "messages")
    for i in range(start, len(turns)):
        role = turns[i][0]
        if role == "system":
            raise ConversationError(
                f"messages[{i}] is a system message; only the first message may have role 'system'",
                f"messages[{i}].role",
            )
        # Turns alternate user/assistant, counted from the first non-system message.
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role != expected:
            if i == start and start == 1:
                why = "a system message must be followed by a user message"
            elif i == start:
                why = "the conversation must start with a user message"
            else:
                why = f"messages[{i - 1}] is from the {turns[i - 1][0]}, so the next message must be from the {expected}"
            raise ConversationError(f"messages[{i}] has role {role!r}: {why}", f"messages[{i}].role")
    last = len(turns) - 1
    if turns[last][0] != "user":
        raise ConversationError(
            f"messages[{last}] has role {turns[last][0]!r}: the last message must be from the user",
            f"messages[{last}].role",
        )

    ids = [tokenizer.bos_id]
    for n, (role, content) in enumerate(turns[start:]):
        if role == "user":
            text = content if n != 0 or system is None else system + "\n\n" + content
            ids.append(tokenizer.user_start)
            ids.extend(tokenizer.encode(text))
            ids.append(tokenizer.user_end)
        else:
            ids.append(tokenizer.assistant_start)
            ids.extend(tokenizer.encode(content))
            ids.append(tokenizer.assistant_end)
    ids.append(tokenizer.assistant_start)
    return ids
