"""The chat page in headless Chromium against a real gateway: conversations kept in the browser
(rename, delete, export and import, SFT JSONL, a full storage), API keys, 429 and 503 with
their countdowns, errors mid-stream, model loading, the demo banner, phones and keyboards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect
from ui_support import PHONE, RECORDER, recorder_of

from conftest import GOLDEN
from nanochat_gateway.api import ui
from nanochat_gateway.synth.check import check_file

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALICE = "ncg-alice-browser-key"


def sft_conversations(path: Path) -> list[list[dict]]:
    """The conversations of an SFT JSONL file, after checking it against nanochat's CustomJSON rules."""
    result = check_file(path)
    assert result.problems == [] and result.conversations > 0
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def download(page, button: str) -> Path:
    async with page.expect_download() as info:
        await page.locator(button).click()
    return Path(await (await info.value).path())


async def test_chats_are_kept_renamed_deleted_exported_and_imported_back(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": ["reply A", "reply B", "reply C"]}})
    chat = await open_page(gateway)
    page = chat.page
    await chat.ask("first chat")
    await page.keyboard.press("Control+Shift+N")
    await expect(page.locator("#messages article")).to_have_count(0)
    await chat.ask("second chat")
    await chat.ask("more")
    assert await chat.chat_titles() == ["second chat", "first chat"]

    await page.locator('#chat-list li:has-text("first chat") [data-action=rename]').click()
    await page.locator(".chat-rename").fill("Renamed <b>chat</b>")
    await page.locator(".chat-rename").press("Enter")
    assert await chat.chat_titles() == ["second chat", "Renamed <b>chat</b>"]
    await page.reload()
    await chat.ready()
    assert await chat.chat_titles() == ["second chat", "Renamed <b>chat</b>"]
    assert await chat.messages() == [("user", "second chat"), ("assistant", "reply B"), ("user", "more"),
                                     ("assistant", "reply C")]

    exported = json.loads((await download(page, "#export-json")).read_text())
    assert exported["format"] == "nanochat-gateway.chats" and len(exported["chats"]) == 2
    backup = await download(page, "#export-json")

    for _ in range(2):
        await page.locator("#chat-list [data-action=delete]").first.click()
        await expect(page.locator("#confirm-dialog")).to_be_visible()
        await page.locator("#confirm-ok").click()
    await expect(page.locator("#chat-list .chat-empty")).to_be_visible()
    assert await chat.messages() == []

    await page.locator("#import-file").set_input_files(backup)
    await expect(page.locator("#notice")).to_contain_text("Imported 2 chats")
    assert await chat.chat_titles() == ["second chat", "Renamed <b>chat</b>"]
    again = json.loads((await download(page, "#export-json")).read_text())
    assert sorted(again["chats"], key=lambda c: c["id"]) == sorted(exported["chats"], key=lambda c: c["id"])
    await page.locator('#chat-list li:has-text("Renamed") .chat-open').click()
    assert await chat.messages() == [("user", "first chat"), ("assistant", "reply A")]

    # Cancel keeps a chat; a file that is not an export is refused with a reason.
    await page.locator("#chat-list [data-action=delete]").first.click()
    await page.locator("#confirm-cancel").click()
    assert len(await chat.chat_titles()) == 2
    bad = backup.with_name("not-chats.json")
    bad.write_text('{"hello": 1}')
    await page.locator("#import-file").set_input_files(bad)
    await expect(page.locator("#notice")).to_contain_text("could not be imported")


async def test_sft_export_is_what_nanochat_customjson_reads(start_ui_gateway, open_page, tmp_path):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": ["Paris.", "About 2.1 million.", "Hello!"]}})
    chat = await open_page(gateway)
    page = chat.page
    await chat.send("/system Answer briefly.")
    await chat.ask("Capital of France?")
    await chat.ask("Population?")
    await page.keyboard.press("Control+Shift+N")
    await chat.send("/system")
    await chat.ask("Hi")

    everything = sft_conversations(await download(page, "#export-sft-all"))
    assert sorted(everything, key=len) == [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        [{"role": "user", "content": "Answer briefly.\n\nCapital of France?"},
         {"role": "assistant", "content": "Paris."},
         {"role": "user", "content": "Population?"}, {"role": "assistant", "content": "About 2.1 million."}],
    ]
    this_chat = sft_conversations(await download(page, "#export-sft-one"))
    assert this_chat == [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]

    # Chats that end unanswered, hold an empty reply or break the turn order export only their valid start.
    version, _ = ui.load_files()
    text = await page.evaluate("""async (base) => {
        const { toSftJsonl } = await import(base + '/store.js');
        const m = (role, content) => ({ role, content });
        return toSftJsonl([
            { messages: [m('user', 'a'), m('assistant', 'b'), m('user', 'unanswered')] },
            { messages: [m('user', 'a'), m('assistant', 'b'), m('user', 'c'), m('assistant', '')] },
            { messages: [m('user', 'a'), m('user', 'b'), m('assistant', 'c')] },
            { messages: [m('assistant', 'first')] },
        ]);
    }""", f"/ui/{version}")
    assert text["count"] == 2 and text["skipped"] == 2
    (tmp_path / "edges.jsonl").write_text(text["text"])
    assert sft_conversations(tmp_path / "edges.jsonl") == [[{"role": "user", "content": "a"},
                                                           {"role": "assistant", "content": "b"}]] * 2


async def test_a_full_browser_storage_is_reported_and_the_chat_is_not_lost(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": ["kept"]}})
    chat = await open_page(gateway)
    page = chat.page
    await page.evaluate("""() => {
        for (let size = 1 << 20; size >= 16; size >>= 1) {
            const block = 'x'.repeat(size);
            try { for (let i = 0; ; i++) localStorage.setItem(`fill.${size}.${i}`, block); } catch (e) {}
        }
    }""")
    await chat.ask("remember me")
    warning = page.locator("#storage-warning")
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text("NOT saved")
    assert await chat.messages() == [("user", "remember me"), ("assistant", "kept")]
    exported = json.loads((await download(page, "#export-json")).read_text())
    assert [m["content"] for m in exported["chats"][0]["messages"]] == ["remember me", "kept"]

    await page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('fill.')).forEach(k => localStorage.removeItem(k))")
    await chat.ask("and this")
    await expect(warning).to_be_hidden()
    await page.reload()
    await chat.ready()
    assert await chat.messages() == [("user", "remember me"), ("assistant", "kept"), ("user", "and this"),
                                     ("assistant", "kept")]


async def test_an_api_key_is_asked_for_on_401_and_then_used(start_ui_gateway, open_page):
    digest = "sha256:" + hashlib.sha256(ALICE.encode()).hexdigest()
    gateway = await start_ui_gateway(**{
        "plugins.enabled": ["api_keys", "stop_sequences", RECORDER],
        "plugins.api_keys": {"keys": {"alice": digest}},
        "plugins.recorder": {"replies": ["hello alice"]},
    })
    chat = await open_page(gateway, wait_ready=False)
    page = chat.page
    dialog = page.locator("#key-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#key-reason")).to_contain_text("asks for an API key")
    await page.locator("#key-input").fill("ncg-wrong")
    await page.locator("#key-input").press("Enter")
    await expect(page.locator("#key-reason")).to_contain_text("did not accept")
    await page.locator("#key-input").fill(ALICE)
    await page.locator("#key-input").press("Enter")
    await chat.ready()
    await chat.ask("hi")
    assert recorder_of(gateway).headers[-1]["Authorization"] == f"Bearer {ALICE}"
    assert await page.evaluate("[sessionStorage.getItem('ncg.apiKey'), localStorage.getItem('ncg.apiKey')]") == [
        ALICE, None]
    await page.reload()
    await chat.ready()
    await expect(dialog).to_be_hidden()

    # A key the gateway no longer takes: the 401 on sending asks again, then the message goes.
    await page.evaluate("sessionStorage.setItem('ncg.apiKey', 'ncg-revoked')")
    await chat.send("again")
    await expect(dialog).to_be_visible()
    await page.locator("#key-input").fill(ALICE)
    await page.locator("#key-remember").check()
    await page.locator("#key-input").press("Enter")
    await expect(page.locator("article.assistant:not(.writing)")).to_have_count(2)
    assert await chat.messages() == [("user", "hi"), ("assistant", "hello alice"), ("user", "again"),
                                     ("assistant", "hello alice")]
    assert await page.evaluate("localStorage.getItem('ncg.apiKey')") == ALICE
    other = await open_page(gateway, context=page.context)  # another tab: the remembered key
    await expect(other.page.locator("#key-dialog")).to_be_hidden()


async def test_429_counts_down_from_retry_after_then_sending_comes_back(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{
        "plugins.enabled": ["rate_limit", "stop_sequences", RECORDER],
        "plugins.rate_limit": {"requests_per_minute": 1},
        "plugins.recorder": {"replies": ["one"]},
    })
    chat = await open_page(gateway, clock=True)
    page = chat.page
    await chat.ask("first")  # loading the page spent nothing: the one request a minute is still there
    await chat.send("second")
    notice = page.locator("#notice")
    await expect(notice).to_contain_text("Too many requests")
    seconds = int((await notice.inner_text()).rsplit(" in ", 1)[1].split()[0])
    assert 55 <= seconds <= 60
    send = page.locator("#send")
    await expect(send).to_be_disabled()
    await expect(send).to_have_text(f"Wait {seconds} s")
    # The refused message is not in the conversation: it is back in the box, to send again.
    assert await chat.messages() == [("user", "first"), ("assistant", "one")]
    assert await page.locator("#input").input_value() == "second"
    await page.clock.fast_forward(30_000)
    await expect(notice).to_contain_text(f"in {seconds - 30} s")
    await page.clock.fast_forward(31_000)
    await expect(send).to_be_enabled()
    await expect(send).to_have_text("Send")
    await expect(notice).to_be_hidden()


async def test_503_when_busy_counts_down_and_a_refused_regeneration_can_be_retried(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"engine.max_batch_size": 1, "engine.max_queue": 0,
                                        "plugins.recorder": {"ban_end_tokens": True}})
    chat = await open_page(gateway)
    page = chat.page
    await chat.send("/max_tokens 3")
    await chat.ask("first")
    body = {"model": gateway.model_id, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1800,
            "stream": True}
    notice = page.locator("#notice")
    async with aiohttp.ClientSession() as session, session.post(gateway.url + "/v1/chat/completions",
                                                                json=body) as busy:
        await busy.content.readline()  # the one slot is taken, and nothing may wait for it
        await chat.send("hello")
        await expect(notice).to_contain_text("The gateway is busy")
        await expect(notice).to_contain_text("You can send again in 1 s")
        await expect(page.locator("#send")).to_be_enabled()
        assert await page.locator("#input").input_value() == "hello"
        await page.locator('article[data-index="1"] [data-action=regenerate]').click()
        # The notice still reads "busy" from the refused "hello": wait for the reply to be dropped.
        await expect(page.locator("article.assistant")).to_have_count(0)
        await expect(notice).to_contain_text("The gateway is busy")
    # The regenerated reply was refused: the question stays, unanswered, with a Retry.
    assert await chat.messages() == [("user", "first")]
    await expect(page.locator("#send")).to_be_enabled()
    await page.locator("[data-action=retry]").click()
    await expect(page.locator("article.assistant:not(.writing)")).to_have_count(1)
    await expect(page.locator("article.assistant .msg-meta")).to_contain_text("3 tokens · cut at max tokens")


async def test_an_error_mid_stream_and_a_dropped_connection_keep_the_partial_reply(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"server.request_timeout_s": 2.0, "plugins.recorder": {"ban_end_tokens": True}})
    chat = await open_page(gateway)
    page = chat.page
    await chat.send("/max_tokens 1800")
    await chat.ask("long")
    await expect(page.locator("#notice")).to_contain_text("The gateway stopped the reply: The request took longer")
    await expect(page.locator("article.assistant .msg-meta")).to_contain_text("ended by an error")

    gateway = await start_ui_gateway(**{"plugins.recorder": {"ban_end_tokens": True, "drop_after_deltas": 5}})
    chat = await open_page(gateway)
    page = chat.page
    await chat.send("/max_tokens 1800")
    await chat.ask("long")
    await expect(page.locator("#notice")).to_contain_text("connection to the gateway was lost")
    await expect(page.locator("article.assistant .msg-meta")).to_contain_text("connection lost")
    await page.locator("article.assistant [data-action=copy]").click()
    kept = await page.evaluate("navigator.clipboard.readText()")
    assert kept and "".join(recorder_of(gateway).texts).startswith(kept)


async def test_model_loading_is_shown_until_the_gateway_is_ready(start_ui_gateway, open_page, monkeypatch):
    import nanochat_gateway.app as app_module

    gate = threading.Event()
    real_load = app_module.load_model

    def slow_load(*args, **kwargs):
        gate.wait(timeout=60)  # a large checkpoint still being read
        return real_load(*args, **kwargs)

    monkeypatch.setattr(app_module, "load_model", slow_load)
    try:
        gateway = await start_ui_gateway(wait_ready=False, **{"server.retry_after_s": 1})
        chat = await open_page(gateway, wait_ready=False)
        page = chat.page
        await expect(page.locator("#status")).to_have_text("model loading…")
        await expect(page.locator("#send")).to_be_disabled()
        await page.locator("#input").fill("typed while loading")
        await asyncio.sleep(1.5)
        await expect(page.locator("#status")).to_have_text("model loading…")
    finally:
        gate.set()
    await chat.ready()
    await expect(page.locator("#send")).to_be_enabled()
    await expect(page.locator("#model-name")).to_have_text(gateway.model_id)


async def test_the_demo_banner_shows_for_a_random_model_only(start_ui_gateway, open_page):
    demo = await open_page(await start_ui_gateway())
    await expect(demo.page.locator("#demo-banner")).to_be_visible()
    await expect(demo.page.locator("#demo-banner")).to_contain_text("random")
    trained = await open_page(await start_ui_gateway(GOLDEN / "2026-07"))
    await expect(trained.page.locator("#demo-banner")).to_be_hidden()


async def test_a_phone_screen_never_scrolls_sideways(start_ui_gateway, open_page, tmp_path_factory):
    long_word = "x" * 400
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": [f"{long_word} https://example.com/{long_word}"]}})
    shots = tmp_path_factory.mktemp("ui-phone")
    for scheme in ("light", "dark"):
        chat = await open_page(gateway, viewport=PHONE, color_scheme=scheme)
        page = chat.page
        await chat.ask(long_word)
        fits = "() => document.documentElement.scrollWidth <= innerWidth && document.body.scrollWidth <= innerWidth"
        assert await page.evaluate(fits)
        assert await page.evaluate("() => { const m = document.getElementById('messages'); "
                                   "return m.scrollWidth <= m.clientWidth; }")
        await page.locator("#toggle-sidebar").click()
        sidebar = page.locator("#sidebar")
        await expect(sidebar).to_be_in_viewport(ratio=1)
        await page.screenshot(path=shots / f"phone-list-{scheme}.png")
        await page.keyboard.press("Escape")
        await expect(sidebar).not_to_be_in_viewport()
        await page.locator("#open-settings").click()
        await expect(page.locator("#settings")).to_be_visible()
        assert await page.evaluate(fits)
        await page.screenshot(path=shots / f"phone-settings-{scheme}.png")
        await page.locator("#close-settings").click()
    print(f"screenshots of the page on a phone: {shots}")


async def test_the_keyboard_alone_drives_the_page(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"ban_end_tokens": True}})
    recorder = recorder_of(gateway)
    chat = await open_page(gateway)
    page = chat.page
    assert await page.evaluate("document.activeElement.id") == "input"
    await page.keyboard.type("/max_tokens 4")
    await page.keyboard.press("Enter")
    await page.keyboard.type("line one")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("line two")
    assert await page.locator("#input").input_value() == "line one\nline two" and recorder.bodies == []
    await page.keyboard.press("Enter")
    await chat.idle()
    await expect(page.locator("article.assistant:not(.writing)")).to_have_count(1)
    assert recorder.bodies[-1]["messages"][-1]["content"] == "line one\nline two"

    for _ in range(40):  # Tab through the page to the gear
        if await page.evaluate("document.activeElement.id") == "open-settings":
            break
        await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(page.locator("#settings")).to_be_visible()
    assert await page.evaluate("document.activeElement.id") == "set-temperature"
    await page.keyboard.press("Escape")
    await expect(page.locator("#settings")).to_be_hidden()
    assert await page.evaluate("document.activeElement.id") == "open-settings"

    await page.keyboard.press("Control+Shift+N")
    await expect(page.locator("#messages article")).to_have_count(0)
    assert await page.evaluate("document.activeElement.id") == "input"
    await page.keyboard.type("/max_tokens 1800")
    await page.keyboard.press("Enter")
    await page.keyboard.type("go on")
    await page.keyboard.press("Enter")
    await page.wait_for_function("() => document.querySelector('article.writing .msg-body')?.textContent.length > 5")
    await page.keyboard.press("Escape")  # stops the reply
    await expect(page.locator("article.assistant .msg-meta")).to_contain_text("stopped by you")
    assert len(await chat.chat_titles()) == 2


async def test_the_view_follows_the_stream_only_from_the_bottom(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"ban_end_tokens": True}})
    chat = await open_page(gateway, viewport={"width": 700, "height": 420})
    page = chat.page
    box = "document.getElementById('messages')"
    at_bottom = f"() => {box}.scrollHeight - {box}.scrollTop - {box}.clientHeight < 50"
    await chat.send("/max_tokens 1800")
    await chat.send("\n".join(f"line {n}" for n in range(40)))  # taller than the view from the start
    await page.wait_for_function(f"() => {box}.querySelector('article.writing .msg-body')?.textContent.length > 0")
    assert await page.evaluate(at_bottom)

    async def grows() -> None:
        height = await page.evaluate(f"{box}.scrollHeight")
        await page.wait_for_function(f"() => {box}.scrollHeight > {height} + 20")

    await page.locator("#messages").hover()
    await page.mouse.wheel(0, -100_000)
    await page.wait_for_function(f"() => {box}.scrollTop === 0")
    await grows()
    assert await page.evaluate(f"{box}.scrollTop") == 0  # reading above: left alone
    await page.mouse.wheel(0, 100_000)
    await page.wait_for_function(at_bottom)
    await grows()
    assert await page.evaluate(at_bottom)  # back at the bottom: following again
    await page.locator("#stop").click()
    await chat.idle()
