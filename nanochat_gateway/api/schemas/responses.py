"""Response bodies of the OpenAI-compatible API: the one definition of every field sent.

Handlers build these with their constructors (validated in pydantic-core, which is faster than
``model_construct()``'s Python path) and serialise them with ``dump()`` / ``dump_chunk()``, which
omit the keys the OpenAI stream omits (null ``role``/``content`` in deltas, ``usage`` unless requested). ``openapi.py``
describes the same models, so the document and the wire format cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

# Why a choice ended: its natural end or a stop sequence, max_tokens, a plugin's verdict, or a
# completed forced tool call.
FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]

class PromptTokensDetails(BaseModel):
    """What the prompt tokens were made of."""

    cached_tokens: int = Field(0, description="Prompt tokens whose KV was reused from an earlier request "
                                              "(prefix caching) instead of being processed again.")


class Usage(BaseModel):
    """Token counts for one request (summed over all choices)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class TopLogprob(BaseModel):
    """One alternative token at a position."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    """Log probability of one generated token, with its top alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    """Per-token log probabilities of a chat choice."""

    content: list[TokenLogprob] | None = None
    refusal: None = None


class FunctionCall(BaseModel):
    """The function a tool call invokes; ``arguments`` is JSON text."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """One call in ``message.tool_calls``."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def _is_none(value: Any) -> bool:
    return value is None


class AssistantMessage(BaseModel):
    """The generated message of a non-streamed chat choice: text, or (content null) tool calls."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: None = None
    tool_calls: Annotated[list[ToolCall] | None, Field(exclude_if=_is_none)] = None


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    """Non-streamed response of ``/v1/chat/completions``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(BaseModel):
    """Part of a streamed call: the name once, in the call's first delta; arguments as they come."""

    name: Annotated[str | None, Field(exclude_if=_is_none)] = None
    arguments: str = ""


class ToolCallDelta(BaseModel):
    """A fragment of ``delta.tool_calls``; ``id`` and ``type`` only in the call's first fragment."""

    index: int
    id: Annotated[str | None, Field(exclude_if=_is_none)] = None
    type: Annotated[Literal["function"] | None, Field(exclude_if=_is_none)] = None
    function: FunctionCallDelta


class Delta(BaseModel):
    """A streamed message fragment. Null fields are left out, as in OpenAI's stream.

    First delta ``Delta(role="assistant", content="")``, then ``Delta(content=...)``, and ``Delta()``
    (serialised as ``{}``) alongside the finish reason.
    """

    role: Annotated[Literal["assistant"] | None, Field(exclude_if=_is_none)] = None
    content: Annotated[str | None, Field(exclude_if=_is_none)] = None
    tool_calls: Annotated[list[ToolCallDelta] | None, Field(exclude_if=_is_none)] = None


class ChunkChoice(BaseModel):
    """One choice inside a stream chunk; ``finish_reason`` stays null until the choice's last chunk."""

    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streamed chat completion; every chunk shares ``id`` and ``created``.

    With ``stream_options.include_usage`` the last chunk has ``choices=[]`` and ``usage`` set, and
    every other chunk carries ``usage: null``; without it serialise via ``dump_chunk`` to omit the key.
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs; ``token_logprobs`` starts with null when the prompt is echoed."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    """One choice of a legacy completion (``finish_reason`` is null in non-final stream chunks)."""

    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """Response of ``/v1/completions``; streamed events use the same shape."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Model(BaseModel):
    """One entry of ``/v1/models``; the fields after ``owned_by`` are extensions clients ignore."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    demo: bool = Field(False, description="Extension: a generated model with random weights.")
    description: Annotated[str | None, Field(exclude_if=_is_none)] = None
    generation: Annotated[
        str | None, Field(exclude_if=_is_none, description="Extension: the checkpoint's architecture generation.")
    ] = None
    quantization: Annotated[
        str | None,
        Field(exclude_if=_is_none, description='Extension: "int8" when the linear layers hold int8 weights, else "none".'),
    ] = None
    max_model_len: Annotated[
        int | None, Field(exclude_if=_is_none, description="Extension: the context, in tokens.")
    ] = None


class ModelList(BaseModel):
    """Response of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(BaseModel):
    """The inner OpenAI error object; all four keys are always present."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope ``{"error": {...}}``."""

    error: ErrorBody



_WITHOUT_USAGE: set[str] = {"usage"}


def dump(model: BaseModel) -> str:
    """Serialise a response model to compact JSON (pydantic-core, no intermediate dict)."""
    return model.model_dump_json()


def dump_chunk(chunk: ChatCompletionChunk | Completion, *, include_usage: bool) -> str:
    """Serialise one stream event; ``usage`` is present (often null) only if the client asked for it."""
    return chunk.model_dump_json(exclude=None if include_usage else _WITHOUT_USAGE)
