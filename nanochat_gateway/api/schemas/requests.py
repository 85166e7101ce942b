"""Request bodies of the OpenAI-compatible API, validated with pydantic.

Requests are lenient where clients are noisy and strict where a silent ignore would mislead:
- Unknown fields are accepted and kept in ``model_extra`` (the openai SDK and frameworks send many
  fields by default; a 422 on them breaks clients). Call ``unknown_fields()`` to log them.
- Types are strict (no ``"0.7"`` or ``true`` for a number), so what is accepted is what the JSON
  schema in ``openapi.py`` describes; as in JSON Schema, ``1.0`` counts as the integer 1.
- ``null`` for a field with a non-null default (``n``, ``stream``, ``logprobs``, ``echo``,
  ``stream_options.include_usage``) means "use the default", as the OpenAI spec marks them nullable.
- Features this server cannot honour (legacy functions, audio, images, ...) are rejected with a
  pydantic error located at the field, so ``errors.validation_error_to_api_error`` turns any
  problem into a 400 whose ``param`` names it (e.g. ``messages.0.content.1.type``).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from nanochat_gateway.api.schemas.base import RequestModel
from nanochat_gateway.api.schemas.formats import MessageToolCall, ResponseFormat, Tool, ToolChoice

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_N = 128
MAX_BEST_OF = 20
MAX_TOKEN_ID_DIGITS = 10  # token ids are below 2**31


def _integral_float_to_int(value: Any) -> Any:
    # JSON Schema counts 1.0 as an integer and some clients serialise ints that way; 1.5 still fails.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Goes after any Field(...) constraints so pydantic still emits them as JSON-schema minimum/maximum.
_INTEGRAL = BeforeValidator(_integral_float_to_int)
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
TokenId = Annotated[int, Field(ge=0), _INTEGRAL]
StopField = (
    NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1, max_length=MAX_STOP_SEQUENCES)] | None
)


def _unsupported(message: str) -> PydanticCustomError:
    # The custom error type becomes the APIError code, as OpenAI's own "unsupported_parameter".
    return PydanticCustomError("unsupported_parameter", message)


def _requires(field: str, other: str, value: Any) -> dict[str, Any]:
    """JSON-schema clause: when ``field`` is set (non-null), ``other`` must equal ``value``."""
    return {
        "if": {"properties": {field: {"not": {"type": "null"}}}, "required": [field]},
        "then": {"properties": {other: {"const": value}}, "required": [other]},
    }


_STREAM_OPTIONS_NEED_STREAM = _requires("stream_options", "stream", True)
# best_of must equal n (n defaults to 1); JSON Schema cannot compare fields, so list each allowed pair.
_BEST_OF_EQUALS_N: dict[str, Any] = {
    "anyOf": [
        {"properties": {"best_of": {"type": "null"}}},
        # n may be absent or null only when it is the default 1.
        {"properties": {"best_of": {"const": 1}, "n": {"enum": [1, None]}}},
        *(
            {"properties": {"best_of": {"const": k}, "n": {"const": k}}, "required": ["n"]}
            for k in range(2, MAX_BEST_OF + 1)
        ),
    ]
}


class ContentPart(RequestModel):
    """A message content part; only ``{"type": "text", "text": ...}`` is supported."""

    type: Literal["text"]
    text: str

    @field_validator("type", mode="before")
    @classmethod
    def _only_text(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "text":
            raise PydanticCustomError(
                "unsupported_value",
                "content part type '{part_type}' is not supported; this model accepts only 'text' parts",
                {"part_type": value},
            )
        return value


# Roles a conversation may use here; "developer" is the newer name of "system".
ChatRole = Literal["system", "developer", "user", "assistant", "tool"]
# OpenAI roles this server knows but cannot render, refused with a message that says so.
UNRENDERED_ROLES = frozenset({"function"})


class ChatMessage(RequestModel):
    """One chat message. ``developer`` is the newer name of ``system``; ``function`` (deprecated) is refused."""

    role: ChatRole
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant message's calls
    tool_call_id: str | None = None  # the call a tool message answers

    @field_validator("role", mode="before")
    @classmethod
    def _renderable_role(cls, value: Any) -> Any:
        if isinstance(value, str) and value in UNRENDERED_ROLES:
            raise PydanticCustomError(
                "unsupported_value", "the role '{role}' is not supported by this model", {"role": value}
            )
        return value

    def text(self) -> str:
        """The content as one string: text parts are joined with "\\n", missing content is "".

        OpenAI's docs do not say how parts combine; "\\n" matches vLLM and TensorRT-LLM and keeps
        parts from running into each other (a part is usually a paragraph, not a word fragment).
        """
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(RequestModel):
    """Options for streamed responses; only ``include_usage`` has an effect."""

    null_means_default: ClassVar[frozenset[str]] = frozenset({"include_usage"})

    include_usage: bool = False


class GenerationBody(RequestModel):
    """What chat and legacy completion bodies share: the fields (declared before any field that
    depends on them) and the questions the prepare step asks of either."""

    null_means_default: ClassVar[frozenset[str]] = frozenset({"n", "stream", "cache_prompt"})
    endpoint: ClassVar[str]  # "chat.completions" or "completions", as plugins and metrics name it
    prompt_param: ClassVar[str]  # the field that holds the prompt, named by context-length errors

    model: NonEmptyStr
    temperature: Annotated[float | None, Field(ge=0, le=2, description="0 means greedy decoding.")] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[
        int | None,
        Field(ge=0, description="Extension: sample from the k most likely tokens; 0 or null disables."),
        _INTEGRAL,
    ] = None
    n: Annotated[int, Field(ge=1, le=MAX_N), _INTEGRAL] = 1
    stop: Annotated[
        StopField, Field(description="One stop sequence, or a list of 1-4. Excluded from the output.")
    ] = None
    seed: Annotated[int | None, Field(ge=INT64_MIN, le=INT64_MAX), _INTEGRAL] = None
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    logit_bias: Annotated[
        dict[str, Annotated[float, Field(ge=-100, le=100)]] | None,
        Field(
            description="Token id (as a decimal string) to a bias from -100 to 100.",
            json_schema_extra={"propertyNames": {"pattern": f"^[0-9]{{1,{MAX_TOKEN_ID_DIGITS}}}$"}},
        ),
    ] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: Annotated[
        ResponseFormat | None,
        Field(description="text (default), json_object, or json_schema; enforced while decoding. "
              "An extension on /v1/completions."),
    ] = None
    cache_prompt: Annotated[
        bool,
        Field(description="Extension (llama.cpp's name): false processes the whole prompt instead of reusing "
                          "the KV of a prefix an earlier request computed."),
    ] = True

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if len(key) > MAX_TOKEN_ID_DIGITS:  # and int() refuses over 4,300 digits
                raise PydanticCustomError("invalid_value", "keys must be token ids of at most {digits} digits",
                                          {"digits": MAX_TOKEN_ID_DIGITS})
            # isdecimal() alone accepts non-ASCII digits such as "٣", which int() would also take.
            if not (key.isascii() and key.isdecimal()):
                raise PydanticCustomError(
                    "invalid_value",
                    "keys must be token ids written as decimal strings (got key '{key}')",
                    {"key": key},
                )
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream", False):
            raise PydanticCustomError("invalid_value", "only allowed when stream is true")
        return value

    def stop_sequences(self) -> list[str]:
        """``stop`` as a list (empty when not given)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_logit_bias(self) -> dict[int, float]:
        """``logit_bias`` with integer token ids (empty when not given)."""
        return {int(k): v for k, v in (self.logit_bias or {}).items()}

    @property
    def include_usage(self) -> bool:
        """Whether a final usage chunk (and ``usage: null`` on other chunks) was requested."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

    @abstractmethod
    def effective_max_tokens(self) -> int | None:
        """The completion-token budget the client asked for; None means the server default."""

    @property
    @abstractmethod
    def max_tokens_param(self) -> str:
        """The name of the field that set the budget, for error messages."""

    @property
    @abstractmethod
    def wants_logprobs(self) -> bool:
        """Whether each generated token's log probability is returned."""

    @property
    @abstractmethod
    def top_logprobs_count(self) -> int:
        """How many alternatives to return per token (0 when logprobs are off)."""


class ChatCompletionRequest(GenerationBody):
    """Body of ``POST /v1/chat/completions``."""

    endpoint: ClassVar[str] = "chat.completions"
    prompt_param: ClassVar[str] = "messages"

    null_means_default: ClassVar[frozenset[str]] = frozenset({"n", "stream", "logprobs"})
    # The cross-field rules enforced by the validators below, stated in the JSON schema too.
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [_STREAM_OPTIONS_NEED_STREAM, _requires("top_logprobs", "logprobs", True)]
        }
    )

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[
        int | None, Field(ge=1, description="Deprecated alias of max_completion_tokens."), _INTEGRAL
    ] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1), _INTEGRAL] = None
    logprobs: bool = False
    top_logprobs: Annotated[
        int | None, Field(ge=0, le=20, description="Requires logprobs: true."), _INTEGRAL
    ] = None

    tools: list[Tool] | None = None
    tool_choice: Annotated[
        ToolChoice | None,
        Field(description="'required' or a named function forces a call; 'none', or no tool_choice at all, "
              "ignores the tools (agent frameworks send theirs with every request); 'auto' is not supported."),
    ] = None
    # Accepted only in their "off" form: a silent ignore would hand back output the client did not ask for.
    functions: Annotated[
        list[Any] | None,
        Field(description="Not supported: omit, null or [].", json_schema_extra={"maxItems": 0}),
    ] = None
    function_call: Annotated[
        Literal["none"] | None, Field(description="Not supported: omit, null or 'none'.")
    ] = None
    continue_final_message: Annotated[
        bool | None,
        Field(description="Extension (as vLLM): continue the final assistant message instead of answering "
                          "it. Defaults to true when the last message is from the assistant."),
    ] = None
    add_generation_prompt: Annotated[
        bool | None,
        Field(description="Extension (as vLLM): end the prompt with an opened assistant turn. Defaults to "
                          "true unless the final assistant message is continued."),
    ] = None
    audio: Annotated[None, Field(description="Not supported: omit or null.")] = None
    modalities: Annotated[list[Literal["text"]] | None, Field(description="Only ['text'].")] = None
    prediction: Annotated[None, Field(description="Not supported: omit or null.")] = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs", False):
            raise PydanticCustomError("invalid_value", "requires logprobs to be true")
        return value

    @field_validator("functions", mode="before")
    @classmethod
    def _no_functions(cls, value: Any) -> Any:
        if value not in (None, []):
            raise _unsupported("legacy function calling is not supported by this server; use tools")
        return value

    @field_validator("function_call", mode="before")
    @classmethod
    def _no_function_call(cls, value: Any) -> Any:
        if value not in (None, "none"):
            raise _unsupported("legacy function calling is not supported by this server; use tool_choice")
        return value

    @field_validator("audio", "prediction", mode="before")
    @classmethod
    def _not_supported(cls, value: Any) -> Any:
        if value is not None:
            raise _unsupported("not supported by this server")
        return value

    @field_validator("modalities", mode="before")
    @classmethod
    def _text_modality_only(cls, value: Any) -> Any:
        if isinstance(value, list) and any(m != "text" for m in value):
            raise PydanticCustomError("unsupported_value", "only the 'text' modality is supported")
        return value

    def effective_max_tokens(self) -> int | None:
        """The completion-token budget: ``max_completion_tokens`` wins over ``max_tokens``; None if neither."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs

    @property
    def top_logprobs_count(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else 0


class CompletionRequest(GenerationBody):
    """Body of the legacy ``POST /v1/completions``.

    ``prompt`` is a string, a list of token ids, or a batch: a list of strings or a list of
    token-id lists. A batch of k prompts gives k x n choices, prompt-major (choice ``i`` of
    prompt ``p`` has index ``p * n + i``), as OpenAI numbers them.
    """

    null_means_default: ClassVar[frozenset[str]] = frozenset({"n", "stream", "echo"})
    endpoint: ClassVar[str] = "completions"
    prompt_param: ClassVar[str] = "prompt"
    model_config = ConfigDict(json_schema_extra={"allOf": [_STREAM_OPTIONS_NEED_STREAM, _BEST_OF_EQUALS_N]})

    prompt: Annotated[
        str | list[str] | list[TokenId] | list[list[TokenId]],
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                    {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                        "minItems": 1,
                    },
                ],
                "description": "Text or token ids, or a batch of either (one prompt per element).",
            }
        ),
    ]
    max_tokens: Annotated[
        int | None,
        Field(ge=0, description="Defaults to 16 as in OpenAI's API; null means the server default "
              "([engine] max_tokens, shortened to what the context leaves). 0 generates nothing: with "
              "echo and logprobs, that scores the prompt."),
        _INTEGRAL,
    ] = 16
    logprobs: Annotated[
        int | None,
        Field(ge=0, le=5, description="Number of top alternatives per token; with echo, the prompt's "
              "tokens get log probabilities too."),
        _INTEGRAL,
    ] = None
    echo: bool = False
    suffix: Annotated[str | None, Field(description="Not supported: omit, null or ''.", max_length=0)] = None
    best_of: Annotated[
        int | None, Field(ge=1, le=MAX_BEST_OF, description="Only null or equal to n."), _INTEGRAL
    ] = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or any(isinstance(p, list) and not p for p in value)):
            raise PydanticCustomError("invalid_value", "must not be empty")
        return value

    @field_validator("suffix", mode="before")
    @classmethod
    def _no_suffix(cls, value: Any) -> Any:
        # An empty suffix is the same as none, so it is accepted.
        if isinstance(value, str) and value:
            raise _unsupported("not supported by this server (no insertion mode)")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n", 1)
        if value is not None and value != n:
            raise PydanticCustomError("unsupported_value", "only supported when equal to n ({n})", {"n": n})
        return value

    def prompts(self) -> list[str | list[int]]:
        """Every prompt, in order: one for a string or a flat list of token ids, else one per element."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt[0], str | list):
            return list(prompt)
        return [list(prompt)]

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Whether the echoed prompt's tokens get log probabilities (echo with logprobs)."""
        return self.echo and self.logprobs is not None

    def effective_max_tokens(self) -> int | None:
        """The completion-token budget (16 by default; None means the server default)."""
        return self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_tokens"

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    @property
    def top_logprobs_count(self) -> int:
        return self.logprobs or 0
