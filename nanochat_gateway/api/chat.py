"""POST /v1/chat/completions: streamed as SSE chunks, or answered as one JSON body."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator

from aiohttp import web

from nanochat_gateway.api.bodies import json_response
from nanochat_gateway.api.generation import ChoiceTotal, GenerationRun
from nanochat_gateway.api.logprobs import TokenText, chat_logprobs
from nanochat_gateway.api.prepare import prepare_run
from nanochat_gateway.api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    Usage,
    dump_chunk,
)
from nanochat_gateway.api.sse import stream_events
from nanochat_gateway.api.structured import ToolCallReply


async def chat_completions(request: web.Request) -> web.StreamResponse:
    run, body = await prepare_run(request, ChatCompletionRequest)
    if body.stream:
        return await stream_events(request, run, _chunks(run, body))
    return json_response(_completion(run, body, await run.collect()))


def _message(run: GenerationRun, total: ChoiceTotal) -> AssistantMessage:
    if run.forced_call is not None:
        return ToolCallReply(run.forced_call).message(total.text, total.finish_reason)
    return AssistantMessage(content=total.text)


def _completion(run: GenerationRun, body: ChatCompletionRequest, totals: list[ChoiceTotal]) -> ChatCompletion:
    token_text = TokenText(run.tokenizer)
    choices = [
        ChatChoice(
            index=i,
            message=_message(run, total),
            logprobs=chat_logprobs(total.logprobs, token_text) if body.logprobs else None,
            finish_reason=total.finish_reason,
        )
        for i, total in enumerate(totals)
    ]
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()),
        model=run.ctx.model, system_fingerprint=run.system_fingerprint, choices=choices, usage=run.usage(),
    )


async def _chunks(run: GenerationRun, body: ChatCompletionRequest) -> AsyncGenerator[str, None]:
    """The stream's events: every choice's role, then content deltas, finish reasons and usage."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())  # the same on every chunk
    include_usage = body.include_usage
    token_text = TokenText(run.tokenizer)

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return dump_chunk(ChatCompletionChunk(
            id=completion_id, created=created, model=run.ctx.model,
            system_fingerprint=run.system_fingerprint, choices=choices, usage=usage,
        ), include_usage=include_usage)

    # A tool call's choices build their deltas from the call text; the content stays null.
    calls = [ToolCallReply(run.forced_call) for _ in range(run.ctx.n)] if run.forced_call else None
    # Every choice appears in the first chunk, as the SDK's stream helpers expect.
    yield chunk([
        ChunkChoice(index=i, delta=Delta(role="assistant", content=None if calls else ""),
                                    logprobs=None, finish_reason=None)
        for i in range(run.ctx.choices)
    ])
    async for step in run.outputs():
        for out in step:
            logprobs = chat_logprobs(out.logprobs, token_text) if body.logprobs and out.logprobs else None
            if calls:
                deltas = calls[out.index].deltas(out.text, out.finish_reason) or ([Delta()] if logprobs else [])
            else:
                deltas = [Delta(content=out.text)] if out.text or logprobs else []
            for delta in deltas:
                yield chunk([ChunkChoice(index=out.index, delta=delta, logprobs=logprobs, finish_reason=None)])
                logprobs = None  # a step's logprobs go with its first delta
            if out.finish_reason:
                yield chunk([ChunkChoice(
                    index=out.index, delta=Delta(), logprobs=None,
                    finish_reason=out.finish_reason,
                )])
    if include_usage:
        yield chunk([], run.usage())
