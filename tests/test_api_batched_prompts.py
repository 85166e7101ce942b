"""Several prompts in one /v1/completions request, as the openai SDK, LangChain's OpenAI LLM and
lm-evaluation-harness send them: n choices per prompt, numbered prompt by prompt, one usage,
one stream, and one on_request / on_response for the plugins."""

from __future__ import annotations

import aiohttp
import pytest
from openai import AsyncOpenAI
from test_api_support import stream_sse

from nanochat_gateway.plugins import GenerationContext, GenerationResult, Plugin, TextEvent

SEEN: list[tuple[str, object]] = []


class Recorder(Plugin):
    """Records what plugins see of a batched request."""

    name = "recorder"

    async def on_request(self, ctx: GenerationContext) -> None:
        SEEN.append(("on_request", (len(ctx.prompts), ctx.n, ctx.choices, ctx.prompt_tokens)))

    def on_text(self, ctx: GenerationContext, event: TextEvent) -> None:
        if event.final:
            SEEN.append(("final", event.choice))

    async def on_response(self, ctx: GenerationContext, result: GenerationResult) -> None:
        SEEN.append(("on_response", (result.prompt_tokens, result.completion_tokens, len(result.finish_reasons))))


def no_stop(gateway) -> dict[str, int]:
    tok = gateway.state.model.tokenizer
    return {str(tok.assistant_end): -100, str(tok.bos_id): -100}


async def test_text_prompts_give_n_choices_each_in_prompt_major_order(gateway, client):
    prompts = ["Once upon a time", "The capital of France", "1, 2, 3,"]
    args = {"model": gateway.model_id, "max_tokens": 5, "temperature": 0, "logit_bias": no_stop(gateway)}
    batch = await client.completions.create(prompt=prompts, n=2, **args)
    singles = [await client.completions.create(prompt=p, **args) for p in prompts]
    assert [c.index for c in batch.choices] == list(range(6))
    assert [c.text for c in batch.choices] == [s.choices[0].text for s in singles for _ in range(2)]
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert batch.usage.completion_tokens == 6 * 5
    assert batch.usage.total_tokens == batch.usage.prompt_tokens + batch.usage.completion_tokens


async def test_token_id_prompts_and_seeded_sampling(gateway, client):
    tok = gateway.state.model.tokenizer
    prompts = [tok.encode("alpha"), [tok.bos_id, *tok.encode("beta gamma")]]
    args = {"model": gateway.model_id, "max_tokens": 6, "temperature": 1.0, "seed": 11,
            "logit_bias": no_stop(gateway), "n": 2}
    batch = await client.completions.create(prompt=prompts, **args)
    singles = [await client.completions.create(prompt=p, **args) for p in prompts]
    # Each prompt is its own engine request with the request's seed: choice i samples with seed + i.
    assert [c.text for c in batch.choices] == [c.text for s in singles for c in s.choices]


async def test_streamed_batch_has_every_index_and_one_usage(gateway):
    body = {"model": gateway.model_id, "prompt": ["one", "two"], "n": 2, "max_tokens": 3, "temperature": 0,
            "logit_bias": no_stop(gateway), "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as session:
        resp, sse = await stream_sse(session, f"{gateway.base_url}/completions", body)
    assert resp.status == 200 and sse.done and not sse.errors
    chunks = sse.chunks
    usage = [c["usage"] for c in chunks if c["usage"]]
    assert len(usage) == 1 and chunks[-1]["choices"] == [] and usage[0]["completion_tokens"] == 4 * 3
    finished = sorted(ch["index"] for c in chunks for ch in c["choices"] if ch["finish_reason"])
    assert finished == [0, 1, 2, 3]
    assert len({(c["id"], c["created"]) for c in chunks}) == 1


async def test_batched_scoring_with_echo_matches_one_prompt_at_a_time(gateway, client):
    tok = gateway.state.model.tokenizer
    prompts = [tok.encode("The answer is yes"), tok.encode("The answer is no, definitely")]
    args = {"model": gateway.model_id, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    batch = await client.completions.create(prompt=prompts, **args)
    singles = [await client.completions.create(prompt=p, **args) for p in prompts]
    for choice, single in zip(batch.choices, singles, strict=True):
        assert choice.text == single.choices[0].text
        assert choice.logprobs.tokens == single.choices[0].logprobs.tokens
        assert choice.logprobs.token_logprobs[0] is None
        assert choice.logprobs.token_logprobs[1:] == pytest.approx(single.choices[0].logprobs.token_logprobs[1:],
                                                                   abs=1e-5)


async def test_plugins_see_one_request_with_every_choice(start_gateway):
    SEEN.clear()
    gateway = await start_gateway(**{"plugins.enabled": ["stop_sequences", "test_api_batched_prompts:Recorder"]})
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        text = await client.completions.create(model=gateway.model_id, prompt=["a b", "c d e"], n=2,
                                               max_tokens=2, temperature=0, logit_bias=no_stop(gateway))
    tok = gateway.state.model.tokenizer
    prompt_tokens = 2 + len(tok.encode("a b")) + len(tok.encode("c d e"))
    assert SEEN[0] == ("on_request", (2, 2, 4, prompt_tokens))
    assert sorted(choice for kind, choice in SEEN if kind == "final") == [0, 1, 2, 3]
    assert SEEN[-1] == ("on_response", (prompt_tokens, 8, 4))
    assert text.usage.prompt_tokens == prompt_tokens


async def test_stop_sequences_apply_to_every_choice_of_a_batch(gateway, client):
    args = {"model": gateway.model_id, "max_tokens": 12, "temperature": 0, "logit_bias": no_stop(gateway)}
    full = await client.completions.create(prompt=["x", "y"], **args)
    stops = [c.text[3:5] for c in full.choices]
    cut = await client.completions.create(prompt=["x", "y"], stop=stops, **args)
    for whole, part in zip(full.choices, cut.choices, strict=True):
        first = min(i for s in stops if (i := whole.text.find(s)) >= 0)
        assert part.text == whole.text[:first] and part.finish_reason == "stop"
