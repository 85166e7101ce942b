"""Helpers for the chat page's browser tests (this module holds no tests).

- ``Recorder``: a plugin that records what the gateway received (bodies and headers of chat
  requests) and can shape replies: fixed texts (the same rendering path as model output),
  end tokens biased away (replies run to max_tokens), or a connection dropped mid-stream.
- ``browser_or_fail``: headless Chromium from Debian's package through Playwright; a missing
  browser fails the run in CI and skips elsewhere.
- ``ChatPage``: one open page, with every request it made and every error it logged.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nanochat_gateway.plugins import (
    GenerationContext,
    GenerationResult,
    Handler,
    Plugin,
    PluginContext,
    TextEvent,
)

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
RECORDER = "ui_support:Recorder"


class RecorderSettings(BaseModel):
    """[plugins.recorder]"""

    model_config = ConfigDict(extra="forbid")

    replies: list[str] = Field(default_factory=list, description="reply texts used in turn; empty: the model's")
    ban_end_tokens: bool = Field(False, description="bias the end tokens away: replies run to max_tokens")
    drop_after_deltas: int = Field(0, ge=0, description="close the connection soon after this many deltas; 0: never")


class Recorder(Plugin):
    """Records chat requests as the gateway received them and shapes the replies."""

    name = "recorder"
    Settings = RecorderSettings

    def __init__(self, settings: RecorderSettings, context: PluginContext) -> None:
        super().__init__(settings, context)
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.texts: list[str] = []  # each generation's text as sent, once it ended
        self.generations = 0

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/v1/chat/completions":
            self.bodies.append(json.loads(await request.read()))
            self.headers.append(dict(request.headers))
        return await handler(request)

    async def on_request(self, ctx: GenerationContext) -> None:
        ctx.scratch[self.name] = {"turn": self.generations, "deltas": 0, "text": []}
        self.generations += 1
        if self.settings.ban_end_tokens and self.context.router is not None:
            tokenizer = self.context.router.executors[0].loaded.tokenizer
            ctx.sampling.logit_bias.update({tokenizer.assistant_end: -100.0, tokenizer.bos_id: -100.0})

    def on_text(self, ctx: GenerationContext, event: TextEvent) -> None:
        state = ctx.scratch[self.name]
        replies = self.settings.replies
        if replies:
            # The whole fixed reply goes out with the first delta, and the choice ends there.
            event.text = replies[state["turn"] % len(replies)] if not state["text"] else ""
            event.stop = True
        state["deltas"] += 1
        state["text"].append(event.text)
        if state["deltas"] == self.settings.drop_after_deltas and ctx.request.transport is not None:
            # A moment later, so the deltas of this batch reach the client before the line goes dead.
            asyncio.get_running_loop().call_later(0.2, ctx.request.transport.close)

    async def on_response(self, ctx: GenerationContext, result: GenerationResult) -> None:
        self.texts.append("".join(ctx.scratch[self.name]["text"]))


def recorder_of(gateway) -> Recorder:
    return next(p for p in gateway.state.plugins if isinstance(p, Recorder))


def chromium_path() -> str:
    """Debian's chromium; the run fails without it in CI (browser tests must run there) and skips elsewhere."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = "headless Chromium is needed: apt-get install chromium chromium-driver, pip install playwright"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class ChatPage:
    """A page of the chat UI in its own browser context, with what it requested and what went wrong."""

    page: Any
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def watch(self) -> None:
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # The browser logs failed requests (our 401/429/503 tests cause those on purpose).
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")

    def foreign_requests(self) -> list[str]:
        """Requests that left the gateway's origin (downloads are blob: URLs of the page itself)."""
        own = (self.origin + "/", f"blob:{self.origin}/")
        return [url for url in self.requests if not url.startswith(own)]

    async def ready(self) -> None:
        from playwright.async_api import expect

        await expect(self.page.locator("#status")).to_have_text("ready")

    async def send(self, text: str) -> None:
        """Type a message and press Enter."""
        await self.page.locator("#input").fill(text)
        await self.page.locator("#input").press("Enter")

    async def idle(self) -> None:
        """Wait until no reply is being written."""
        from playwright.async_api import expect

        await expect(self.page.locator("#stop")).to_be_hidden()
        await expect(self.page.locator("#send")).to_be_visible()

    async def ask(self, text: str) -> None:
        """Send a message and wait for its reply to be complete."""
        replies = await self.page.locator("article.assistant:not(.writing)").count()
        await self.send(text)
        await self.page.wait_for_function(
            "n => document.querySelectorAll('article.assistant:not(.writing)').length > n"
            " && !document.querySelector('article.writing')", arg=replies)
        await self.idle()

    async def messages(self) -> list[tuple[str, str]]:
        """(role, text) of every message shown."""
        shown = await self.page.eval_on_selector_all(
            "#messages article", "items => items.map(a => [a.classList.contains('user') ? 'user' : 'assistant',"
            " a.querySelector('.msg-body').innerText])")
        return [(role, text) for role, text in shown]

    async def chat_titles(self) -> list[str]:
        return await self.page.locator("#chat-list .chat-open").all_inner_texts()


# ----------------------------------------------------------------------------- fixtures
# Browser tests run in their module's event loop (pytestmark = pytest.mark.asyncio(loop_scope=
# "module")), so that one Chromium serves every test of a module; conftest exports these.


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    """Headless Chromium from Debian's package, driven by Playwright; one per test module."""
    path = chromium_path()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def start_ui_gateway(tiny_model_dir):
    """Factory: a real gateway on loopback in the module's loop, with the Recorder plugin enabled."""
    from aiohttp.test_utils import TestServer

    from conftest import launch_gateway

    servers: list[TestServer] = []

    async def serve(app: web.Application) -> TestServer:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    async def start(model_dir=None, **overrides):
        overrides.setdefault("plugins.enabled", ["stop_sequences", RECORDER])
        return await launch_gateway(serve, model_dir or tiny_model_dir, **overrides)

    yield start
    for server in servers:
        await server.close()


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(browser):
    """Factory: open_page(gateway, viewport=DESKTOP, color_scheme="light", wait_ready=True,
    clock=False, context=None) -> ChatPage in a fresh browser context (fresh storage).

    Every page is checked at the end: no request left the gateway's origin, no script error.
    """
    contexts, pages = [], []

    async def open_(gateway, *, viewport=DESKTOP, color_scheme="light", wait_ready=True, clock=False,
                    context=None) -> ChatPage:
        if context is None:
            context = await browser.new_context(viewport=viewport, color_scheme=color_scheme,
                                                permissions=["clipboard-read", "clipboard-write"])
            contexts.append(context)
            if clock:
                await context.clock.install()
        chat = ChatPage(await context.new_page(), gateway.url)
        chat.watch()
        pages.append(chat)
        await chat.page.goto(gateway.url + "/")
        if wait_ready:
            await chat.ready()
        return chat

    yield open_
    for context in contexts:
        await context.close()
    for chat in pages:
        assert chat.foreign_requests() == [], "the page made requests outside the gateway's origin"
        assert chat.errors == [], "the page logged errors"
