"""POST /v1/chat/completions: streaming (SSE) and not."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from nanochat_gateway.api import errors, prepare
from nanochat_gateway.api.generation import GenerationRun
from nanochat_gateway.api.logprobs import TokenText, chat_logprobs
from nanochat_gateway.api.models import check_model
from nanochat_gateway.api.schemas import ChatCompletionRequest
from nanochat_gateway.model.chat_template import ConversationError, render_for_completion
from nanochat_gateway.state import GatewayState


def _messages(body: ChatCompletionRequest) -> list[dict]:
    """OpenAI messages as nanochat turns: developer counts as system, content parts are joined."""
    turns = []
    for i, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        if role not in ("system", "user", "assistant"):
            raise errors.invalid_request(f"messages[{i}]: the role '{message.role}' is not supported by this model",
                                         param=f"messages.{i}.role", code="unsupported_value")
        turns.append({"role": role, "content": message.text()})
    return turns


def _check_sizes(turns: list[dict], state: GatewayState) -> None:
    limits = state.settings.limits
    if len(turns) > limits.max_messages:
        raise errors.invalid_request(f"at most {limits.max_messages} messages are allowed", param="messages")
    total = 0
    for i, turn in enumerate(turns):
        size = len(turn["content"])
        total += size
        if size > limits.max_message_chars:
            raise errors.invalid_request(f"messages[{i}] is longer than {limits.max_message_chars} characters",
                                         param=f"messages.{i}.content")
    if total > limits.max_total_chars:
        raise errors.invalid_request(f"the conversation is longer than {limits.max_total_chars} characters",
                                     param="messages")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = prepare.gateway_state(request)
    body = await prepare.read_body(request, ChatCompletionRequest)
    prepare.require_ready(state)
    check_model(state, body.model)
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else 0
    prepare.check_limits(body, state, top_logprobs=top_logprobs)
    turns = _messages(body)
    _check_sizes(turns, state)
    tokenizer = state.model.tokenizer
    try:
        prompt_ids = render_for_completion(
            tokenizer, turns, default_system_prompt=state.settings.model.default_system_prompt or None
        )
    except ConversationError as exc:
        raise errors.invalid_request(exc.message, param=exc.param.replace("[", ".").replace("]", ""),
                                     code="invalid_conversation") from None
    max_tokens = prepare.fit_max_tokens(body.effective_max_tokens(), len(prompt_ids), state, "messages")
    sampling = prepare.sampling_params(body, state, logprobs=body.logprobs, top_logprobs=top_logprobs)
    ctx = prepare.new_context(request, state, endpoint="chat.completions", body=body, prompt_ids=prompt_ids,
                              max_tokens=max_tokens, sampling=sampling)
    return await prepare.serve_generation(
        request, state, ctx, frozenset({tokenizer.assistant_end, tokenizer.bos_id}),
        chunks=lambda run: _chunks(state, run, body), complete=lambda run: _complete(state, run, body),
    )


async def _complete(state: GatewayState, run: GenerationRun, body: ChatCompletionRequest) -> web.Response:
    n = run.ctx.n
    texts: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list[dict]] = [[] for _ in range(n)]
    token_text = TokenText(state.model.tokenizer)
    async with run.reporting():
        async for step in run.outputs():
            for out in step:
                texts[out.index].append(out.text)
                if body.logprobs and out.logprobs:
                    logprobs[out.index] += chat_logprobs(out.logprobs, token_text)
    completion_id, created = prepare.response_ids("chatcmpl")
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "".join(texts[i]), "refusal": None},
            "logprobs": {"content": logprobs[i], "refusal": None} if body.logprobs else None,
            "finish_reason": run.finish_reasons[i],
        }
        for i in range(n)
    ]
    return web.json_response({
        "id": completion_id, "object": "chat.completion", "created": created, "model": state.model_id,
        "system_fingerprint": prepare.system_fingerprint(state), "choices": choices, "usage": run.usage(),
    })


async def _chunks(state: GatewayState, run: GenerationRun, body: ChatCompletionRequest) -> AsyncIterator[dict]:
    """The stream's chunks: every choice's role, then content deltas, finish reasons and usage."""
    completion_id, created = prepare.response_ids("chatcmpl")
    fingerprint = prepare.system_fingerprint(state)
    include_usage = body.include_usage
    token_text = TokenText(state.model.tokenizer)

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                   "model": state.model_id, "system_fingerprint": fingerprint, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return payload

    # Every choice appears in the first chunk, as the SDK's stream helpers expect.
    yield chunk([
        {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        for i in range(run.ctx.n)
    ])
    async for step in run.outputs():
        for out in step:
            lp = chat_logprobs(out.logprobs, token_text) if body.logprobs and out.logprobs else None
            if out.text or lp:
                yield chunk([{
                    "index": out.index, "delta": {"content": out.text},
                    "logprobs": {"content": lp, "refusal": None} if lp else None, "finish_reason": None,
                }])
            if out.finish_reason:
                yield chunk([
                    {"index": out.index, "delta": {}, "logprobs": None, "finish_reason": out.finish_reason}
                ])
    if include_usage:
        yield chunk([], run.usage())
