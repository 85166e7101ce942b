"""OpenAPI 3.1 description of the gateway, generated from the pydantic models in ``schemas``.

OpenAPI 3.1 uses JSON Schema 2020-12, so pydantic's output is embedded as is; every model lands
in ``components/schemas`` under its class name. Request bodies use the validation schema (what is
accepted), responses the serialisation schema (what is sent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from nanochat_gateway import __version__
from nanochat_gateway.api import schemas

__all__ = ["ServerLimits", "build_openapi"]

_REF = "#/components/schemas/{model}"

_REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    schemas.ChatCompletionRequest,
    schemas.CompletionRequest,
    schemas.TokenizeRequest,
    schemas.DetokenizeRequest,
)
_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    schemas.ChatCompletion,
    schemas.ChatCompletionChunk,
    schemas.Completion,
    schemas.Model,
    schemas.ModelList,
    schemas.ErrorResponse,
    schemas.TokenizeResponse,
    schemas.DetokenizeResponse,
    schemas.TokenizerInfo,
)


@dataclass(frozen=True)
class ServerLimits:
    """The bounds this server enforces beyond the OpenAI schema ([limits], the batch size)."""

    max_n: int
    max_tokens: int
    max_top_logprobs: int
    max_stop_sequences: int
    max_prompts: int
    max_messages: int

# Error statuses each kind of route can answer with, and what they mean here.
_ERROR_DESCRIPTIONS = {
    "400": "Invalid request: `param` names the offending field.",
    "401": "Missing or wrong API key (only when API keys are configured).",
    "404": "Unknown model (`code: model_not_found`).",
    "413": "Request body too large.",
    "415": "Content-Encoding other than identity, gzip or deflate.",
    "429": "Rate limit exceeded; see Retry-After.",
    "500": "Internal server error.",
    "503": "Overloaded, still loading, or shutting down; see Retry-After.",
    "504": "The request timed out in the queue or during generation.",
}
_GENERATION_ERRORS = ("400", "401", "404", "413", "415", "429", "500", "503", "504")
_MODEL_ERRORS = ("401", "404", "500")
_RETRYABLE = ("429", "503")


def _component_schemas() -> tuple[dict[str, Any], dict[str, str]]:
    """All model schemas under their component names, plus a class-name -> $ref map."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in _REQUEST_MODELS]
    models += [(m, "serialization") for m in _RESPONSE_MODELS]
    refs_by_key, top = models_json_schema(models, ref_template=_REF)
    refs = {model.__name__: ref["$ref"] for (model, _mode), ref in refs_by_key.items()}
    return top.get("$defs", {}), refs


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ref}}}


def _error_responses(codes: tuple[str, ...]) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/Error{code}"} for code in codes}


def _ok(description: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
        "content": content,
    }


def _generation_operation(
    op_id: str,
    summary: str,
    request_ref: str,
    response_ref: str,
    chunk_ref: str,
    examples: dict[str, Any] | None = None,
) -> dict[str, Any]:
    request_content = _json(request_ref)
    if examples:
        request_content["application/json"]["examples"] = examples
    return {
        "operationId": op_id,
        "summary": summary,
        "requestBody": {"required": True, "content": request_content},
        "responses": {
            "200": _ok(
                "The completion. With `stream: true`, a `text/event-stream` of `data: <chunk JSON>` events "
                "ending with `data: [DONE]`; keep-alives are `:` comments. An error after the stream has "
                'started arrives as a `data: {"error": {...}}` event.',
                {**_json(response_ref), "text/event-stream": {"schema": _sse_event(chunk_ref)}},
            ),
            **_error_responses(_GENERATION_ERRORS),
        },
    }


def _sse_event(chunk_ref: str) -> dict[str, Any]:
    """One server-sent event: its ``data`` is a chunk, an error envelope, or the final ``[DONE]``.

    For text/event-stream the schema describes each parsed event (``data``, ``event``, ``id``),
    as OpenAPI 3.2 and schemathesis read it; contentSchema describes the JSON inside ``data``.
    """
    payload = {"anyOf": [{"$ref": chunk_ref}, {"$ref": _REF.format(model="ErrorResponse")}]}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "data": {
                "anyOf": [
                    {"const": "[DONE]", "description": "The last event of every stream."},
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
                ]
            },
        },
    }


def _request_examples(model_id: str | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Chat and completion request examples, streamed and not (only when the served model is known)."""
    if model_id is None:
        return None, None
    chat = {"model": model_id, "messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": 8}
    text = {"model": model_id, "prompt": "The capital of France is", "max_tokens": 8}
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    return (
        {"basic": {"value": chat}, "stream": {"value": {**chat, **stream, "logprobs": True, "top_logprobs": 2}}},
        {"basic": {"value": text}, "stream": {"value": {**text, **stream, "echo": True, "logprobs": 2}}},
    )


def _tokenizer_paths(refs: dict[str, str]) -> dict[str, Any]:
    """POST /tokenize, POST /detokenize and GET /tokenizer_info (vLLM's shapes)."""

    def post(op_id: str, summary: str, request: str, response: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op_id,
                "summary": summary,
                "requestBody": {"required": True, "content": _json(refs[request])},
                "responses": {"200": _ok(summary + ".", _json(refs[response])),
                              **_error_responses(("400", "401", "404", "413", "500", "503"))},
            }
        }

    return {
        "/tokenize": post("tokenize", "Token ids of a prompt or of a rendered conversation",
                          "TokenizeRequest", "TokenizeResponse"),
        "/detokenize": post("detokenize", "Text of token ids", "DetokenizeRequest", "DetokenizeResponse"),
        "/tokenizer_info": {
            "get": {
                "operationId": "tokenizerInfo",
                "summary": "The tokenizer's special tokens, context and chat template",
                "responses": {"200": _ok("The tokenizer.", _json(refs["TokenizerInfo"])),
                              **_error_responses(("401", "500", "503"))},
            }
        },
    }


def _plain_operation(
    op_id: str, summary: str, description: str, content: dict[str, Any], errors: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "operationId": op_id,
        "summary": summary,
        "security": [],
        "responses": {"200": _ok(description, content), **_error_responses(errors)},
    }


def _pin_model(components: dict[str, Any], model_id: str) -> None:
    # A gateway serves exactly one model, so the doc can say which (fuzzers then send the right one).
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        prop = components[name]["properties"]["model"]
        prop["enum"] = [model_id]
        prop["examples"] = [model_id]


def _branches(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """A property's schema and the alternatives of its anyOf (where pydantic puts nullable types)."""
    return [prop, *prop.get("anyOf", [])]


def _cap_integer(prop: dict[str, Any], maximum: int) -> None:
    for branch in _branches(prop):
        types = branch.get("type")
        if types == "integer" or (isinstance(types, list) and "integer" in types):
            branch["maximum"] = min(branch.get("maximum", maximum), maximum)


def _cap_list(prop: dict[str, Any], max_items: int, *, of: tuple[str, ...] = ("string", "array")) -> None:
    """Bound the arrays among ``prop``'s forms whose items are of a type in ``of``."""
    for branch in _branches(prop):
        if branch.get("type") == "array" and branch.get("items", {}).get("type") in of:
            branch["maxItems"] = min(branch.get("maxItems", max_items), max_items)


def _pin_limits(components: dict[str, Any], limits: ServerLimits) -> None:
    """What the server refuses beyond the OpenAI schema, so the document promises nothing it refuses."""
    chat = components["ChatCompletionRequest"]["properties"]
    text = components["CompletionRequest"]["properties"]
    for props in (chat, text):
        _cap_integer(props["n"], limits.max_n)
        _cap_integer(props["max_tokens"], limits.max_tokens)
        _cap_list(props["stop"], limits.max_stop_sequences, of=("string",))
        if limits.max_stop_sequences == 0:
            props["stop"] = {"type": "null", "description": "Not allowed on this server."}
    _cap_integer(chat["max_completion_tokens"], limits.max_tokens)
    _cap_integer(chat["top_logprobs"], limits.max_top_logprobs)
    _cap_integer(text["logprobs"], limits.max_top_logprobs)
    _cap_list(text["prompt"], limits.max_prompts)  # batches, never the tokens of one prompt
    for props in (chat, components["TokenizeRequest"]["properties"]):
        messages = props["messages"]
        for branch in _branches(messages):
            if branch.get("type") == "array":
                branch["maxItems"] = limits.max_messages


def build_openapi(
    model_id: str | None = None,
    *,
    title: str = "nanochat-gateway",
    version: str = __version__,
    served_paths: set[str] | None = None,
    limits: ServerLimits | None = None,
    plugin_paths: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document; with ``model_id`` the ``model`` fields are pinned to that id,
    and with ``limits`` the bounds are the server's own.

    With ``served_paths`` only those of the gateway's own paths are described, so a fuzzer is
    never promised a route that answers 404. ``plugin_paths`` are the path items plugins
    describe for the routes they add (Plugin.openapi_paths).
    """
    components, refs = _component_schemas()  # fresh dicts on every call, so safe to edit
    if model_id is not None:
        _pin_model(components, model_id)
    if limits is not None:
        _pin_limits(components, limits)
    model_param: dict[str, Any] = {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    if model_id is not None:
        model_param["schema"]["examples"] = [model_id]
    any_object = {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}
    chat_examples, completion_examples = _request_examples(model_id)

    paths: dict[str, Any] = {
        "/v1/chat/completions": {
            "post": _generation_operation(
                "createChatCompletion",
                "Create a chat completion (OpenAI-compatible)",
                refs["ChatCompletionRequest"],
                refs["ChatCompletion"],
                refs["ChatCompletionChunk"],
                chat_examples,
            )
        },
        "/v1/completions": {
            "post": _generation_operation(
                "createCompletion",
                "Create a text completion (legacy OpenAI API)",
                refs["CompletionRequest"],
                refs["Completion"],
                refs["Completion"],
                completion_examples,
            )
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "List the served model",
                "responses": {
                    "200": _ok("The served models.", _json(refs["ModelList"])),
                    **_error_responses(("401", "500")),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "retrieveModel",
                "summary": "Describe one model",
                "parameters": [model_param],
                "responses": {
                    "200": _ok("The model.", _json(refs["Model"])),
                    **_error_responses(_MODEL_ERRORS),
                },
            }
        },
        "/health": {
            "get": _plain_operation(
                "health",
                "Liveness",
                "The process is up (says nothing about the model).",
                any_object,
                ("500",),
            )
        },
        "/ready": {
            "get": _plain_operation(
                "ready", "Readiness", "The model is loaded and requests are accepted.", any_object, ("503",)
            )
        },
        "/stats": {
            "get": {
                **_plain_operation(
                    "stats", "Engine statistics", "Queue, batch and throughput figures as JSON.", any_object,
                    ("401", "500"),
                ),
                "security": [{"bearerAuth": []}, {}],  # a key, when API keys are configured
            }
        },
        **_tokenizer_paths(refs),
    }

    if served_paths is not None:
        paths = {path: item for path, item in paths.items() if path in served_paths}
    paths.update(plugin_paths or {})

    retry_after = {"$ref": "#/components/headers/RetryAfter"}
    responses = {
        f"Error{code}": {
            "description": description,
            "headers": {
                "x-request-id": {"$ref": "#/components/headers/RequestId"},
                **({"Retry-After": retry_after} if code in _RETRYABLE else {}),
            },
            "content": _json(refs["ErrorResponse"]),
        }
        for code, description in _ERROR_DESCRIPTIONS.items()
    }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "OpenAI-compatible API for nanochat checkpoints. Unknown request fields are accepted and ignored.",
        },
        "paths": paths,
        # Either a bearer key or nothing: API keys are optional in the server configuration.
        "security": [{"bearerAuth": []}, {}],
        "components": {
            "schemas": components,
            "responses": responses,
            "headers": {
                "RequestId": {
                    "description": "Identifier of this request, also in the logs.",
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 0},
                },
            },
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
