"""Request objects for structured output: ``response_format``, function ``tools`` and the
tool calls and results that come back in a conversation.

- ``response_format``: ``{"type": "text"}``, ``{"type": "json_object"}``, or
  ``{"type": "json_schema", "json_schema": {"name", "description"?, "schema"?, "strict"?}}``.
- ``tools``: ``{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}``;
  ``tool_choice``: ``"none"``, ``"auto"``, ``"required"`` or ``{"type": "function", "function": {"name"}}``.
- An assistant message may carry ``tool_calls``; a ``tool`` message answers one by ``tool_call_id``.

These models only check the shapes. Whether a schema can be enforced is known once it is
compiled, and which tool choices this server honours is decided in api/structured.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, StringConstraints, Tag

from nanochat_gateway.api.schemas.base import RequestModel

# OpenAI's rule for the names of response formats and functions.
FormatName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class TextFormat(RequestModel):
    """Plain text, the default."""

    type: Literal["text"]


class JsonObjectFormat(RequestModel):
    """JSON mode: the reply is one JSON object."""

    type: Literal["json_object"]


class JsonSchemaSpec(RequestModel):
    """A named JSON schema; without ``schema`` any JSON value is allowed."""

    name: FormatName
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None  # accepted; the schema is always enforced in full


class JsonSchemaFormat(RequestModel):
    """Structured output: the reply validates against ``json_schema.schema``."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


def _format_class(value: Any) -> str | None:
    # Class names as the union's tags: the error path then drops them (api/errors.py), so a
    # missing json_schema is reported at "response_format.json_schema", not under a "json_schema" tag.
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _FORMAT_CLASSES.get(kind) if isinstance(kind, str) else None


_FORMAT_CLASSES = {"text": "TextFormat", "json_object": "JsonObjectFormat", "json_schema": "JsonSchemaFormat"}

ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("TextFormat")]
    | Annotated[JsonObjectFormat, Tag("JsonObjectFormat")]
    | Annotated[JsonSchemaFormat, Tag("JsonSchemaFormat")],
    Discriminator(
        _format_class, custom_error_type="invalid_value",
        custom_error_message="type must be 'text', 'json_object' or 'json_schema'",
    ),
]


class FunctionDefinition(RequestModel):
    """A function the model may call; ``parameters`` is the JSON schema of its arguments object."""

    name: FormatName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # accepted; the arguments schema is always enforced in full


class Tool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionRef(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    """``tool_choice`` naming the one function the reply must call."""

    type: Literal["function"]
    function: FunctionRef


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(RequestModel):
    name: str
    arguments: str  # JSON text, as the model wrote it


class MessageToolCall(RequestModel):
    """A call made by an earlier assistant message, sent back with the conversation."""

    id: str
    type: Literal["function"]
    function: CalledFunction
