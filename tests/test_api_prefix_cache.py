"""usage.prompt_tokens_details.cached_tokens, cache_prompt and the key scope, through the
official openai client against a real server."""

from __future__ import annotations

import hashlib

from openai import AsyncOpenAI

SYSTEM = "You answer questions about harbours, ships and the history of old port cities."


def no_end_bias(gateway) -> dict[str, int]:
    tok = gateway.state.model.tokenizer
    return {str(tok.assistant_end): -100, str(tok.bos_id): -100}


async def test_a_second_turn_reports_the_first_turns_tokens_as_cached(gateway, client):
    args = {"model": gateway.model_id, "max_tokens": 6, "temperature": 0, "logit_bias": no_end_bias(gateway)}
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Which is the oldest?"}]
    first = await client.chat.completions.create(messages=messages, **args)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And the largest?"}]
    second = await client.chat.completions.create(messages=messages, **args)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # at least the whole first prompt; the reply too as far as its text re-encodes to the same ids
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens
    uncached = await client.chat.completions.create(messages=messages, extra_body={"cache_prompt": False}, **args)
    assert uncached.usage.prompt_tokens_details.cached_tokens == 0
    assert uncached.choices[0].message.content == second.choices[0].message.content


async def test_streamed_usage_carries_cached_tokens(gateway, client):
    args = {"model": gateway.model_id, "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    messages = [{"role": "user", "content": SYSTEM}]
    for expected_hit in (False, True):
        usage = None
        async for chunk in await client.chat.completions.create(messages=messages, **args):
            usage = chunk.usage or usage
        assert usage is not None
        assert usage.prompt_tokens_details.cached_tokens == (usage.prompt_tokens - 1 if expected_hit else 0)


async def test_legacy_completions_report_cached_tokens_streamed_and_not(gateway, client):
    prompt = list(range(300, 340))  # token ids, used exactly as given
    args = {"model": gateway.model_id, "prompt": prompt, "max_tokens": 3, "temperature": 0}
    first = await client.completions.create(**args)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    again = await client.completions.create(**args)
    assert again.usage.prompt_tokens_details.cached_tokens == len(prompt) - 1
    usage = None
    stream = await client.completions.create(**args, stream=True, stream_options={"include_usage": True})
    async for event in stream:
        usage = event.usage or usage
    assert usage is not None and usage.prompt_tokens_details.cached_tokens == len(prompt) - 1
    opted_out = await client.completions.create(**args, extra_body={"cache_prompt": False})
    assert opted_out.usage.prompt_tokens_details.cached_tokens == 0
    assert opted_out.choices[0].text == first.choices[0].text


async def test_key_scope_shares_nothing_across_api_keys(start_gateway):
    keys = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789"}
    digests = {name: "sha256:" + hashlib.sha256(key.encode()).hexdigest() for name, key in keys.items()}
    gateway = await start_gateway(**{"plugins.enabled": ["api_keys"], "plugins.api_keys": {"keys": digests},
                                     "engine.prefix_cache_scope": "key"})
    clients = {name: AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) for name, key in keys.items()}
    messages = [{"role": "user", "content": SYSTEM}]

    async def cached(name: str) -> int:
        reply = await clients[name].chat.completions.create(model=gateway.model_id, messages=messages,
                                                            max_tokens=2, temperature=0)
        return reply.usage.prompt_tokens_details.cached_tokens

    try:
        assert await cached("alice") == 0
        assert await cached("bob") == 0  # the same prompt, another key: no shared hit
        assert await cached("alice") > 0
    finally:
        for client in clients.values():
            await client.close()


async def test_prefix_cache_off_in_the_config_reuses_nothing(start_gateway):
    gateway = await start_gateway(**{"engine.prefix_cache": False})
    client = AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": SYSTEM}]
    try:
        for _ in range(2):
            reply = await client.chat.completions.create(model=gateway.model_id, messages=messages, max_tokens=2,
                                                         temperature=0)
            assert reply.usage.prompt_tokens_details.cached_tokens == 0
    finally:
        await client.close()
    assert gateway.state.router.executors[0].describe()["prefix_cache"]["enabled"] is False
