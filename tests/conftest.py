"""Shared fixtures: golden checkpoints, a tiny demo checkpoint, loaded models."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from ui_support import browser, open_page, start_ui_gateway  # noqa: F401  (fixtures of the chat page's tests)

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
GENERATIONS = ["2025-10", "2025-12", "2026-01", "2026-03", "2026-07"]

# Two intra-op threads at most: CI has 2 cores and tests run next to servers they start.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@functools.cache
def golden_model(generation: str):
    """A golden checkpoint loaded once per test session (read-only use only)."""
    from nanochat_gateway import load_model

    return load_model(GOLDEN / generation)


@functools.cache
def golden_expected(generation: str) -> dict:
    return torch.load(GOLDEN / generation / "expected.pt", weights_only=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 'tiny' demo checkpoint (current generation, random weights), written once."""
    from nanochat_gateway.model.demo import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "tiny", "tiny")


class Gateway:
    """A real gateway server on loopback, started by the `start_gateway` fixture."""

    def __init__(self, server, app):
        self.server, self.app = server, app

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def base_url(self) -> str:
        """The OpenAI client's base_url."""
        return f"{self.url}/v1"

    @property
    def state(self):
        from nanochat_gateway.state import STATE

        return self.app[STATE]

    @property
    def model_id(self) -> str:
        return self.state.model_id


async def launch_gateway(serve, model_dir, *, wait_ready: bool = True, **overrides) -> Gateway:
    """Build a gateway app serving `model_dir` (stop_sequences only, 8 slots unless overridden),
    start it with `serve(app)` (which returns a TestServer) and wait until it is ready."""
    import asyncio

    from nanochat_gateway.app import create_app
    from nanochat_gateway.config import load_settings

    values = {"model.source": str(model_dir), "model.dtype": "float32",
              "plugins.enabled": ["stop_sequences"], "engine.max_batch_size": 8}
    values.update(overrides)
    settings = load_settings(None, env={}, overrides=values)
    app = create_app(settings)
    gateway = Gateway(await serve(app), app)
    if wait_ready:
        for _ in range(600):
            if gateway.state.is_ready or gateway.state.failure:
                break
            await asyncio.sleep(0.05)
        assert gateway.state.is_ready, gateway.state.readiness()
    return gateway


@pytest.fixture
def start_gateway(aiohttp_server, tiny_model_dir):
    """Factory: start_gateway(model_dir=None, **dotted_overrides) -> ready Gateway.

    Example: await start_gateway(**{"engine.max_batch_size": 4, "plugins.enabled": []})
    The tiny demo model is served unless model_dir is given; plugins default to
    stop_sequences only, so each test enables what it exercises.
    """

    async def start(model_dir=None, *, wait_ready: bool = True, **overrides) -> Gateway:
        return await launch_gateway(aiohttp_server, model_dir or tiny_model_dir, wait_ready=wait_ready, **overrides)

    return start


@pytest.fixture
async def gateway(start_gateway):
    """A gateway with 4 slots; modules needing another configuration define their own."""
    return await start_gateway(**{"engine.max_batch_size": 4})


@pytest.fixture
async def client(gateway):
    """The official async openai client pointed at `gateway`, without retries."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    yield client
    await client.close()
