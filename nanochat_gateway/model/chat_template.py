"""Render a chat conversation into the token ids nanochat's models were trained on.

The layout follows nanochat's ``render_for_completion``:
``<|bos|> (<|user_start|> text <|user_end|> <|assistant_start|> text <|assistant_end|>)*
<|user_start|> text <|user_end|> <|assistant_start|>``, with a leading system message folded into the
first user message. Unlike nanochat, nothing is truncated and every malformed conversation raises
ConversationError pointing at the offending message.

Function calls use nanochat's own tool layout, the one its calculator calls were trained on: inside
the assistant's turn each call is ``<|python_start|> call <|python_end|>`` and its result follows as
``<|output_start|> result <|output_end|>``; a later assistant message continues the same turn. A
conversation that ends with tool results leaves that turn open, so the model continues it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nanochat_gateway.model.tokenizer import NanochatTokenizer

__all__ = ["ConversationError", "render_for_completion"]

_ROLES = ("system", "user", "assistant", "tool")


class ConversationError(ValueError):
    """A conversation that cannot be rendered; ``param`` names the offending field (OpenAI style)."""

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class _Message:
    index: int
    role: str
    content: str
    calls: list[str] = field(default_factory=list)  # an assistant message's tool calls, as text


@dataclass(slots=True)
class _Turn:
    """One side's turn: a user message, or an assistant message with its calls, results and continuation."""

    role: str
    first: int  # index of its first message
    last: int  # index of its last message
    parts: list[tuple[str, str]]  # (kind, text); kind is "text", "call" or "output"

    @property
    def open(self) -> bool:
        """An assistant turn that ends on a tool result: the model goes on with it."""
        return bool(self.parts) and self.parts[-1][0] == "output"


def _validated(messages: object) -> list[_Message]:
    """The messages as _Message records, raising ConversationError for any malformed one."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ConversationError("'messages' must be a list of messages", "messages")
    if not messages:
        raise ConversationError("'messages' must contain at least one message", "messages")
    out: list[_Message] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ConversationError(
                f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]"
            )
        role = msg.get("role")
        if role not in _ROLES:
            raise ConversationError(
                f"messages[{i}] has unsupported role {role!r}; expected one of 'system', 'user', 'assistant', 'tool'",
                f"messages[{i}].role",
            )
        content = msg.get("content")
        if not isinstance(content, str):
            raise ConversationError(
                f"messages[{i}].content must be a string, got {type(content).__name__}",
                f"messages[{i}].content",
            )
        calls = (msg.get("tool_calls") or []) if role == "assistant" else []
        if not isinstance(calls, list) or not all(isinstance(c, str) for c in calls):
            raise ConversationError(f"messages[{i}].tool_calls must be a list of strings", f"messages[{i}].tool_calls")
        out.append(_Message(i, role, content, list(calls)))
    return out


def _turns(messages: list[_Message]) -> list[_Turn]:
    """Group messages into turns: an assistant message, the results of its calls and the assistant
    messages continuing after them form one turn."""
    turns: list[_Turn] = []
    pending: list[str] = []  # calls of the last assistant message still waiting for their result
    for m in messages:
        if m.role == "tool":
            if not pending:
                raise ConversationError(
                    f"messages[{m.index}] is a tool result, but the message before it did not call a tool "
                    "(or its calls are all answered)", f"messages[{m.index}].role",
                )
            # each result follows its own call, as a calculator output follows its expression
            turns[-1].parts += [("call", pending.pop(0)), ("output", m.content)]
            turns[-1].last = m.index
            continue
        if pending:
            raise ConversationError(
                f"messages[{m.index}] has role {m.role!r}, but messages[{m.index - 1}] leaves {len(pending)} "
                "tool call(s) without a result", f"messages[{m.index}].role",
            )
        parts = [("text", m.content)] if m.content or not m.calls else []
        if m.role == "assistant" and turns and turns[-1].role == "assistant" and turns[-1].open:
            turns[-1].parts += parts  # the answer after the tool results continues the same turn
            turns[-1].last = m.index
        else:
            turns.append(_Turn(m.role, m.index, m.index, parts))
        pending = list(m.calls)
    if pending:
        last = messages[-1].index
        raise ConversationError(
            f"messages[{last}] makes {len(pending)} tool call(s) that have no result; send a 'tool' message "
            "for each", f"messages[{last}]",
        )
    return turns


def _check_order(turns: list[_Turn]) -> str | None:
    """Check where system, user and assistant turns may appear; returns the system text, if any."""
    system = None
    start = 0
    if turns[0].role == "system":
        system = "".join(text for _, text in turns[0].parts)
        start = 1
        if len(turns) == 1:
            raise ConversationError("a system message must be followed by a user message", "messages")
    for n in range(start, len(turns)):
        turn, i = turns[n], turns[n].first
        if turn.role == "system":
            raise ConversationError(
                f"messages[{i}] is a system message; only the first message may have role 'system'",
                f"messages[{i}].role",
            )
        # Turns alternate user/assistant, counted from the first non-system message.
        expected = "user" if (n - start) % 2 == 0 else "assistant"
        if turn.role != expected:
            if n == start and start == 1:
                why = "a system message must be followed by a user message"
            elif n == start:
                why = "the conversation must start with a user message"
            else:
                previous = turns[n - 1]
                why = (f"messages[{previous.last}] is from the {previous.role}, so the next message must be "
                       f"from the {expected}")
            raise ConversationError(f"messages[{i}] has role {turn.role!r}: {why}", f"messages[{i}].role")
    last = turns[-1]
    if last.role != "user" and not last.open:
        raise ConversationError(
            f"messages[{last.last}] has role {last.role!r}: the last message must be from the user "
            "(or a tool result)",
            f"messages[{last.last}].role",
        )
    return system


def render_for_completion(
    tokenizer: NanochatTokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    default_system_prompt: str | None = None,
) -> list[int]:
    """Token ids that prime the assistant to answer ``messages``.

    ``messages`` are ``{"role", "content"}`` dicts with string content ("developer" must already be
    mapped to "system"); an assistant message may add ``"tool_calls"``, a list of call texts, each
    answered in order by one following ``{"role": "tool", "content": result}`` message. An optional
    leading system message is merged into the first user message as ``system + "\\n\\n" + user``;
    ``default_system_prompt`` (if non-empty) is used the same way when the conversation has no system
    message. Then user and assistant turns must alternate, starting with user and ending with user
    (the ids then end with ``<|assistant_start|>``) or with tool results (the ids end inside that
    assistant turn, after the last ``<|output_end|>``). Violations raise ConversationError with the
    offending message's ``param``.
    """
    turns = _turns(_validated(messages))
    system = _check_order(turns)
    if turns[0].role == "system":
        turns = turns[1:]
    else:
        system = default_system_prompt or None
    markers = {
        "call": (tokenizer.python_start, tokenizer.python_end),
        "output": (tokenizer.output_start, tokenizer.output_end),
    }
    ids = [tokenizer.bos_id]
    for n, turn in enumerate(turns):
        if turn.role == "user":
            content = "".join(text for _, text in turn.parts)
            text = content if n != 0 or system is None else system + "\n\n" + content
            ids += [tokenizer.user_start, *tokenizer.encode(text), tokenizer.user_end]
            continue
        ids.append(tokenizer.assistant_start)
        for kind, text in turn.parts:
            if kind == "text":
                ids += tokenizer.encode(text)
            else:
                begin, end = markers[kind]
                ids += [begin, *tokenizer.encode(text), end]
        if not (turn.open and n == len(turns) - 1):
            ids.append(tokenizer.assistant_end)
    if turns[-1].role == "user":
        ids.append(tokenizer.assistant_start)
    return ids
