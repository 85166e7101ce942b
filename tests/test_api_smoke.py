"""A first end-to-end check through the official openai client."""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI, OpenAI


async def test_chat_and_completions_through_the_openai_client(start_gateway):
    gateway = await start_gateway()
    client = AsyncOpenAI(base_url=gateway.base_url, api_key="unused")
    chat = await client.chat.completions.create(
        model=gateway.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 5
    sync = OpenAI(base_url=gateway.base_url, api_key="unused")
    text = await asyncio.to_thread(
        sync.completions.create, model=gateway.model_id, prompt="Once", max_tokens=3, temperature=0
    )
    assert text.usage.completion_tokens == 3
    await client.close()
