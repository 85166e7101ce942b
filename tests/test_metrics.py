"""The metrics plugin: /metrics parsed with prometheus_client's own parser, against a real server."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nanochat_gateway.app import create_app
from nanochat_gateway.config import load_settings
from nanochat_gateway.plugins import GenerationContext, GenerationResult, Plugin
from nanochat_gateway.state import STATE

CHAT = "/v1/chat/completions"


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics as {(sample name, labels): value}."""
    async with session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def chat(session: aiohttp.ClientSession, url: str, **body) -> dict:
    payload = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5,
               "temperature": 0, **body}
    async with session.post(url + CHAT, json=payload) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def open_stream(session: aiohttp.ClientSession, url: str, max_tokens: int) -> aiohttp.ClientResponse:
    """A streaming chat whose first (role) event has arrived; the caller closes it."""
    payload = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
               "stream": True, "temperature": 0}
    resp = await session.post(url + CHAT, json=payload)
    assert resp.status == 200
    assert (await resp.content.readline()).startswith(b"data:")
    return resp


async def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_requests_tokens_and_latency_histograms(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["metrics", "stop_sequences"]})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/metrics") as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
        first = await chat(session, gateway.url, model=gateway.model_id)
        second = await chat(session, gateway.url, model=gateway.model_id, max_tokens=3)
        async with session.get(f"{gateway.url}/nowhere/{time.time()}") as resp:
            assert resp.status == 404
        samples = await scrape(session, gateway.url)

    model = gateway.model_id
    http = "nanochat_http_requests_total"
    assert value(samples, http, endpoint=CHAT, method="POST", status="200", model_name=model) == 2
    assert value(samples, http, endpoint="other", method="GET", status="404") == 1  # never the raw path
    assert value(samples, http, endpoint="/metrics", method="GET", status="200") == 1
    assert value(samples, "nanochat_http_request_duration_seconds_count", endpoint=CHAT) == 2
    usage = [first["usage"], second["usage"]]
    assert value(samples, "nanochat_prompt_tokens_total", model_name=model) == sum(u["prompt_tokens"] for u in usage)
    assert value(samples, "nanochat_generation_tokens_total", model_name=model) == sum(
        u["completion_tokens"] for u in usage)
    assert value(samples, "nanochat_generation_requests_total", endpoint="chat.completions", status="200") == 2
    assert value(samples, "nanochat_request_finish_reason_total", finish_reason="length") == 2
    assert value(samples, "nanochat_time_to_first_token_seconds_count", model_name=model) == 2
    assert value(samples, "nanochat_time_per_output_token_seconds_count", model_name=model) == 2
    assert value(samples, "nanochat_request_queue_time_seconds_count", model_name=model) == 2
    assert value(samples, "nanochat_e2e_request_latency_seconds_count", model_name=model) == 2
    # Engine steps are seen through the executor's step listeners.
    assert value(samples, "nanochat_batch_size_count", executor="cpu0") > 0
    assert value(samples, "nanochat_step_duration_seconds_count", executor="cpu0") > 0
    assert value(samples, "nanochat_decode_tokens_total", executor="cpu0") > 0
    assert value(samples, "nanochat_prefill_tokens_total", executor="cpu0") >= sum(u["prompt_tokens"] for u in usage)
    assert value(samples, "nanochat_kv_slots_total", executor="cpu0") == 8
    assert value(samples, "nanochat_executor_ready", executor="cpu0") == 1


async def test_prefix_cache_queries_and_hits_count_prompt_tokens(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["metrics"]})
    long_message = [{"role": "user", "content": "tell me about the history of the city and its old harbour"}]
    async with aiohttp.ClientSession() as session:
        first = await chat(session, gateway.url, model=gateway.model_id, messages=long_message)
        await chat(session, gateway.url, model=gateway.model_id, messages=long_message)
        samples = await scrape(session, gateway.url)
    prompt = first["usage"]["prompt_tokens"]
    labels = {"executor": "cpu0", "device": "cpu"}
    assert value(samples, "nanochat_prefix_cache_queries_total", **labels) == 2 * prompt
    assert value(samples, "nanochat_prefix_cache_hits_total", **labels) == prompt - 1  # the second, all but one


async def test_gauges_follow_held_streams_and_disconnects(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["metrics"], "engine.max_batch_size": 1})
    executor = gateway.state.router.executors[0]
    executor.hooks.fault_injector = lambda batch: time.sleep(0.02)  # slow steps keep the first stream running
    labels = {"executor": executor.name}
    async with aiohttp.ClientSession() as session:
        running = await open_stream(session, gateway.url, max_tokens=400)
        await wait_for(lambda: executor.running == 1)
        queued = await open_stream(session, gateway.url, max_tokens=5)  # no free slot: it waits
        await wait_for(lambda: executor.waiting == 1)
        samples = await scrape(session, gateway.url)
        assert value(samples, "nanochat_num_requests_running", **labels) == 1
        assert value(samples, "nanochat_num_requests_waiting", **labels) == 1
        assert value(samples, "nanochat_kv_slots_used", **labels) == 1
        assert value(samples, "nanochat_kv_slots_total", **labels) == 1

        queued.close()
        running.close()
        await wait_for(lambda: executor.running == 0 and executor.waiting == 0 and executor.slots_used == 0)
        await wait_for(lambda: len(gateway.state.active_generations) == 0)
        samples = await scrape(session, gateway.url)
    for gauge in ("nanochat_num_requests_running", "nanochat_num_requests_waiting", "nanochat_kv_slots_used"):
        assert value(samples, gauge, **labels) == 0, gauge
    assert value(samples, "nanochat_client_disconnects_total", endpoint="chat.completions") == 2
    assert value(samples, "nanochat_generation_requests_total", status="499") == 2
    # The server cancels the handler of a vanished client (handler_cancellation): 499, as in access logs.
    assert value(samples, "nanochat_http_requests_total", endpoint=CHAT, status="499") == 2


async def test_an_error_event_in_a_stream_is_http_200_but_a_failed_generation(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["metrics"]})

    def fail(batch):
        raise RuntimeError("injected")

    gateway.state.router.executors[0].hooks.fault_injector = fail
    async with aiohttp.ClientSession() as session:
        payload = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with session.post(gateway.url + CHAT, json=payload) as resp:
            assert resp.status == 200
            assert b'"error"' in await resp.read()
        samples = await scrape(session, gateway.url)
    assert value(samples, "nanochat_http_requests_total", endpoint=CHAT, status="200") == 1
    assert value(samples, "nanochat_generation_requests_total", endpoint="chat.completions", status="500") == 1
    assert value(samples, "nanochat_request_finish_reason_total", finish_reason="error") == 1


async def test_plugin_events_are_counted(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["metrics"]})
    context = gateway.state.plugins[0].context
    context.count("auth_failure", reason="missing_key")
    context.count("auth_failure", reason="missing_key")
    context.count("auth_failure", reason="unknown_key")
    context.count("rate_limit_rejected", limit="requests_per_minute")
    context.count("rate_limit_backend_error", policy="default")
    context.count("something_new", user="u-123")  # unknown: counted by name, its labels dropped
    async with aiohttp.ClientSession() as session:
        samples = await scrape(session, gateway.url)
    assert value(samples, "nanochat_auth_failures_total", reason="missing_key") == 2
    assert value(samples, "nanochat_auth_failures_total", reason="unknown_key") == 1
    assert value(samples, "nanochat_rate_limit_rejections_total", limit="requests_per_minute") == 1
    assert value(samples, "nanochat_rate_limit_backend_errors_total", policy="default") == 1
    assert value(samples, "nanochat_plugin_events_total", event="something_new") == 1


def test_event_labels_are_bounded():
    settings = load_settings(None, env={}, overrides={"plugins.enabled": ["metrics"]})
    metrics = create_app(settings)[STATE].plugins[0]
    for i in range(500):
        metrics.on_event("auth_failure", {"reason": f"r{i}"})
    text = generate_latest(metrics.registry).decode()
    assert text.count("nanochat_auth_failures_total{") <= 65
    assert 'nanochat_auth_failures_total{reason="other"} 436.0' in text


def test_two_apps_have_separate_registries_and_no_router_yet():
    settings = load_settings(None, env={}, overrides={"plugins.enabled": ["metrics"]})
    first, second = create_app(settings), create_app(settings)  # no DuplicateTimeseries
    one, two = first[STATE].plugins[0], second[STATE].plugins[0]
    assert one.registry is first[STATE].registry is not second[STATE].registry
    one.on_event("auth_failure", {"reason": "missing_key"})
    # Neither app has started, so there is no router: the executor gauges are simply empty.
    text_one, text_two = generate_latest(one.registry).decode(), generate_latest(two.registry).decode()
    assert 'nanochat_auth_failures_total{reason="missing_key"} 1.0' in text_one
    assert "nanochat_auth_failures_total{" not in text_two
    assert "# TYPE nanochat_num_requests_running gauge" in text_two
    assert "nanochat_num_requests_running{" not in text_two


RESULTS: list = []


class ResultRecorder(Plugin):
    """Keeps every GenerationResult, to compare with what /metrics shows."""

    name = "result_recorder"

    async def on_response(self, ctx: GenerationContext, result: GenerationResult) -> None:
        RESULTS.append(result)


STEP_S = 0.05  # every engine step sleeps this long, so times have known lower bounds


async def test_queue_prefill_decode_and_tpot_measure_what_they_say(start_gateway):
    RESULTS.clear()
    gateway = await start_gateway(**{"plugins.enabled": ["metrics", "test_metrics:ResultRecorder"],
                                     "engine.max_batch_size": 1})
    tok = gateway.state.model.tokenizer
    gateway.state.router.executors[0].hooks.fault_injector = lambda batch: time.sleep(STEP_S)
    no_stop = {str(tok.assistant_end): -100, str(tok.bos_id): -100}
    async with aiohttp.ClientSession() as session:
        # One slot: the second request waits for the first (8 steps) before its own prefill.
        await asyncio.gather(chat(session, gateway.url, model=gateway.model_id, max_tokens=8, logit_bias=no_stop),
                             chat(session, gateway.url, model=gateway.model_id, max_tokens=4, logit_bias=no_stop))
        samples = await scrape(session, gateway.url)
    first, second = sorted(RESULTS, key=lambda r: r.queue_seconds)
    for result in (first, second):
        # Queue time ends at admission, before the prefill step: it is not the time to first token.
        assert result.prefill_seconds >= STEP_S and result.queue_seconds + result.prefill_seconds == \
            pytest.approx(result.time_to_first_token)
        tokens = result.completion_tokens
        assert result.decode_seconds >= (tokens - 1) * STEP_S
        assert result.time_per_output_token == pytest.approx(result.decode_seconds / (tokens - 1))
        assert result.time_to_first_token + result.decode_seconds <= result.duration
    assert first.queue_seconds < STEP_S  # admitted at once
    assert second.queue_seconds >= 8 * STEP_S  # waited for the first request's whole generation
    model = gateway.model_id
    for name, field in (("nanochat_request_queue_time_seconds", "queue_seconds"),
                        ("nanochat_request_prefill_time_seconds", "prefill_seconds"),
                        ("nanochat_request_decode_time_seconds", "decode_seconds"),
                        ("nanochat_time_to_first_token_seconds", "time_to_first_token")):
        assert value(samples, f"{name}_sum", model_name=model) == pytest.approx(
            sum(getattr(r, field) for r in RESULTS)), name
    assert value(samples, "nanochat_time_per_output_token_seconds_sum", model_name=model) == pytest.approx(
        sum(r.time_per_output_token for r in RESULTS))


async def test_per_request_token_and_parameter_histograms(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["metrics"]})
    model = gateway.model_id
    async with aiohttp.ClientSession() as session:
        answer = await chat(session, gateway.url, model=model, max_tokens=5, n=2)
        body = {"model": model, "prompt": ["a", "b c"], "max_tokens": 3, "temperature": 0}
        async with session.post(f"{gateway.base_url}/completions", json=body) as resp:
            batch = await resp.json()
        samples = await scrape(session, gateway.url)
    usages = [answer["usage"], batch["usage"]]
    assert value(samples, "nanochat_request_prompt_tokens_count", model_name=model) == 2
    assert value(samples, "nanochat_request_prompt_tokens_sum", model_name=model) == sum(
        u["prompt_tokens"] for u in usages)
    assert value(samples, "nanochat_request_generation_tokens_sum", model_name=model) == sum(
        u["completion_tokens"] for u in usages)
    assert value(samples, "nanochat_request_params_max_tokens_sum", model_name=model) == 5 + 3
    assert value(samples, "nanochat_request_params_n_sum", model_name=model) == 2 + 1
    # bucket edges: a 3-token cap falls in le=5, not le=2
    assert value(samples, "nanochat_request_params_max_tokens_bucket", model_name=model, le="2.0") == 0
    assert value(samples, "nanochat_request_params_max_tokens_bucket", model_name=model, le="5.0") == 2
