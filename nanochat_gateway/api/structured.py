"""Structured output at the HTTP edge: ``response_format`` and forced tool calls.

- ``forced_call`` reads ``tools`` and ``tool_choice``: "required" or a named function force a
  call; "none" replies in text, and so does a request without tool_choice (agent frameworks send
  their tool list with every request); an explicit "auto" is refused, because nanochat was not
  trained to decide when to call a tool.
- ``output_grammar`` compiles what the reply must follow, before the request is queued: the
  forced call, JSON mode, or the client's JSON schema. What the engine cannot enforce is a
  400 that names the field (``response_format``, ``tools.<i>.function.parameters``).
- A forced call is decoded as JSON: the arguments object of the one function, or
  ``{"name": ..., "arguments": {...}}`` when the reply chooses among several.
  ``ToolCallReply`` turns that text back into ``tool_calls``, whole or as stream deltas.
- ``ForcedCall.instructions`` tells the model about the call in the system text, and
  ``call_text`` writes an earlier call back into the conversation (api/prompts.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from nanochat_gateway.api import errors
from nanochat_gateway.api.schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    JsonObjectFormat,
    JsonSchemaFormat,
    ToolCall,
    ToolCallDelta,
)
from nanochat_gateway.engine.grammar import (
    JSON_OBJECT_SCHEMA,
    Grammar,
    GrammarCompiler,
    GrammarError,
    GrammarLimits,
    ToolFunction,
    tool_call_schema,
)
from nanochat_gateway.model.loader import LoadedModel
from nanochat_gateway.state import GatewayState


@dataclass(frozen=True, slots=True)
class ForcedCall:
    """The functions a reply must call: one named function, or a choice among several."""

    functions: tuple[ToolFunction, ...]
    descriptions: tuple[str, ...]  # each function's description ("" when none)
    indexes: tuple[int, ...]  # each function's position in the request's tools, for errors

    @property
    def named(self) -> bool:
        return len(self.functions) == 1

    def instructions(self) -> str:
        """What the system text says about the call: the functions and their argument schemas."""
        lines = []
        for function, description in zip(self.functions, self.descriptions, strict=True):
            about = f" ({description})" if description else ""
            schema = json.dumps(function.parameters or JSON_OBJECT_SCHEMA, ensure_ascii=False)
            lines.append(f"- {function.name}{about}, arguments (JSON schema): {schema}")
        if self.named:
            return f"Call the function {self.functions[0].name}, replying with its arguments as JSON.\n{lines[0]}"
        return ('Call one of these functions, replying with JSON {"name": ..., "arguments": {...}}:\n'
                + "\n".join(lines))


def forced_call(body: ChatCompletionRequest) -> ForcedCall | None:
    """The call ``tools`` and ``tool_choice`` force, or None for a text reply; 400 for what cannot be honoured."""
    tools = body.tools or []
    # Without tool_choice the tools are ignored: frameworks send them even when no call is wanted.
    choice = body.tool_choice if body.tool_choice is not None else "none"
    if choice == "none":
        return None
    if not tools:
        raise errors.invalid_request("tool_choice needs tools: send the functions in 'tools'",
                                     param="tool_choice", code="invalid_value")
    if choice == "auto":
        raise errors.invalid_request(
            "tool_choice 'auto' is not supported: this model was not trained to decide when to call a tool. "
            "Set tool_choice to 'required' or name a function (or 'none' to reply in text)",
            param="tool_choice", code="unsupported_value",
        )
    chosen = list(enumerate(tools))
    if choice != "required":
        chosen = [(i, t) for i, t in chosen if t.function.name == choice.function.name]
        if not chosen:
            raise errors.invalid_request(f"tool_choice names the function '{choice.function.name}', which is not "
                                         "in tools", param="tool_choice", code="invalid_value")
    return ForcedCall(
        functions=tuple(ToolFunction(t.function.name, t.function.parameters or {}) for _, t in chosen),
        descriptions=tuple(t.function.description or "" for _, t in chosen),
        indexes=tuple(i for i, _ in chosen),
    )


def grammar_compiler(state: GatewayState, loaded: LoadedModel) -> GrammarCompiler:
    """The served model's schema compiler, made on first use with the [limits] on schemas."""
    if state.grammars is None:
        limits = state.settings.limits
        state.grammars = GrammarCompiler(loaded.tokenizer, loaded.config.vocab_size, GrammarLimits(
            max_schema_bytes=limits.max_schema_bytes, compile_timeout_s=limits.schema_compile_timeout_s))
    return state.grammars


async def output_grammar(body: ChatCompletionRequest | CompletionRequest, forced: ForcedCall | None,
                         compiler_for: Callable[[], GrammarCompiler]) -> Grammar | None:
    """The compiled grammar the reply must follow, or None for free text; 400 naming the bad field."""
    if forced is None and not isinstance(body.response_format, JsonObjectFormat | JsonSchemaFormat):
        return None
    compiler = compiler_for()
    if forced is not None:
        for function, index in zip(forced.functions, forced.indexes, strict=True):
            # Each function's own schema first, so an error names the tool it comes from.
            await _compile(compiler, function.parameters or JSON_OBJECT_SCHEMA, f"tools.{index}.function.parameters")
        return await _compile(compiler, tool_call_schema(forced.functions), "tools")
    response_format = body.response_format
    if isinstance(response_format, JsonObjectFormat):
        return await _compile(compiler, JSON_OBJECT_SCHEMA, "response_format")
    if isinstance(response_format, JsonSchemaFormat):
        schema = response_format.json_schema.schema_
        return await _compile(compiler, {} if schema is None else schema, "response_format")
    return None


async def _compile(compiler: GrammarCompiler, schema: dict[str, object], param: str) -> Grammar:
    try:
        return await compiler.compile_async(schema)
    except GrammarError as exc:
        raise errors.invalid_request(f"{param}: {exc}", param=param, code="invalid_schema") from None


def call_text(name: str, arguments: str) -> str:
    """An earlier call as the conversation shows it: ``{"name": ..., "arguments": ...}``, the
    arguments as sent when they are JSON, else as a JSON string."""
    try:
        json.loads(arguments)
    except ValueError:
        arguments = json.dumps(arguments, ensure_ascii=False)
    return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}'


class ToolCallReply:
    """One choice's forced call: its text as generated, turned into ``tool_calls``."""

    def __init__(self, forced: ForcedCall) -> None:
        self.forced = forced
        self.call_id = f"call_{uuid.uuid4().hex[:24]}"
        self._text: list[str] = []
        self._started = False

    def _call(self, text: str, complete: bool) -> FunctionCall | None:
        """The call in ``text``; None when several functions were offered and the text is cut short."""
        if self.forced.named:
            return FunctionCall(name=self.forced.functions[0].name, arguments=text)
        if not complete:
            return None
        reply = json.loads(text)  # the grammar guarantees {"name": ..., "arguments": {...}}
        return FunctionCall(name=reply["name"], arguments=json.dumps(reply["arguments"], ensure_ascii=False))

    def message(self, text: str, finish_reason: str | None) -> AssistantMessage:
        """The non-streamed message: the call, or the raw text when it cannot be read as one."""
        call = self._call(text, finish_reason == "tool_calls")
        if call is None:
            return AssistantMessage(content=text)
        return AssistantMessage(content=None, tool_calls=[ToolCall(id=self.call_id, function=call)])

    def deltas(self, text: str, finish_reason: str | None) -> list[Delta]:
        """Stream deltas for one step's ``text``: arguments as they come for a named function;
        for a choice among functions, the whole call once it is complete."""
        if self.forced.named:
            if not text and self._started:
                return []
            first = not self._started
            self._started = True
            return [Delta(tool_calls=[ToolCallDelta(
                index=0, id=self.call_id if first else None, type="function" if first else None,
                function=FunctionCallDelta(name=self.forced.functions[0].name if first else None, arguments=text),
            )])]
        self._text.append(text)
        if finish_reason is None:
            return []
        whole = "".join(self._text)
        call = self._call(whole, finish_reason == "tool_calls")
        if call is None:
            return [Delta(content=whole)] if whole else []
        return [Delta(tool_calls=[ToolCallDelta(index=0, id=self.call_id, type="function",
                                                function=FunctionCallDelta(name=call.name, arguments=call.arguments))])]
