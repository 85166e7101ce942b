"""Scoring prompts through /v1/completions, as lm-evaluation-harness and other harnesses do:
echo with logprobs scores every prompt token, max_tokens 0 asks for the prompt alone, and
tokens that are pieces of a character keep distinct keys in top_logprobs."""

from __future__ import annotations

import aiohttp
import pytest
import torch
from test_api_support import stream_sse


def reference_logprobs(gateway, ids: list[int]) -> torch.Tensor:
    """log_softmax of a no-cache forward pass over the whole prompt: row p predicts ids[p + 1]."""
    model = gateway.state.model.model
    with torch.inference_mode():
        return torch.log_softmax(model.forward(torch.tensor([ids]))[0].float(), dim=-1)


async def test_echo_with_logprobs_scores_every_prompt_token(gateway, client):
    tok = gateway.state.model.tokenizer
    prompt = "The quick brown fox jumps over the lazy dog. " * 8
    ids = [tok.bos_id, *tok.encode(prompt)]
    text = await client.completions.create(model=gateway.model_id, prompt=prompt, max_tokens=1, echo=True,
                                           logprobs=3, temperature=0)
    lp = text.choices[0].logprobs
    expected = reference_logprobs(gateway, ids)
    # The echoed tokens are the prompt's after <|bos|>; each is scored given everything before it.
    assert len(lp.tokens) == len(ids) - 1 + 1 and text.choices[0].text.startswith(prompt)
    for p, token_id in enumerate(ids[1:]):
        assert lp.token_logprobs[p] == pytest.approx(expected[p, token_id].item(), abs=1e-4)
        top = lp.top_logprobs[p]
        best = torch.topk(expected[p], 3)
        assert len(top) in (3, 4) and lp.tokens[p] in top  # three alternatives plus the token itself
        assert sorted(top.values(), reverse=True)[:3] == pytest.approx(best.values.tolist(), abs=1e-4)
    # text_offset indexes the echoed text
    for token, offset in zip(lp.tokens[:-1], lp.text_offset[:-1], strict=True):
        assert prompt[offset : offset + len(token)] == token
    assert lp.token_logprobs[-1] is not None and len(lp.top_logprobs[-1]) in (3, 4)  # the generated token


async def test_token_id_prompt_first_token_has_null_and_the_rest_are_scored(gateway, client):
    tok = gateway.state.model.tokenizer
    ids = tok.encode("Scores for a prompt given as token ids")
    text = await client.completions.create(model=gateway.model_id, prompt=ids, max_tokens=0, echo=True,
                                           logprobs=0, temperature=0)
    choice = text.choices[0]
    lp = choice.logprobs
    expected = reference_logprobs(gateway, ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx([expected[p, t].item() for p, t in enumerate(ids[1:])], abs=1e-4)
    # logprobs=0: each dict holds just the token itself
    assert all(top == {tok_: value} for tok_, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:],
                                                                  lp.top_logprobs[1:], strict=True))
    assert choice.text == tok.decode(ids) and choice.finish_reason == "length"
    assert text.usage.prompt_tokens == len(ids) and text.usage.completion_tokens == 0


async def test_max_tokens_zero_with_echo_returns_the_prompt_alone(gateway, client):
    base = {"model": gateway.model_id, "prompt": "Just the prompt", "max_tokens": 0, "echo": True}
    text = await client.completions.create(**base)
    assert [c.text for c in text.choices] == ["Just the prompt"] and text.choices[0].finish_reason == "length"
    assert text.usage.completion_tokens == 0
    async with aiohttp.ClientSession() as session:
        resp, sse = await stream_sse(session, f"{gateway.base_url}/completions",
                                     {**base, "logprobs": 1, "stream": True})
    assert resp.status == 200 and sse.done and not sse.errors
    texts = [c["choices"][0]["text"] for c in sse.chunks]
    assert "".join(texts) == "Just the prompt" and sse.chunks[-1]["choices"][0]["finish_reason"] == "length"
    scored = sse.chunks[0]["choices"][0]["logprobs"]
    assert len(scored["token_logprobs"]) == len(gateway.state.model.tokenizer.encode("Just the prompt"))
    assert all(v is not None for v in scored["token_logprobs"])


async def test_a_prompt_filling_the_whole_context_can_be_scored(start_gateway):
    gateway = await start_gateway(**{"engine.max_seq_len": 32, "plugins.enabled": []})
    ids = list(range(300, 332))
    async with aiohttp.ClientSession() as session:
        body = {"model": gateway.model_id, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1}
        async with session.post(f"{gateway.base_url}/completions", json=body) as resp:
            data = await resp.json()
        assert resp.status == 200, data
        assert len(data["choices"][0]["logprobs"]["tokens"]) == 32
        body["max_tokens"] = 1  # a token more does not fit
        async with session.post(f"{gateway.base_url}/completions", json=body) as resp:
            error = (await resp.json())["error"]
    assert resp.status == 400 and error["code"] == "context_length_exceeded"


async def test_partial_utf8_tokens_keep_distinct_keys(gateway):
    """Four tokens that are pieces of characters (each alone renders as U+FFFD) tie with the best
    token: the dict must hold all five, each under its own bytes:\\xNN key."""
    tok = gateway.state.model.tokenizer
    model = gateway.state.model.model
    pieces = [t for t in range(tok.vocab_size) if not tok.is_special(t) and _is_partial(tok.token_bytes(t))][:4]
    best = int(reference_logprobs(gateway, [tok.bos_id, 300])[0].argmax())
    with torch.no_grad():  # this test's own model: give the pieces the best token's output row
        for t in pieces:
            model.lm_head.weight[t] = model.lm_head.weight[best]
    body = {"model": gateway.model_id, "prompt": [tok.bos_id, 300], "max_tokens": 0, "echo": True, "logprobs": 5}
    async with aiohttp.ClientSession() as session, \
            session.post(f"{gateway.base_url}/completions", json=body) as resp:
        top = (await resp.json())["choices"][0]["logprobs"]["top_logprobs"][1]
    keys = {"bytes:" + "".join(f"\\x{b:02x}" for b in tok.token_bytes(t)) for t in pieces}
    assert keys <= set(top) and len(top) >= 5
    assert len({round(top[k], 5) for k in keys}) == 1  # the tie: every piece has the best token's value


def _is_partial(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
