"""Operational endpoints and the model list: /health, /ready, /stats, /v1/models."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from test_api_support import USER_HI, post_json, wait_until

import nanochat_gateway.app as app_module


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict, dict]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_ready_is_503_with_a_reason_until_the_model_is_loaded(start_gateway, monkeypatch):
    release = threading.Event()
    real_resolve = app_module.resolve_source

    def slow_resolve(*args, **kwargs):
        release.wait(10)  # hold start-up in the "resolving model" phase until the test has looked
        return real_resolve(*args, **kwargs)

    monkeypatch.setattr(app_module, "resolve_source", slow_resolve)
    gateway = await start_gateway(wait_ready=False)
    try:
        async with aiohttp.ClientSession() as session:
            status, body, headers = await get(session, f"{gateway.url}/health")
            assert status == 200 and body == {"status": "ok"}  # liveness says nothing about the model
            status, body, headers = await get(session, f"{gateway.url}/ready")
            assert status == 503 and body["status"] == "unavailable" and body["reason"] == "resolving model"
            assert headers["Retry-After"] == "1"
            status, body, headers = await post_json(session, f"{gateway.base_url}/chat/completions",
                                                    {"model": "anything", "messages": USER_HI})
            assert status == 503 and body["error"]["code"] == "model_not_ready" and headers["Retry-After"]
            status, body, _ = await get(session, f"{gateway.url}/stats")
            assert status == 200 and body["executors"] == [] and body["phase"] == "resolving model"
            release.set()
            await wait_until(lambda: gateway.state.is_ready, timeout=20, interval=0.05)
            status, body, _ = await get(session, f"{gateway.url}/ready")
            assert status == 200 and body == {"status": "ready", "reason": "ready", "model": gateway.model_id}
    finally:
        release.set()


async def test_stats_describe_each_executor_and_the_model(start_gateway):
    gateway = await start_gateway(**{"engine.max_batch_size": 3})
    async with aiohttp.ClientSession() as session:
        status, body, _ = await get(session, f"{gateway.url}/stats")
    assert status == 200 and body["model_id"] == gateway.model_id
    [executor] = body["executors"]
    assert executor["device"] == "cpu" and executor["state"] == "ready"
    assert (executor["running"], executor["waiting"], executor["slots_used"], executor["slots_total"]) == (0, 0, 0, 3)
    assert body["model"]["config"]["sequence_len"] == 2048 and body["model"]["parameters"] > 0
    assert body["running"] == 0 and body["waiting"] == 0 and body["plugins"] == ["stop_sequences"]


async def test_stats_show_the_prefix_cache_hit_rate(start_gateway):
    gateway = await start_gateway()
    body = {"model": gateway.model_id, "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": "a question long enough to be worth caching, twice"}]}
    async with aiohttp.ClientSession() as session:
        _, stats, _ = await get(session, f"{gateway.url}/stats")
        assert stats["executors"][0]["prefix_cache"]["hit_rate"] is None  # nothing asked yet
        for _ in range(2):
            status, _, _ = await post_json(session, f"{gateway.base_url}/chat/completions", body)
            assert status == 200
        _, stats, _ = await get(session, f"{gateway.url}/stats")
    cache = stats["executors"][0]["prefix_cache"]
    prompt = cache["queried_tokens"] // 2
    assert cache["enabled"] and cache["hit_tokens"] == prompt - 1 and cache["kept_slots"] >= 1
    assert cache["hit_rate"] == round((prompt - 1) / (2 * prompt), 4)


async def test_stats_show_running_and_waiting_requests(start_gateway):
    gateway = await start_gateway(**{"engine.max_batch_size": 1})
    tok = gateway.state.model.tokenizer
    body = {"model": gateway.model_id, "messages": USER_HI, "max_tokens": 1500,
            "logit_bias": {str(tok.assistant_end): -100, str(tok.bos_id): -100}}
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(session.post(f"{gateway.base_url}/chat/completions", json=body))
                 for _ in range(2)]
        executor = gateway.state.router.executors[0]
        await wait_until(lambda: executor.running == 1 and executor.waiting == 1, timeout=2)
        _, stats, _ = await get(session, f"{gateway.url}/stats")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert (stats["running"], stats["waiting"], stats["executors"][0]["slots_used"]) == (1, 1, 1)


async def test_models_list_and_retrieve(start_gateway):
    gateway = await start_gateway()
    async with AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as client:
        models = [m async for m in client.models.list()]
        assert [m.id for m in models] == [gateway.model_id]
        model = await client.models.retrieve(gateway.model_id)
        assert model.object == "model" and model.owned_by == "nanochat-gateway" and model.created > 0
        assert model.model_extra["max_model_len"] == 2048 and model.model_extra["demo"] is True
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("other-model")
    assert info.value.body == {"message": "The model 'other-model' does not exist", "type": "invalid_request_error",
                               "param": "model", "code": "model_not_found"}
