"""POST /v1/completions: legacy text completions for base models, streamed or not.

A string prompt is encoded after <|bos|>, as nanochat's base models saw every document
start; a token-id prompt is used exactly as given (api/prompts.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator

from aiohttp import web

from nanochat_gateway.api.bodies import json_response
from nanochat_gateway.api.generation import ChoiceTotal, GenerationRun
from nanochat_gateway.api.logprobs import CompletionLogprobsBuilder, TokenText
from nanochat_gateway.api.prepare import prepare_run
from nanochat_gateway.api.schemas import Completion, CompletionChoice, CompletionRequest, Usage, dump_chunk
from nanochat_gateway.api.sse import stream_events


async def completions(request: web.Request) -> web.StreamResponse:
    run, body = await prepare_run(request, CompletionRequest)
    if body.stream:
        return await stream_events(request, run, _chunks(run, body))
    return json_response(_completion(run, body, await run.collect()))


def _echo_text(run: GenerationRun, body: CompletionRequest) -> str:
    prompt = body.single_prompt()
    return prompt if isinstance(prompt, str) else run.tokenizer.decode(run.ctx.prompt_ids)


def _echo_ids(run: GenerationRun, body: CompletionRequest) -> list[int]:
    """The echoed prompt's tokens: not the <|bos|> put before a text prompt, which the echo omits."""
    ids = run.ctx.prompt_ids
    return ids[1:] if isinstance(body.single_prompt(), str) else ids


def _completion(run: GenerationRun, body: CompletionRequest, totals: list[ChoiceTotal]) -> Completion:
    echo = _echo_text(run, body) if body.echo else ""
    token_text = TokenText(run.tokenizer)
    choices = []
    for i, total in enumerate(totals):
        logprobs = None
        if body.logprobs is not None:
            echoed = _echo_ids(run, body) if body.echo else None
            logprobs = CompletionLogprobsBuilder(token_text).block(total.logprobs, echoed)
        choices.append(CompletionChoice(
            text=echo + total.text, index=i, logprobs=logprobs, finish_reason=total.finish_reason,
        ))
    return Completion(
        id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=run.ctx.model,
        system_fingerprint=run.system_fingerprint, choices=choices, usage=run.usage(),
    )


async def _chunks(run: GenerationRun, body: CompletionRequest) -> AsyncGenerator[str, None]:
    """The stream's events: the echoed prompt (if asked), text deltas with finish reasons, usage."""
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())  # the same on every event
    include_usage = body.include_usage
    token_text = TokenText(run.tokenizer)
    builders = [CompletionLogprobsBuilder(token_text) for _ in range(run.ctx.n)]

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return dump_chunk(Completion(
            id=completion_id, created=created, model=run.ctx.model,
            system_fingerprint=run.system_fingerprint, choices=choices, usage=usage,
        ), include_usage=include_usage)

    if body.echo:
        echo, echo_ids = _echo_text(run, body), _echo_ids(run, body)
        yield chunk([
            CompletionChoice(
                text=echo, index=i, finish_reason=None,
                logprobs=builders[i].block([], echo_ids) if body.logprobs is not None else None,
            )
            for i in range(run.ctx.n)
        ])
    async for step in run.outputs():
        for out in step:
            logprobs = None
            if body.logprobs is not None and out.logprobs:
                logprobs = builders[out.index].block(out.logprobs)
            if out.text or logprobs or out.finish_reason:
                yield chunk([CompletionChoice(
                    text=out.text, index=out.index, logprobs=logprobs, finish_reason=out.finish_reason,
                )])
    if include_usage:
        yield chunk([], run.usage())
