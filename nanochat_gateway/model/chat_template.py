"""Render a chat conversation into the token ids nanochat's models were trained on.

The layout follows nanochat's ``render_for_completion``:
``<|bos|> (<|user_start|> text <|user_end|> <|assistant_start|> text <|assistant_end|>)*
<|user_start|> text <|user_end|> <|assistant_start|>``. nanochat's format has no system turn, so
system text belongs to the user side: every run of system and user messages is one user turn
(a leading system message is put before the first user message, as nanochat does). A
conversation that ends with an assistant message is continued rather than answered. Unlike
nanochat, nothing is truncated and every conversation that cannot keep this structure raises
ConversationError pointing at the offending message.

Function calls use nanochat's own tool layout, the one its calculator calls were trained on: inside
the assistant's turn each call is ``<|python_start|> call <|python_end|>`` and its result follows as
``<|output_start|> result <|output_end|>``; a later assistant message continues the same turn. A
conversation that ends with tool results leaves that turn open, so the model continues it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nanochat_gateway.model.tokenizer import NanochatTokenizer

__all__ = ["ConversationError", "jinja_chat_template", "render_for_completion"]

_ROLES = ("system", "user", "assistant", "tool")
_JOIN = "\n\n"  # between the messages of one user turn: a blank line, as nanochat put the system prompt


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
        elif m.role != "assistant" and turns and turns[-1].role == "user":
            turns[-1].parts += parts  # system and user messages in a row are one user turn
            turns[-1].last = m.index
        else:
            turns.append(_Turn("user" if m.role == "system" else m.role, m.index, m.index, parts))
        pending = list(m.calls)
    if pending:
        last = messages[-1].index
        raise ConversationError(
            f"messages[{last}] makes {len(pending)} tool call(s) that have no result; send a 'tool' message "
            "for each", f"messages[{last}]",
        )
    return turns


def _check_order(turns: list[_Turn]) -> None:
    """User and assistant turns must alternate, starting with a user turn: nanochat's format has no
    place for an assistant message first, or for two assistant turns in a row."""
    for n, turn in enumerate(turns):
        if turn.role == "user":
            continue
        if n == 0:
            raise ConversationError(
                f"messages[{turn.first}] has role 'assistant': the conversation must start with a user or "
                "system message", f"messages[{turn.first}].role",
            )
        if turns[n - 1].role == "assistant":
            raise ConversationError(
                f"messages[{turn.first}] has role 'assistant': messages[{turns[n - 1].last}] is from the "
                "assistant too, so a user message must come between them", f"messages[{turn.first}].role",
            )


def _final_turn_mode(last_role: str, continue_final_message: bool | None,
                     add_generation_prompt: bool | None) -> tuple[bool, bool]:
    """(leave the final assistant turn open, open a new assistant turn), from the two options.

    Defaults: a final assistant turn (its text, or tool results) is continued; after a final user
    turn the assistant's turn is opened.
    """
    if continue_final_message and add_generation_prompt:
        raise ConversationError("continue_final_message and add_generation_prompt cannot both be true",
                                "continue_final_message")
    if continue_final_message and last_role != "assistant":
        raise ConversationError("continue_final_message needs the last message to be from the assistant",
                                "continue_final_message")
    keep_open = continue_final_message if continue_final_message is not None else (
        last_role == "assistant" and not add_generation_prompt)
    open_new = add_generation_prompt if add_generation_prompt is not None else not keep_open
    return keep_open, open_new


def render_for_completion(
    tokenizer: NanochatTokenizer,
    messages: Sequence[Mapping[str, Any]],
    *,
    default_system_prompt: str | None = None,
    continue_final_message: bool | None = None,
    add_generation_prompt: bool | None = None,
) -> list[int]:
    """Token ids that prime the assistant to answer (or continue) ``messages``.

    ``messages`` are ``{"role", "content"}`` dicts with string content ("developer" must already be
    mapped to "system"); an assistant message may add ``"tool_calls"``, a list of call texts, each
    answered in order by one following ``{"role": "tool", "content": result}`` message. Every run of
    system and user messages is one user turn, their texts joined by a blank line in message order;
    ``default_system_prompt`` (if non-empty) is put before the first user turn when the conversation
    has no system message at all. User and assistant turns must then alternate, starting with a user
    turn. After a final user turn the ids end with ``<|assistant_start|>``; a final assistant turn
    (its text, or tool results) is left open so the model continues it. ``continue_final_message``
    and ``add_generation_prompt`` override that, with vLLM's meaning: continue the last assistant
    message as written, or close every message and open a new assistant turn. Violations raise
    ConversationError with the offending message's ``param``.
    """
    validated = _validated(messages)
    turns = _turns(validated)
    _check_order(turns)
    keep_open, open_new = _final_turn_mode(turns[-1].role, continue_final_message, add_generation_prompt)
    default = default_system_prompt if all(m.role != "system" for m in validated) else None
    markers = {
        "call": (tokenizer.python_start, tokenizer.python_end),
        "output": (tokenizer.output_start, tokenizer.output_end),
    }
    ids = [tokenizer.bos_id]
    for n, turn in enumerate(turns):
        if turn.role == "user":
            texts = [text for _, text in turn.parts]
            if n == 0 and default:
                texts.insert(0, default)
            ids += [tokenizer.user_start, *tokenizer.encode(_JOIN.join(texts)), tokenizer.user_end]
            continue
        ids.append(tokenizer.assistant_start)
        for kind, text in turn.parts:
            if kind == "text":
                ids += tokenizer.encode(text)
            else:
                begin, end = markers[kind]
                ids += [begin, *tokenizer.encode(text), end]
        if not (keep_open and n == len(turns) - 1):
            ids.append(tokenizer.assistant_end)
    if open_new:
        ids.append(tokenizer.assistant_start)
    return ids


# The same rendering as a Jinja chat template, for clients that render conversations themselves
# (Hugging Face style: called with ``messages`` and optionally ``add_generation_prompt`` and
# ``continue_final_message``). Special tokens appear by name: encode the result with special
# tokens allowed. It covers system, user and assistant messages (not tool calls and results) and
# assumes a conversation render_for_completion accepts.
_JINJA_TEMPLATE = """\
{%- set sep = "\\n\\n" -%}
{%- set ns = namespace(side=[], out="<|bos|>", has_system=false) -%}
{%- for m in messages if m["role"] in ["system", "developer"] -%}{%- set ns.has_system = true -%}{%- endfor -%}
{%- if default_system and not ns.has_system -%}{%- set ns.side = [default_system] -%}{%- endif -%}
{%- set cfm = continue_final_message if continue_final_message is defined else none -%}
{%- set agp = add_generation_prompt if add_generation_prompt is defined else none -%}
{%- if cfm is not none -%}{%- set keep_open = cfm -%}
{%- else -%}{%- set keep_open = messages[-1]["role"] == "assistant" and not agp -%}{%- endif -%}
{%- set open_new = agp if agp is not none else not keep_open -%}
{%- for m in messages -%}
  {%- set c = m["content"] -%}
  {%- set text = c if c is string else ((c or []) | map(attribute="text") | join("\\n")) -%}
  {%- if m["role"] == "assistant" -%}
    {%- if ns.side -%}
      {%- set ns.out = ns.out + "<|user_start|>" + (ns.side | join(sep)) + "<|user_end|>" -%}
      {%- set ns.side = [] -%}
    {%- endif -%}
    {%- set ns.out = ns.out + "<|assistant_start|>" + text -%}
    {%- if not (loop.last and keep_open) -%}{%- set ns.out = ns.out + "<|assistant_end|>" -%}{%- endif -%}
  {%- else -%}
    {%- set ns.side = ns.side + [text] -%}
  {%- endif -%}
{%- endfor -%}
{%- if ns.side -%}{%- set ns.out = ns.out + "<|user_start|>" + (ns.side | join(sep)) + "<|user_end|>" -%}{%- endif -%}
{{- ns.out -}}
{%- if open_new -%}<|assistant_start|>{%- endif -%}
"""


def jinja_chat_template(default_system_prompt: str | None = None) -> str:
    """render_for_completion's layout as a Jinja chat template (text with special token names)."""
    default = json.dumps(default_system_prompt or "")  # a JSON string is a valid Jinja string literal
    return "{%- set default_system = " + default + " -%}\n" + _JINJA_TEMPLATE
