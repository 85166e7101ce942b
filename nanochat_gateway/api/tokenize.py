"""The tokenizer over HTTP, in vLLM's shapes: POST /tokenize, POST /detokenize, GET /tokenizer_info.

Clients count tokens, build token-id prompts, and score text without a local copy of the
tokenizer (lm-evaluation-harness's ``tokenizer_backend=remote``). ``/tokenize`` with
``messages`` gives exactly the ids /v1/chat/completions would use for them.
"""

from __future__ import annotations

from aiohttp import web

from nanochat_gateway.api import errors
from nanochat_gateway.api.bodies import json_response, read_body
from nanochat_gateway.api.logprobs import TokenText
from nanochat_gateway.api.prepare import serving
from nanochat_gateway.api.prompts import chat_prompt_ids
from nanochat_gateway.api.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from nanochat_gateway.model.chat_template import jinja_chat_template
from nanochat_gateway.state import STATE

TOKENIZER_CLASS = "NanochatTokenizer"
EOS_TOKEN = "<|assistant_end|>"  # the end of an assistant turn, as nanochat's Hugging Face exports say


async def tokenize(request: web.Request) -> web.Response:
    body = await read_body(request, TokenizeRequest)
    state = request.app[STATE]
    router, loaded = serving(state, body.model or state.model_id or "")
    tokenizer = loaded.tokenizer
    if body.messages is not None:
        ids = chat_prompt_ids(body.messages, tokenizer, state.settings.limits,
                              state.settings.model.default_system_prompt or None,
                              continue_final_message=body.continue_final_message,
                              add_generation_prompt=body.add_generation_prompt)
    else:
        assert body.prompt is not None  # the model validator asks for one of the two
        bos = [tokenizer.bos_id] if body.add_special_tokens is not False else []
        ids = bos + tokenizer.encode_with_special_tokens(body.prompt)
    token_strs = None
    if body.return_token_strs:
        token_text = TokenText(tokenizer)
        token_strs = [token_text(t)[0] for t in ids]
    return json_response(TokenizeResponse(count=len(ids), max_model_len=router.executors[0].max_seq_len,
                                          tokens=ids, token_strs=token_strs))


async def detokenize(request: web.Request) -> web.Response:
    body = await read_body(request, DetokenizeRequest)
    state = request.app[STATE]
    _, loaded = serving(state, body.model or state.model_id or "")
    tokenizer = loaded.tokenizer
    if bad := [t for t in body.tokens if t >= tokenizer.vocab_size]:
        raise errors.invalid_request(f"tokens: token id {bad[0]} is outside the vocabulary "
                                     f"(size {tokenizer.vocab_size})", param="tokens", code="invalid_value")
    return json_response(DetokenizeResponse(prompt=tokenizer.decode(body.tokens)))


async def tokenizer_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    router, loaded = serving(state, state.model_id or "")
    tokenizer = loaded.tokenizer
    return json_response(TokenizerInfo(
        tokenizer_class=TOKENIZER_CLASS, name=tokenizer.enc.name, vocab_size=tokenizer.vocab_size,
        model_max_length=router.executors[0].max_seq_len, bos_token="<|bos|>", eos_token=EOS_TOKEN,
        special_tokens=tokenizer.special_tokens,
        chat_template=jinja_chat_template(state.settings.model.default_system_prompt or None),
    ))
