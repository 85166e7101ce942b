"""From an HTTP request to a GenerationRun: parse, validate, apply limits and defaults.

Everything a client can get wrong is caught here and answered with a 400 naming the
parameter, before any slot is taken.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from nanochat_gateway.api import errors
from nanochat_gateway.api.generation import GenerationRun
from nanochat_gateway.api.sse import stream_generation
from nanochat_gateway.engine.request import SamplingParams
from nanochat_gateway.plugins import API_KEY_NAME, GENERATION, REQUEST_ID, GenerationContext
from nanochat_gateway.state import STATE, GatewayState

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def gateway_state(request: web.Request) -> GatewayState:
    return request.app[STATE]


def require_ready(state: GatewayState) -> None:
    retry = state.settings.server.retry_after_s
    if state.draining:
        raise errors.unavailable("The server is shutting down", code="shutting_down", retry_after_s=retry)
    if not state.is_ready:
        _, reason = state.readiness()
        raise errors.unavailable(f"The model is not ready ({reason})", code="model_not_ready", retry_after_s=retry)


async def read_body(request: web.Request, model: type[M]) -> M:
    try:
        data = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.invalid_request(f"The request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise errors.invalid_request("The request body must be a JSON object", code="invalid_json")
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise errors.validation_error_to_api_error(exc) from None
    if unknown := body.unknown_fields():
        log.debug("ignoring unknown request fields: %s", ", ".join(unknown))
    return body


def sampling_params(body, state: GatewayState, *, logprobs: bool, top_logprobs: int) -> SamplingParams:
    engine = state.settings.engine
    vocab = state.model.config.vocab_size
    bias = body.token_logit_bias()
    for token_id in bias:
        if token_id >= vocab:
            raise errors.invalid_request(f"logit_bias: token id {token_id} is outside the vocabulary (size {vocab})",
                                         param="logit_bias", code="invalid_value")
    return SamplingParams(
        temperature=engine.temperature if body.temperature is None else body.temperature,
        top_k=engine.top_k if body.top_k is None else body.top_k,
        top_p=engine.top_p if body.top_p is None else body.top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def check_limits(body, state: GatewayState, *, top_logprobs: int) -> None:
    limits = state.settings.limits
    # Each choice takes a KV slot of one executor, so n can never exceed the batch size.
    max_n = min(limits.max_n, state.settings.engine.max_batch_size)
    if body.n > max_n:
        raise errors.invalid_request(f"n must be at most {max_n} on this server", param="n", code="invalid_value")
    if len(body.stop_sequences()) > limits.max_stop_sequences:
        raise errors.invalid_request(f"at most {limits.max_stop_sequences} stop sequences are allowed",
                                     param="stop", code="invalid_value")
    if top_logprobs > limits.max_top_logprobs:
        raise errors.invalid_request(f"top_logprobs must be at most {limits.max_top_logprobs}",
                                     param="top_logprobs", code="invalid_value")
    max_tokens = body.effective_max_tokens()
    if max_tokens is not None and max_tokens > limits.max_tokens_limit:
        param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        raise errors.invalid_request(f"{param} must be at most {limits.max_tokens_limit} on this server",
                                     param=param, code="invalid_value")


def fit_max_tokens(requested: int | None, prompt_len: int, state: GatewayState, prompt_param: str) -> int:
    """max_tokens after the context check: never truncate the prompt, never overflow."""
    context = state.router.executors[0].max_seq_len
    room = context - prompt_len
    if room < 1:
        raise errors.invalid_request(
            f"This model's context is {context} tokens and the prompt has {prompt_len} tokens, which leaves "
            "no room for a completion. Shorten the prompt.",
            param=prompt_param, code="context_length_exceeded",
        )
    if requested is None:
        return min(state.settings.engine.max_tokens, room)  # the default shrinks to fit; an explicit value never does
    if requested > room:
        raise errors.invalid_request(
            f"This model's context is {context} tokens; the prompt has {prompt_len} tokens and "
            f"{requested} more were requested. Shorten the prompt or lower max_tokens.",
            param=prompt_param, code="context_length_exceeded",
        )
    return requested


def new_context(request: web.Request, state: GatewayState, *, endpoint: str, body, prompt_ids: list[int],
                max_tokens: int, sampling: SamplingParams) -> GenerationContext:
    return GenerationContext(
        request=request, request_id=request[REQUEST_ID], endpoint=endpoint, model=state.model_id, body=body,
        prompt_ids=prompt_ids, max_tokens=max_tokens, n=body.n, stop=body.stop_sequences(), sampling=sampling,
        stream=body.stream, key_name=request.get(API_KEY_NAME),
    )


def new_run(state: GatewayState, ctx: GenerationContext, stop_token_ids: frozenset[int]) -> GenerationRun:
    server = state.settings.server
    return GenerationRun(
        ctx, router=state.router, plugins=state.plugins, tokenizer=state.model.tokenizer,
        stop_token_ids=stop_token_ids, tool_calls=state.settings.model.tool_calls,
        request_timeout_s=server.request_timeout_s, queue_timeout_s=server.queue_timeout_s,
        retry_after_s=server.retry_after_s,
    )


def response_ids(prefix: str) -> tuple[str, int]:
    """A response id and its creation time (unix seconds), shared by every chunk."""
    return f"{prefix}-{uuid.uuid4().hex}", int(time.time())


def system_fingerprint(state: GatewayState) -> str:
    model = state.model
    return f"fp_{model.generation}_{model.files.step}_{str(model.dtype).removeprefix('torch.')}"


async def serve_generation(
    request: web.Request, state: GatewayState, ctx: GenerationContext, stop_token_ids: frozenset[int],
    chunks: Callable[[GenerationRun], AsyncIterator[dict]],
    complete: Callable[[GenerationRun], Awaitable[web.Response]],
) -> web.StreamResponse:
    """Queue the generation, then answer as SSE chunks or one JSON body; tracked for draining."""
    request[GENERATION] = ctx
    run = new_run(state, ctx, stop_token_ids)
    await run.start()  # may raise APIError (plugin rejection, overload) before anything is sent
    state.active_generations.add(run)
    try:
        if ctx.stream:
            return await stream_generation(request, run, chunks(run), state.settings.server.sse_keepalive_s)
        return await complete(run)
    finally:
        state.active_generations.discard(run)
