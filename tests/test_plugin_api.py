"""The plugin API: loading (built-in, entry point, dotted path), settings errors, hook order and semantics."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tomllib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from nanochat_gateway.api.errors import APIError
from nanochat_gateway.app import create_app
from nanochat_gateway.config import ConfigError, load_settings
from nanochat_gateway.plugins import (
    GenerationContext,
    GenerationResult,
    Plugin,
    TextEvent,
    resolve_plugin_class,
)
from nanochat_gateway.state import STATE

HERE = Path(__file__).parent
EXAMPLE = HERE / "example_plugin"
DOCS = HERE.parent / "docs" / "plugins.md"

CALLS: list[str] = []  # what the ordering plugins saw, in order
RESULTS: list[tuple[str, GenerationResult]] = []  # (request id, result) from on_response


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    RESULTS.clear()


@pytest.fixture
def example_on_path(monkeypatch):
    """Make tests/example_plugin importable as if it were installed (no pip in tests)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for module in [m for m in sys.modules if m == "example_plugin" or m.startswith("example_plugin.")]:
        del sys.modules[module]


def app_for(*enabled: str, **overrides) -> web.Application:
    return create_app(load_settings(None, env={}, overrides={"plugins.enabled": list(enabled), **overrides}))


# ----------------------------------------------------------------------------- test plugins
class First(Plugin):
    name = "first"

    async def startup(self) -> None:
        CALLS.append("startup:first")

    async def cleanup(self) -> None:
        CALLS.append("cleanup:first")

    async def middleware(self, request, handler):
        CALLS.append("enter:first")
        try:
            return await handler(request)
        finally:
            CALLS.append("leave:first")

    async def on_request(self, ctx: GenerationContext) -> None:
        CALLS.append("on_request:first")

    async def on_response(self, ctx: GenerationContext, result: GenerationResult) -> None:
        CALLS.append("on_response:first")
        RESULTS.append((ctx.request_id, result))


class Second(First):
    name = "second"

    async def startup(self) -> None:
        CALLS.append("startup:second")

    async def cleanup(self) -> None:
        CALLS.append("cleanup:second")

    async def middleware(self, request, handler):
        CALLS.append("enter:second")
        try:
            return await handler(request)
        finally:
            CALLS.append("leave:second")

    async def on_request(self, ctx: GenerationContext) -> None:
        CALLS.append("on_request:second")
        if getattr(ctx.body, "user", None) == "blocked":
            raise APIError(403, "This user may not generate.", "permission_error", "user", "user_blocked")

    async def on_response(self, ctx: GenerationContext, result: GenerationResult) -> None:
        CALLS.append("on_response:second")


class CutSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chars: int = 5


class TextRules(Plugin):
    """Per request, by the `user` field: "upper" rewrites, "hold" holds everything back, "cut" ends early."""

    name = "text_rules"
    Settings = CutSettings

    async def on_request(self, ctx: GenerationContext) -> None:
        ctx.scratch[self.name] = {"mode": getattr(ctx.body, "user", None), "held": [""] * ctx.n,
                                "sent": [0] * ctx.n}

    def on_text(self, ctx: GenerationContext, event: TextEvent) -> None:
        state = ctx.scratch[self.name]
        mode = state["mode"]
        if mode == "upper":
            event.text = event.text.upper()
        elif mode == "hold":
            state["held"][event.choice] += event.text
            event.text = ""
            if event.final:
                event.text, state["held"][event.choice] = state["held"][event.choice], ""
        elif mode == "cut":
            room = self.settings.chars - state["sent"][event.choice]
            if len(event.text) >= room:
                event.text, event.stop = event.text[:room], True
            state["sent"][event.choice] += len(event.text)


# ----------------------------------------------------------------------------- loading
async def test_example_plugin_by_dotted_path(start_gateway, example_on_path):
    gateway = await start_gateway(**{"plugins.enabled": ["example_plugin.plugin:ServedBy", "stop_sequences"],
                                     "plugins.served_by.served_by": "box-7"})
    body = {"model": gateway.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "user": "bob"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/v1/models") as resp:
            assert resp.headers["x-served-by"] == "box-7"
        for stream in (False, True):
            async with session.post(f"{gateway.url}/v1/chat/completions", json={**body, "stream": stream}) as resp:
                assert resp.status == 200 and resp.headers["x-served-by"] == "box-7"  # SSE too
                await resp.read()
        async with session.get(f"{gateway.url}/example/counts") as resp:
            assert await resp.json() == {"served_by": "box-7", "requests": {"bob": 2}}


def test_example_plugin_by_entry_point(tmp_path, monkeypatch, example_on_path):
    # A *.dist-info directory on sys.path is a distribution to importlib.metadata: the entry-point
    # lookup runs for real, from the same declaration as the example's pyproject.toml.
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    dist = tmp_path / "nanochat_gateway_example_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: 0.1.0\n")
    points = project["entry-points"]["nanochat_gateway.plugins"]
    (dist / "entry_points.txt").write_text(
        "[nanochat_gateway.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    monkeypatch.syspath_prepend(str(tmp_path))

    from example_plugin.plugin import ServedBy

    assert resolve_plugin_class("served_by") is ServedBy
    plugin = app_for("served_by", **{"plugins.served_by.max_callers": 3})[STATE].plugins[0]
    assert isinstance(plugin, ServedBy) and plugin.settings.max_callers == 3


def test_docs_example_is_the_tested_code():
    docs = DOCS.read_text()
    blocks = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", docs, flags=re.S))
    assert set(blocks) == {"tests/example_plugin/example_plugin/plugin.py", "tests/example_plugin/pyproject.toml"}
    for path, code in blocks.items():
        assert code == (HERE.parent / path).read_text(), f"docs/plugins.md is out of date with {path}"


def test_bad_setting_stops_start_up_naming_the_key(example_on_path):
    with pytest.raises(ConfigError, match=r"\[plugins\.served_by\] max_callers"):
        app_for("example_plugin.plugin:ServedBy", **{"plugins.served_by.max_callers": 0})
    with pytest.raises(ConfigError, match=r"\[plugins\.metrics\] paht: unknown key \(did you mean 'path'\?\)"):
        app_for("metrics", **{"plugins.metrics.paht": "/m"})
    with pytest.raises(ConfigError, match=r"\[plugins\.text_rules\] chars"):
        app_for(f"{__name__}:TextRules", **{"plugins.text_rules.chars": "many"})


def test_unknown_plugins_are_config_errors():
    with pytest.raises(ConfigError, match="unknown plugin 'no_such_plugin'"):
        app_for("no_such_plugin")
    with pytest.raises(ConfigError, match="cannot load 'no_such_module:Thing'"):
        app_for("no_such_module:Thing")
    with pytest.raises(ConfigError, match="is not a subclass"):
        app_for("json:dumps")


def test_a_failing_event_handler_does_not_break_the_reporter():
    class Broken(Plugin):
        def on_event(self, event, labels):
            raise RuntimeError("broken")

    app = app_for("metrics")
    state = app[STATE]
    metrics = state.plugins[0]
    broken = Broken(Plugin.Settings(), metrics.context)
    metrics.context.plugins.insert(0, broken)
    metrics.context.count("auth_failure", reason="missing_key")  # does not raise
    assert metrics.registry.get_sample_value("nanochat_auth_failures_total", {"reason": "missing_key"}) == 1


# ----------------------------------------------------------------------------- hooks
async def test_hook_order_lifecycle_and_on_response_usage(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": [f"{__name__}:First", f"{__name__}:Second"]})
    assert CALLS == ["startup:first", "startup:second"]
    CALLS.clear()
    tokenizer = gateway.state.model.tokenizer
    body = {"model": gateway.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            # greedy, with the end tokens biased away, so the answer always runs to max_tokens
            "temperature": 0, "logit_bias": {str(tokenizer.bos_id): -100, str(tokenizer.assistant_end): -100}}
    async with aiohttp.ClientSession() as session, session.post(
        f"{gateway.url}/v1/chat/completions", json=body
    ) as resp:
        reply = await resp.json()
        request_id = resp.headers["x-request-id"]
    assert CALLS == ["enter:first", "enter:second", "on_request:first", "on_request:second",
                     "on_response:first", "on_response:second", "leave:second", "leave:first"]
    [(seen_id, result)] = RESULTS
    assert seen_id == request_id
    assert result.prompt_tokens == reply["usage"]["prompt_tokens"]
    assert result.completion_tokens == reply["usage"]["completion_tokens"] == 3
    assert result.total_tokens == reply["usage"]["total_tokens"]
    assert result.finish_reasons == ["length"] and result.status == 200 and result.error is None
    assert result.time_to_first_token is not None and result.duration >= result.time_to_first_token

    CALLS.clear()
    await gateway.server.close()
    assert CALLS == ["cleanup:second", "cleanup:first"]  # reverse order, once


async def test_on_request_rejection_reaches_the_client(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": [f"{__name__}:Second"]})
    body = {"model": gateway.model_id, "messages": [{"role": "user", "content": "hi"}], "user": "blocked"}
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            async with session.post(f"{gateway.url}/v1/chat/completions", json={**body, "stream": stream}) as resp:
                assert resp.status == 403
                assert resp.headers["Content-Type"].startswith("application/json")
                error = (await resp.json())["error"]
                assert error == {"message": "This user may not generate.", "type": "permission_error",
                                 "param": "user", "code": "user_blocked"}
    assert gateway.state.router.running == 0


async def test_on_text_rewrite_hold_back_and_stop(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": [f"{__name__}:TextRules"],
                                     "plugins.text_rules.chars": 5})
    url = f"{gateway.url}/v1/chat/completions"
    base = {"model": gateway.model_id, "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 30, "temperature": 0}
    async with aiohttp.ClientSession() as session:

        async def complete(**extra) -> dict:
            async with session.post(url, json={**base, **extra}) as resp:
                assert resp.status == 200
                return await resp.json()

        async def stream(**extra) -> list[dict]:
            async with session.post(url, json={**base, **extra, "stream": True}) as resp:
                lines = (await resp.text()).splitlines()
            return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]

        plain = await complete()
        text = plain["choices"][0]["message"]["content"]
        assert len(text) > 5

        upper = await complete(user="upper")
        assert upper["choices"][0]["message"]["content"] == text.upper()

        chunks = await stream(user="hold")
        deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert [d for d in deltas if d] == [text]  # everything held back, released with the final event

        cut = await complete(user="cut")
        choice = cut["choices"][0]
        assert choice["message"]["content"] == text[:5]
        assert choice["finish_reason"] == "stop"
        assert cut["usage"]["completion_tokens"] < 30  # the row was cancelled, not run to max_tokens

        chunks = await stream(user="cut")
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text[:5]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    router = gateway.state.router
    for _ in range(200):
        if router.running == 0 and all(e.slots_used == 0 for e in router.executors):
            break
        await asyncio.sleep(0.02)
    assert router.running == 0 and router.executors[0].slots_used == 0
