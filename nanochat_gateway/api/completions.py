"""POST /v1/completions: legacy text completions for base models, streamed or not.

A string prompt is encoded after <|bos|>, as nanochat's base models saw every document
start; a token-id prompt is used exactly as given (api/prompts.py). Several prompts in one
request give n choices each, numbered prompt by prompt. With ``echo`` each choice starts
with its prompt, and with ``echo`` and ``logprobs`` the prompt's tokens are scored too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from aiohttp import web

from nanochat_gateway.api.bodies import json_response
from nanochat_gateway.api.generation import ChoiceTotal, GenerationRun
from nanochat_gateway.api.logprobs import CompletionLogprobsBuilder, TokenText
from nanochat_gateway.api.prepare import prepare_run
from nanochat_gateway.api.schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
    dump_chunk,
)
from nanochat_gateway.api.sse import stream_events
from nanochat_gateway.engine.request import TokenLogprob


async def completions(request: web.Request) -> web.StreamResponse:
    run, body = await prepare_run(request, CompletionRequest)
    if body.stream:
        return await stream_events(request, run, _chunks(run, body))
    return json_response(_completion(run, body, await run.collect()))


@dataclass
class EchoedPrompt:
    """What ``echo`` puts in front of a choice: its prompt's text, tokens and their scores."""

    text: str
    token_ids: list[int]
    scores: list[TokenLogprob | None] | None  # one per token; None when logprobs were not asked for


def echoed_prompt(run: GenerationRun, body: CompletionRequest, prompt: int) -> EchoedPrompt:
    """A string prompt is echoed as sent, without the <|bos|> put before it (so its first token
    is scored given that <|bos|>); token ids are decoded, and their first token has no score."""
    sent = body.prompts()[prompt]
    ids = run.ctx.prompts[prompt]
    entries = run.prompt_logprobs[prompt]
    scores: list[TokenLogprob | None] | None = None
    if isinstance(sent, str):
        if entries is not None:
            scores = list(entries)
        return EchoedPrompt(sent, ids[1:], scores)
    if entries is not None:
        scores = [None, *entries]
    return EchoedPrompt(run.tokenizer.decode(ids), ids, scores)


def _completion(run: GenerationRun, body: CompletionRequest, totals: list[ChoiceTotal]) -> Completion:
    token_text = TokenText(run.tokenizer)
    choices = []
    for i, total in enumerate(totals):
        echo = echoed_prompt(run, body, i // run.ctx.n) if body.echo else None
        logprobs = None
        if body.logprobs is not None:
            builder = CompletionLogprobsBuilder(token_text)
            logprobs = (builder.block(total.logprobs, echo.token_ids, echo.scores) if echo
                        else builder.block(total.logprobs))
        choices.append(CompletionChoice(
            text=(echo.text if echo else "") + total.text, index=i, logprobs=logprobs,
            finish_reason=total.finish_reason,
        ))
    return Completion(
        id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=run.ctx.model,
        system_fingerprint=run.system_fingerprint, choices=choices, usage=run.usage(),
    )


async def _chunks(run: GenerationRun, body: CompletionRequest) -> AsyncGenerator[str, None]:
    """The stream's events: per choice, its echoed prompt (if asked) just before its first text,
    then text deltas with finish reasons; usage last."""
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())  # the same on every event
    include_usage = body.include_usage
    token_text = TokenText(run.tokenizer)
    builders = [CompletionLogprobsBuilder(token_text) for _ in range(run.ctx.choices)]
    # The echo waits for the choice's first output: by then the prompt's scores have arrived.
    unechoed = set(range(run.ctx.choices)) if body.echo else set()

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return dump_chunk(Completion(
            id=completion_id, created=created, model=run.ctx.model,
            system_fingerprint=run.system_fingerprint, choices=choices, usage=usage,
        ), include_usage=include_usage)

    async for step in run.outputs():
        for out in step:
            if out.index in unechoed:
                unechoed.discard(out.index)
                echo = echoed_prompt(run, body, out.index // run.ctx.n)
                logprobs: CompletionLogprobs | None = None
                if body.logprobs is not None:
                    logprobs = builders[out.index].block([], echo.token_ids, echo.scores)
                yield chunk([CompletionChoice(text=echo.text, index=out.index, logprobs=logprobs,
                                              finish_reason=None)])
            logprobs = None
            if body.logprobs is not None and out.logprobs:
                logprobs = builders[out.index].block(out.logprobs)
            if out.text or logprobs or out.finish_reason:
                yield chunk([CompletionChoice(
                    text=out.text, index=out.index, logprobs=logprobs, finish_reason=out.finish_reason,
                )])
    if include_usage:
        yield chunk([], run.usage())
