"""A request's prompt as token ids: chat messages rendered with nanochat's template, or a
legacy completions prompt encoded the way nanochat's base models saw every document."""

from __future__ import annotations

from nanochat_gateway.api import errors
from nanochat_gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from nanochat_gateway.config import LimitsSettings
from nanochat_gateway.model.chat_template import ConversationError, render_for_completion
from nanochat_gateway.model.tokenizer import NanochatTokenizer


def chat_prompt_ids(body: ChatCompletionRequest, tokenizer: NanochatTokenizer, limits: LimitsSettings,
                    default_system_prompt: str | None) -> list[int]:
    """The rendered conversation, ending with <|assistant_start|>; 400 for what nanochat cannot render."""
    turns = _turns(body)
    _check_sizes(turns, limits)
    try:
        return render_for_completion(tokenizer, turns, default_system_prompt=default_system_prompt)
    except ConversationError as exc:
        raise errors.invalid_request(exc.message, param=exc.param.replace("[", ".").replace("]", ""),
                                     code="invalid_conversation") from None


def _turns(body: ChatCompletionRequest) -> list[dict[str, str]]:
    """OpenAI messages as nanochat turns: developer counts as system, content parts are joined."""
    turns: list[dict[str, str]] = []
    for i, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        if role not in ("system", "user", "assistant"):
            raise errors.invalid_request(f"messages[{i}]: the role '{message.role}' is not supported by this model",
                                         param=f"messages.{i}.role", code="unsupported_value")
        turns.append({"role": role, "content": message.text()})
    return turns


def _check_sizes(turns: list[dict[str, str]], limits: LimitsSettings) -> None:
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


def completion_prompt_ids(body: CompletionRequest, tokenizer: NanochatTokenizer) -> list[int]:
    """A text prompt after <|bos|>, as base models saw documents start; token ids exactly as given."""
    prompt = body.single_prompt()
    if isinstance(prompt, str):
        return [tokenizer.bos_id, *tokenizer.encode(prompt)]
    if not prompt:
        raise errors.invalid_request("prompt must not be empty", param="prompt")
    vocab = tokenizer.vocab_size
    if bad := [t for t in prompt if t >= vocab]:
        raise errors.invalid_request(f"prompt: token id {bad[0]} is outside the vocabulary (size {vocab})",
                                     param="prompt", code="invalid_value")
    return list(prompt)
