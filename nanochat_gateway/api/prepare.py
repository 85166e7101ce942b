"""prepare_run: from a validated request body to a queued GenerationRun, for both chat and
legacy completions.

Everything a client can get wrong is caught here, in this order, and answered with the
OpenAI error that names the parameter, before any KV slot is taken: the server is ready
and serves the named model; n, stop, top_logprobs and max_tokens are within the server's
limits; a forced tool call is one this server honours; the prompts render; each prompt plus
max_tokens fits the context; a response format or tool schema compiles. Then the plugins'
on_request hooks run and the request is queued (one engine request per prompt).
"""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web

from nanochat_gateway.api import errors
from nanochat_gateway.api.bodies import read_body
from nanochat_gateway.api.generation import GenerationRun
from nanochat_gateway.api.prompts import chat_prompt_ids, completion_prompts_ids
from nanochat_gateway.api.schemas import ChatCompletionRequest, CompletionRequest, GenerationBody
from nanochat_gateway.api.structured import forced_call, grammar_compiler, output_grammar
from nanochat_gateway.config import EngineSettings, Settings
from nanochat_gateway.engine.request import SamplingParams
from nanochat_gateway.engine.router import Router
from nanochat_gateway.model.loader import LoadedModel
from nanochat_gateway.plugins import API_KEY_NAME, GENERATION, REQUEST_ID, GenerationContext
from nanochat_gateway.state import STATE, GatewayState

# The two bodies a generation can come from.
Body = TypeVar("Body", ChatCompletionRequest, CompletionRequest)


async def prepare_run(request: web.Request, body_type: type[Body]) -> tuple[GenerationRun, Body]:
    """Read the request's body, validate it against the served model and the limits, and queue it.

    Raises APIError (400, 404, 503, or a plugin's own) before anything is sent to the client.
    """
    body = await read_body(request, body_type)
    state = request.app[STATE]
    router, loaded = serving(state, body.model)
    settings = state.settings
    check_limits(body, settings)
    tokenizer = loaded.tokenizer
    forced = None
    prompt_logprobs = None
    if isinstance(body, ChatCompletionRequest):
        forced = forced_call(body)
        prompts = [chat_prompt_ids(
            body.messages, tokenizer, settings.limits, settings.model.default_system_prompt or None,
            tool_instructions=forced.instructions() if forced else None,
            continue_final_message=body.continue_final_message, add_generation_prompt=body.add_generation_prompt,
        )]
    else:
        prompts = completion_prompts_ids(body, tokenizer, settings.limits)
        if body.wants_prompt_logprobs:
            prompt_logprobs = body.top_logprobs_count
    context = router.executors[0].max_seq_len
    longest = max(len(ids) for ids in prompts)  # one max_tokens for every prompt: the tightest fit
    ctx = GenerationContext(
        request=request, request_id=request[REQUEST_ID], endpoint=body.endpoint, model=state.model_id or "",
        body=body, prompts=prompts, max_tokens=fit_max_tokens(body, longest, context, settings.engine),
        n=body.n, stop=body.stop_sequences(), sampling=sampling_params(body, settings.engine, loaded.config.vocab_size),
        stream=body.stream, key_name=request.get(API_KEY_NAME),
    )
    grammar = await output_grammar(body, forced, lambda: grammar_compiler(state, loaded))
    request[GENERATION] = ctx
    run = GenerationRun(
        ctx, router=router, plugins=state.plugins, tokenizer=tokenizer,
        stop_token_ids=frozenset({tokenizer.assistant_end, tokenizer.bos_id}), server=settings.server,
        tool_calls=settings.model.tool_calls, system_fingerprint=system_fingerprint(loaded),
        in_flight=state.active_generations, grammar=grammar, forced_call=forced, prompt_logprobs=prompt_logprobs,
        prefix_scope=prefix_scope(ctx, settings.engine),
    )
    await run.start()
    return run, body


def serving(state: GatewayState, requested_model: str) -> tuple[Router, LoadedModel]:
    """The router and model, once ready; 503 while loading or draining, 404 for another model."""
    retry = state.settings.server.retry_after_s
    if state.draining:
        raise errors.unavailable("The server is shutting down", code="shutting_down", retry_after_s=retry)
    loaded = state.model
    if state.router is None or loaded is None or not state.is_ready:
        _, reason = state.readiness()
        raise errors.unavailable(f"The model is not ready ({reason})", code="model_not_ready", retry_after_s=retry)
    if requested_model != state.model_id:
        raise errors.not_found(
            f"The model '{requested_model}' does not exist; this server serves '{state.model_id}'",
            param="model", code="model_not_found",
        )
    return state.router, loaded


def largest_n(settings: Settings) -> int:
    """The largest n a request may ask for: each choice takes a KV slot of one executor, so n can
    never exceed the batch size."""
    return min(settings.limits.max_n, settings.engine.max_batch_size)


def check_limits(body: GenerationBody, settings: Settings) -> None:
    """The server's own bounds on n, stop, top_logprobs and max_tokens."""
    limits = settings.limits
    max_n = largest_n(settings)
    if body.n > max_n:
        raise errors.invalid_request(f"n must be at most {max_n} on this server", param="n", code="invalid_value")
    if len(body.stop_sequences()) > limits.max_stop_sequences:
        raise errors.invalid_request(f"at most {limits.max_stop_sequences} stop sequences are allowed",
                                     param="stop", code="invalid_value")
    if body.top_logprobs_count > limits.max_top_logprobs:
        raise errors.invalid_request(f"top_logprobs must be at most {limits.max_top_logprobs}",
                                     param="top_logprobs", code="invalid_value")
    max_tokens = body.effective_max_tokens()
    if max_tokens is not None and max_tokens > limits.max_tokens_limit:
        param = body.max_tokens_param
        raise errors.invalid_request(f"{param} must be at most {limits.max_tokens_limit} on this server",
                                     param=param, code="invalid_value")


def fit_max_tokens(body: GenerationBody, prompt_len: int, context: int, engine: EngineSettings) -> int:
    """max_tokens after the context check: never truncate the prompt, never overflow."""
    room = context - prompt_len
    requested = body.effective_max_tokens()
    if room < (0 if requested == 0 else 1):  # max_tokens 0 (scoring a prompt) needs no room
        raise errors.invalid_request(
            f"This model's context is {context} tokens and the prompt has {prompt_len} tokens, which leaves "
            "no room for a completion. Shorten the prompt.",
            param=body.prompt_param, code="context_length_exceeded",
        )
    if requested is None:
        return min(engine.max_tokens, room)  # the default shrinks to fit; an explicit value never does
    if requested > room:
        raise errors.invalid_request(
            f"This model's context is {context} tokens; the prompt has {prompt_len} tokens and "
            f"{requested} more were requested. Shorten the prompt or lower max_tokens.",
            param=body.prompt_param, code="context_length_exceeded",
        )
    return requested


def sampling_params(body: GenerationBody, engine: EngineSettings, vocab_size: int) -> SamplingParams:
    """The body's sampling fields, with the server's defaults where the client sent none."""
    bias = body.token_logit_bias()
    for token_id in bias:
        if token_id >= vocab_size:
            raise errors.invalid_request(
                f"logit_bias: token id {token_id} is outside the vocabulary (size {vocab_size})",
                param="logit_bias", code="invalid_value",
            )
    return SamplingParams(
        temperature=engine.temperature if body.temperature is None else body.temperature,
        top_k=engine.top_k if body.top_k is None else body.top_k,
        top_p=engine.top_p if body.top_p is None else body.top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias,
        logprobs=body.wants_logprobs,
        top_logprobs=body.top_logprobs_count,
    )


def prefix_scope(ctx: GenerationContext, engine: EngineSettings) -> str:
    """Who may reuse this request's cached prompt prefixes: everyone (""), or with
    prefix_cache_scope = "key" only requests made with the same API key name."""
    return f"key:{ctx.key_name}" if engine.prefix_cache_scope == "key" and ctx.key_name else ""


def system_fingerprint(loaded: LoadedModel) -> str:
    """Changes whenever the weights or their numerics do: architecture, step and precision
    (the dtype, or e.g. "int8-bfloat16" when the linear layers are int8)."""
    return f"fp_{loaded.architecture}_{loaded.files.step}_{loaded.precision}"
