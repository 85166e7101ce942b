"""POST /v1/completions: legacy text completions for base models, streaming and not.

A string prompt is encoded after <|bos|>, as nanochat's base models saw every document
start; a token-id prompt is used exactly as given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from nanochat_gateway.api import errors, prepare
from nanochat_gateway.api.generation import GenerationRun
from nanochat_gateway.api.logprobs import CompletionLogprobs, TokenText
from nanochat_gateway.api.models import check_model
from nanochat_gateway.api.schemas import CompletionRequest
from nanochat_gateway.state import GatewayState


def _prompt_ids(body: CompletionRequest, state: GatewayState) -> list[int]:
    tokenizer = state.model.tokenizer
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


async def completions(request: web.Request) -> web.StreamResponse:
    state = prepare.gateway_state(request)
    body = await prepare.read_body(request, CompletionRequest)
    prepare.require_ready(state)
    check_model(state, body.model)
    top_logprobs = body.logprobs or 0
    prepare.check_limits(body, state, top_logprobs=top_logprobs)
    prompt_ids = _prompt_ids(body, state)
    max_tokens = prepare.fit_max_tokens(body.effective_max_tokens(), len(prompt_ids), state, "prompt")
    sampling = prepare.sampling_params(body, state, logprobs=body.logprobs is not None, top_logprobs=top_logprobs)
    ctx = prepare.new_context(request, state, endpoint="completions", body=body, prompt_ids=prompt_ids,
                              max_tokens=max_tokens, sampling=sampling)
    tokenizer = state.model.tokenizer
    return await prepare.serve_generation(
        request, state, ctx, frozenset({tokenizer.bos_id, tokenizer.assistant_end}),
        chunks=lambda run: _chunks(state, run, body), complete=lambda run: _complete(state, run, body),
    )


def _echo_text(body: CompletionRequest, state: GatewayState, prompt_ids: list[int]) -> str:
    prompt = body.single_prompt()
    return prompt if isinstance(prompt, str) else state.model.tokenizer.decode(prompt_ids)


def _echo_ids(body: CompletionRequest, prompt_ids: list[int]) -> list[int]:
    """The echoed prompt's tokens: not the <|bos|> we put before a text prompt, which the echo omits."""
    return prompt_ids[1:] if isinstance(body.single_prompt(), str) else prompt_ids


async def _complete(state: GatewayState, run: GenerationRun, body: CompletionRequest) -> web.Response:
    n = run.ctx.n
    echo = _echo_text(body, state, run.ctx.prompt_ids) if body.echo else ""
    texts: list[list[str]] = [[echo] for _ in range(n)]
    token_text = TokenText(state.model.tokenizer)
    builders = [CompletionLogprobs(token_text) for _ in range(n)]
    blocks: list[list[dict]] = [[] for _ in range(n)]
    if body.logprobs is not None and body.echo:
        for i in range(n):
            blocks[i].append(builders[i].block([], _echo_ids(body, run.ctx.prompt_ids)))
    async with run.reporting():
        async for step in run.outputs():
            for out in step:
                texts[out.index].append(out.text)
                if body.logprobs is not None and out.logprobs:
                    blocks[out.index].append(builders[out.index].block(out.logprobs))
    completion_id, created = prepare.response_ids("cmpl")
    choices = [
        {"index": i, "text": "".join(texts[i]), "logprobs": _merge(blocks[i]) if body.logprobs is not None else None,
         "finish_reason": run.finish_reasons[i]}
        for i in range(n)
    ]
    return web.json_response({
        "id": completion_id, "object": "text_completion", "created": created, "model": state.model_id,
        "system_fingerprint": prepare.system_fingerprint(state), "choices": choices, "usage": run.usage(),
    })


def _merge(blocks: list[dict]) -> dict:
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for block in blocks:
        for key in merged:
            merged[key] += block[key]
    return merged


async def _chunks(state: GatewayState, run: GenerationRun, body: CompletionRequest) -> AsyncIterator[dict]:
    """The stream's events: the echoed prompt (if asked), text deltas with finish reasons, usage."""
    completion_id, created = prepare.response_ids("cmpl")
    fingerprint = prepare.system_fingerprint(state)
    include_usage = body.include_usage
    token_text = TokenText(state.model.tokenizer)
    builders = [CompletionLogprobs(token_text) for _ in range(run.ctx.n)]

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        payload = {"id": completion_id, "object": "text_completion", "created": created, "model": state.model_id,
                   "system_fingerprint": fingerprint, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return payload

    if body.echo:
        echo = _echo_text(body, state, run.ctx.prompt_ids)
        yield chunk([
            {"index": i, "text": echo, "finish_reason": None,
             "logprobs": builders[i].block([], _echo_ids(body, run.ctx.prompt_ids))
             if body.logprobs is not None else None}
            for i in range(run.ctx.n)
        ])
    async for step in run.outputs():
        for out in step:
            logprobs = None
            if body.logprobs is not None and out.logprobs:
                logprobs = builders[out.index].block(out.logprobs)
            if out.text or logprobs or out.finish_reason:
                yield chunk([{"index": out.index, "text": out.text, "logprobs": logprobs,
                              "finish_reason": out.finish_reason}])
    if include_usage:
        yield chunk([], run.usage())
