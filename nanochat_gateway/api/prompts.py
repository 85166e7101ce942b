"""A request's prompts as token ids: chat messages rendered with nanochat's template, or legacy
completions prompts encoded the way nanochat's base models saw every document.

Tool calls of earlier assistant messages and the ``tool`` messages answering them go into
the template as nanochat's calculator calls and outputs, each result after its own call
(matched by ``tool_call_id``); instructions for a forced call end the system text."""

from __future__ import annotations

from typing import Any

from nanochat_gateway.api import errors
from nanochat_gateway.api.schemas import ChatMessage, CompletionRequest
from nanochat_gateway.api.structured import call_text
from nanochat_gateway.config import LimitsSettings
from nanochat_gateway.model.chat_template import ConversationError, render_for_completion
from nanochat_gateway.model.tokenizer import NanochatTokenizer


def chat_prompt_ids(messages: list[ChatMessage], tokenizer: NanochatTokenizer, limits: LimitsSettings,
                    default_system_prompt: str | None, *, tool_instructions: str | None = None,
                    continue_final_message: bool | None = None,
                    add_generation_prompt: bool | None = None) -> list[int]:
    """The rendered conversation (see model/chat_template.py): ending with <|assistant_start|>, or
    inside the assistant's turn when it continues a final assistant message or tool results;
    400 for what nanochat cannot render."""
    turns = _turns(messages)
    _check_sizes(turns, limits)
    if tool_instructions:
        turns = _with_system_text(turns, default_system_prompt, tool_instructions)
    try:
        return render_for_completion(tokenizer, turns, default_system_prompt=default_system_prompt,
                                     continue_final_message=continue_final_message,
                                     add_generation_prompt=add_generation_prompt)
    except ConversationError as exc:
        raise errors.invalid_request(exc.message, param=exc.param.replace("[", ".").replace("]", ""),
                                     code="invalid_conversation") from None


def _turns(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages as nanochat turns: developer counts as system, content parts are joined,
    an assistant's calls become call texts and tool results follow in the order of the calls."""
    turns: list[dict[str, Any]] = []
    call_ids: list[str] = []  # the calls of the last assistant message, in order
    for i, message in enumerate(messages):  # the schema has refused roles this server cannot render
        role = "system" if message.role == "developer" else message.role
        turn: dict[str, Any] = {"role": role, "content": message.text()}
        if role == "assistant" and message.tool_calls:
            turn["tool_calls"] = [call_text(c.function.name, c.function.arguments) for c in message.tool_calls]
            call_ids = [c.id for c in message.tool_calls]
        if role == "tool":
            turn["order"] = _call_position(message.tool_call_id, call_ids, i)
        turns.append(turn)
    return _results_in_call_order(turns)


def _call_position(call_id: str | None, call_ids: list[str], index: int) -> int:
    """Where the call a tool message answers sits among the calls before it; results without an
    id keep their order, after the matched ones."""
    if call_id is None:
        return len(call_ids)
    if call_id not in call_ids:
        raise errors.invalid_request(f"messages[{index}].tool_call_id '{call_id}' answers no call of the assistant "
                                     "message before it", param=f"messages.{index}.tool_call_id",
                                     code="invalid_conversation")
    return call_ids.index(call_id)


def _results_in_call_order(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort each run of consecutive tool messages by the position of the call it answers."""
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    for turn in [*turns, None]:
        if turn is not None and turn["role"] == "tool":
            run.append(turn)
            continue
        out += [{"role": "tool", "content": t["content"]} for t in sorted(run, key=lambda t: t["order"])]
        run = []
        if turn is not None:
            out.append(turn)
    return out


def _with_system_text(turns: list[dict[str, Any]], default_system_prompt: str | None,
                      text: str) -> list[dict[str, Any]]:
    """The conversation with ``text`` at the end of its system message (or of the default one)."""
    if turns and turns[0]["role"] == "system":
        return [{**turns[0], "content": f"{turns[0]['content']}\n\n{text}"}, *turns[1:]]
    system = f"{default_system_prompt}\n\n{text}" if default_system_prompt else text
    return [{"role": "system", "content": system}, *turns]


def _check_sizes(turns: list[dict[str, Any]], limits: LimitsSettings) -> None:
    if len(turns) > limits.max_messages:
        raise errors.invalid_request(f"at most {limits.max_messages} messages are allowed", param="messages")
    total = 0
    for i, turn in enumerate(turns):
        size = len(turn["content"])
        total += size
        if size > limits.max_message_chars:
            raise errors.invalid_request(f"messages[{i}] is longer than {limits.max_message_chars} characters",
                                         param=f"messages.{i}.content")
    if total > limits.max_total_chars:
        raise errors.invalid_request(f"the conversation is longer than {limits.max_total_chars} characters",
                                     param="messages")


def completion_prompts_ids(body: CompletionRequest, tokenizer: NanochatTokenizer,
                           limits: LimitsSettings) -> list[list[int]]:
    """Every prompt of the request, in order: text after <|bos|>, as base models saw documents
    start; token ids exactly as given (and within the vocabulary)."""
    prompts = body.prompts()
    if len(prompts) > limits.max_prompts:
        raise errors.invalid_request(f"at most {limits.max_prompts} prompts are allowed in one request "
                                     f"(got {len(prompts)})", param="prompt", code="invalid_value")
    return [_prompt_ids(prompt, tokenizer) for prompt in prompts]


def _prompt_ids(prompt: str | list[int], tokenizer: NanochatTokenizer) -> list[int]:
    if isinstance(prompt, str):
        return [tokenizer.bos_id, *tokenizer.encode(prompt)]
    vocab = tokenizer.vocab_size
    if bad := [t for t in prompt if t >= vocab]:
        raise errors.invalid_request(f"prompt: token id {bad[0]} is outside the vocabulary (size {vocab})",
                                     param="prompt", code="invalid_value")
    return list(prompt)
