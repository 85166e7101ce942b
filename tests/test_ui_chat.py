"""The chat page in headless Chromium against a real gateway: streaming, settings and slash
commands, stop, edit and regenerate, safe rendering, screenshots, and the page's own modules.

Every page is also checked for requests outside the gateway's origin and for script errors
(see ui_support.open_page). Screenshots land in a pytest temporary folder printed by the test.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from playwright.async_api import expect
from ui_support import DESKTOP, PHONE, recorder_of

from nanochat_gateway.api import ui

pytestmark = pytest.mark.asyncio(loop_scope="module")

XSS = ('<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> '
       '[click me](javascript:window.__xss=3) <a href="javascript:window.__xss=4">a</a> **<b>bold</b>**')
CODE = 'def greet(name):\n    return f"hello {name}"  # a comment long enough to be wider than a phone screen'
CODE_REPLY = (f"Here is **bold**, *italic* and `inline code`:\n\n```python\n{CODE}\n```\n\n"
              "- first item\n- second item\n\n1. one\n2. two\n\nSee [the docs](https://example.com/docs).")


async def running(gateway) -> int:
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/stats") as resp:
        return (await resp.json())["running"]


async def test_a_reply_streams_in_over_several_frames_with_its_numbers(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"ban_end_tokens": True}})
    chat = await open_page(gateway)
    page = chat.page
    await chat.send("/max_tokens 300")
    # The reply's length at every change of the conversation, as the browser drew it.
    await page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const body = document.querySelector('article.assistant .msg-body');
            if (body) window.lengths.push(body.textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    }""")
    await chat.ask("Tell me a story")
    # (Markdown markers vanish once closed, so the drawn length may dip by a character or two.)
    lengths = [n for n in await page.evaluate("window.lengths") if n]
    assert len(set(lengths)) >= 3 and lengths[0] < lengths[len(lengths) // 2] < lengths[-1], lengths

    recorder = recorder_of(gateway)
    body = recorder.bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == gateway.model_id and body["max_tokens"] == 300
    assert body["messages"] == [{"role": "user", "content": "Tell me a story"}]
    meta = await page.locator("article.assistant .msg-meta").inner_text()
    assert re.fullmatch(r"\d+\.\d\d s to first token · \d+\.\d tokens/s · 300 tokens · cut at max tokens", meta), meta
    # What the page kept is exactly what the server sent, character for character.
    await page.locator("article.assistant [data-action=copy]").click()
    assert await page.evaluate("navigator.clipboard.readText()") == recorder.texts[-1]


async def test_settings_and_slash_commands_shape_the_request_and_survive_a_reload(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": ["ok"]}})
    recorder = recorder_of(gateway)
    chat = await open_page(gateway)
    page = chat.page

    await page.locator("#open-settings").click()
    await page.locator("#set-temperature").fill("0.3")
    for name, value in [("topK", "7"), ("topP", "0.9"), ("maxTokens", "5"), ("seed", "42"), ("system", "Be terse.")]:
        await page.locator(f"#set-{name}").fill(value)
    await page.keyboard.press("Escape")
    await expect(page.locator("#settings")).to_be_hidden()
    await chat.ask("hi")
    body = recorder.bodies[-1]
    assert {k: body[k] for k in ("temperature", "top_k", "top_p", "max_tokens", "seed")} == {
        "temperature": 0.3, "top_k": 7, "top_p": 0.9, "max_tokens": 5, "seed": 42}
    assert body["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]

    for command in ["/temperature 1.5", "/topk 0", "/max_tokens 3", "/system You are a pirate."]:
        await chat.send(command)
    await expect(page.locator(".note").last).to_contain_text("System prompt: You are a pirate.")
    await chat.ask("again")
    body = recorder.bodies[-1]
    assert (body["temperature"], body["top_k"], body["max_tokens"], body["seed"]) == (1.5, 0, 3, 42)
    assert body["messages"] == [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]
    assert len(recorder.bodies) == 2, "commands are not sent to the model"

    await page.reload()
    await chat.ready()
    await page.locator("#open-settings").click()
    shown = {name: await page.locator(f"#set-{name}").input_value()
             for name in ("temperature", "topK", "topP", "maxTokens", "seed", "system")}
    assert shown == {"temperature": "1.5", "topK": "0", "topP": "0.9", "maxTokens": "3", "seed": "42",
                     "system": "You are a pirate."}
    # Blank seed and max tokens: random, and as long as the context allows.
    await page.locator("#set-seed").fill("")
    await page.locator("#set-maxTokens").fill("")
    await page.locator("#close-settings").click()
    await chat.ask("third")
    body = recorder.bodies[-1]
    assert "seed" not in body and "max_tokens" not in body and body["temperature"] == 1.5
    assert len(body["messages"]) == 6  # the conversation came back with the page

    # Refused values change nothing; unknown commands show the help; /clear starts afresh.
    await chat.send("/temperature 5")
    await expect(page.locator(".note").last).to_contain_text("Temperature must be from 0 to 2")
    await chat.send("/temperature")
    await expect(page.locator(".note").last).to_have_text("Temperature: 1.5")
    await chat.send("/nonsense 1")
    await expect(page.locator(".note").last).to_contain_text("Unknown command /nonsense")
    await expect(page.locator(".note").last).to_contain_text("/max_tokens N")
    await chat.send("/help")
    await expect(page.locator(".note").last).to_contain_text("/topk N")
    await chat.ask("//temperature is a word")
    await expect(page.locator("article.user .msg-body").last).to_have_text("/temperature is a word")
    await chat.send("/clear")
    await expect(page.locator("#messages article")).to_have_count(0)
    assert await chat.chat_titles() == ["hi"]
    assert len(recorder.bodies) == 4


async def test_stop_keeps_the_partial_reply_and_frees_the_slot_at_once(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"ban_end_tokens": True}})
    chat = await open_page(gateway)
    page = chat.page
    await chat.send("/max_tokens 1800")
    await chat.send("Go on and on")
    await page.wait_for_function("() => document.querySelector('article.writing .msg-body')?.textContent.length > 20")
    assert await running(gateway) == 1
    await page.locator("#stop").click()
    stopped = time.monotonic()
    while await running(gateway):
        assert time.monotonic() - stopped < 1.0, "the gateway still runs the stopped request"
        await asyncio.sleep(0.02)
    await chat.idle()
    reply = page.locator("article.assistant .msg-body")
    kept = await reply.inner_text()
    assert len(kept) > 20
    await expect(page.locator("article.assistant .msg-meta")).to_contain_text("stopped by you")
    await asyncio.sleep(0.3)
    assert await reply.inner_text() == kept
    # The partial reply is part of the conversation from now on.
    await page.reload()
    await chat.ready()
    assert (await chat.messages())[1] == ("assistant", kept)


async def test_edit_and_regenerate_cut_the_conversation_at_the_right_message(start_ui_gateway, open_page):
    replies = ["first reply", "second reply", "third reply", "edited reply", "regenerated reply"]
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": replies}})
    recorder = recorder_of(gateway)
    chat = await open_page(gateway)
    page = chat.page
    for text in ("one", "two", "three"):
        await chat.ask(text)
    await page.locator('article[data-index="2"] [data-action=edit]').click()
    editor = page.locator('article[data-index="2"] textarea')
    await editor.fill("two, edited")
    await editor.press("Enter")
    await chat.idle()
    await expect(page.locator("#messages article")).to_have_count(4)
    assert await chat.messages() == [("user", "one"), ("assistant", "first reply"), ("user", "two, edited"),
                                     ("assistant", "edited reply")]
    assert recorder.bodies[-1]["messages"] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "first reply"},
        {"role": "user", "content": "two, edited"}]

    await page.locator('article[data-index="1"] [data-action=regenerate]').click()
    await expect(page.locator("#messages article")).to_have_count(2)
    await chat.idle()
    assert await chat.messages() == [("user", "one"), ("assistant", "regenerated reply")]
    assert recorder.bodies[-1]["messages"] == [{"role": "user", "content": "one"}]

    # Escape leaves an edit without changing anything.
    await page.locator('article[data-index="0"] [data-action=edit]').click()
    await page.locator('article[data-index="0"] textarea').fill("never sent")
    await page.locator('article[data-index="0"] textarea').press("Escape")
    assert await chat.messages() == [("user", "one"), ("assistant", "regenerated reply")]
    await page.reload()
    await chat.ready()
    assert await chat.messages() == [("user", "one"), ("assistant", "regenerated reply")]
    assert len(recorder.bodies) == 5


async def test_html_and_script_in_messages_and_replies_stay_text(start_ui_gateway, open_page):
    reply = XSS + " [safe](https://example.com/docs) and http://example.org/x."
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": [reply]}})
    chat = await open_page(gateway)
    page = chat.page
    await chat.ask(XSS)
    messages = page.locator("#messages")
    assert await messages.locator("img, script, b, iframe").count() == 0
    assert await page.locator("#chat-list img, #chat-list script").count() == 0
    assert await page.evaluate("window.__xss") is None
    assert (await chat.messages())[0] == ("user", XSS)
    shown = (await chat.messages())[1][1]
    for piece in ('<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>",
                  "[click me](javascript:window.__xss=3)", '<a href="javascript:window.__xss=4">a</a>'):
        assert piece in shown
    links = messages.locator("a")
    assert await links.evaluate_all("links => links.map(a => [a.href, a.target, a.rel])") == [
        ["https://example.com/docs", "_blank", "noopener noreferrer nofollow"],
        ["http://example.org/x", "_blank", "noopener noreferrer nofollow"],
    ]
    await messages.locator("a").first.click(modifiers=["Control"])  # a link opens elsewhere, never runs code
    assert await page.evaluate("window.__xss") is None


async def test_markdown_replies_render_with_code_blocks_in_light_and_dark(start_ui_gateway, open_page,
                                                                          tmp_path_factory):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": [CODE_REPLY]}})
    shots = tmp_path_factory.mktemp("ui-screenshots")
    backgrounds = {}
    for viewport, scheme in [(DESKTOP, "light"), (DESKTOP, "dark"), (PHONE, "light"), (PHONE, "dark")]:
        chat = await open_page(gateway, viewport=viewport, color_scheme=scheme)
        page = chat.page
        await chat.ask("Show me some Python")
        reply = page.locator("article.assistant .msg-body")
        await expect(reply.locator(".code-block code")).to_have_text(CODE)
        await expect(reply.locator(".code-block .code-head span")).to_have_text("python")
        assert await reply.locator("strong").all_inner_texts() == ["bold"]
        assert await reply.locator("em").all_inner_texts() == ["italic"]
        assert await reply.locator("p code").all_inner_texts() == ["inline code"]
        assert await reply.locator("ul li").all_inner_texts() == ["first item", "second item"]
        assert await reply.locator("ol li").all_inner_texts() == ["one", "two"]
        await reply.locator(".copy-code").click()
        assert await page.evaluate("navigator.clipboard.readText()") == CODE
        await expect(reply.locator(".copy-code")).to_have_text("Copied")
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        backgrounds[scheme] = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        await page.screenshot(path=shots / f"chat-{viewport['width']}x{viewport['height']}-{scheme}.png")
    assert backgrounds["light"] == "rgb(255, 255, 255)" and backgrounds["dark"] != backgrounds["light"]
    print(f"screenshots of the chat page: {shots}")


async def test_page_modules_read_streams_render_safely_and_batch_redraws(start_ui_gateway, open_page):
    gateway = await start_ui_gateway()
    chat = await open_page(gateway)
    version, _ = ui.load_files()
    base = f"/ui/{version}"
    # The SSE reader: events split anywhere, multi-byte characters split between reads, CRLF
    # split between reads, comments and other fields ignored, nothing read after [DONE].
    result = await chat.page.evaluate("""async (base) => {
        const { readStream, StreamError } = await import(base + '/sse.js');
        const bytes = (text) => new TextEncoder().encode(text);
        const stream = (chunks) => new ReadableStream({ start(c) { chunks.forEach((x) => c.enqueue(x)); c.close(); } });
        const euro = bytes('data: {"t":"€😀"}\\n\\n');  // € is 3 bytes, 😀 is 4
        const cut = euro.indexOf(0xe2) + 1, cut2 = euro.indexOf(0xf0) + 2;
        const chunks = [bytes(': ping\\n\\nevent: x\\ndata: {"t":"a'), bytes('b"}\\r'), bytes('\\n\\r\\n'),
            euro.slice(0, cut), euro.slice(cut, cut2), euro.slice(cut2),
            bytes('data: {"t":\\ndata: "c"}\\n\\n: ping\\n\\ndata: [DONE]\\n\\ndata: {"t":"after"}\\n\\n')];
        const seen = [];
        const done = await readStream(stream(chunks), (e) => seen.push(e.t));
        const bare = [];
        const ended = await readStream(stream([bytes('data: {"t":"x"}\\n\\n')]), (e) => bare.push(e.t));
        let error = null;
        const before = [];
        try {
            await readStream(stream([bytes('data: {"t":"y"}\\n\\ndata: {"error":{"message":"boom","code":"timeout"}}\\n\\n')]),
                             (e) => before.push(e.t));
        } catch (e) { error = [e instanceof StreamError, e.message, e.code]; }
        return { seen, done, bare, ended, before, error };
    }""", base)
    assert result == {"seen": ["ab", "€😀", "c"], "done": True, "bare": ["x"], "ended": False, "before": ["y"],
                      "error": [True, "boom", "timeout"]}

    links = await chat.page.evaluate("""async (base) => {
        const { safeHref } = await import(base + '/markdown.js');
        return ['https://a.example/x', 'http://b.example', 'javascript:alert(1)', ' JavaScript:alert(1)',
                'data:text/html,<script>', 'vbscript:x', '/relative', 'mailto:a@b.example'].map(safeHref);
    }""", base)
    assert links == ["https://a.example/x", "http://b.example/", None, None, None, None, None, None]

    # A burst of 200 deltas between two frames is drawn once.
    redraws = await chat.page.evaluate("""async (base) => {
        const { ChatView } = await import(base + '/view.js');
        const box = document.createElement('div');
        document.body.append(box);
        const view = new ChatView(box, {});
        const chat = { messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: '' }] };
        view.render(chat, { streaming: 1 });
        let count = 0;
        new MutationObserver(() => count++).observe(box, { childList: true, subtree: true });
        for (let i = 0; i < 200; i++) { chat.messages[1].content += 'tok '; view.update(1); }
        await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
        const words = box.querySelector('article.writing .msg-body').textContent.trim().split(' ').length;
        box.remove();
        return { count, words };
    }""", base)
    assert redraws == {"count": 1, "words": 200}


async def test_the_page_talks_to_its_own_gateway_only(start_ui_gateway, open_page):
    gateway = await start_ui_gateway(**{"plugins.recorder": {"replies": ["See https://example.com/ for more."]}})
    chat = await open_page(gateway)
    page = chat.page
    responses = []
    page.on("response", lambda response: responses.append(response))
    await page.reload()
    await chat.ready()
    await chat.ask("hello")
    await page.locator("#open-settings").click()
    await page.locator("#close-settings").click()
    async with page.expect_download():
        await page.locator("#export-json").click()
    assert chat.foreign_requests() == []
    paths = {re.sub(r"/ui/\w+/", "/ui/V/", url.removeprefix(gateway.url)) for url in chat.requests
             if not url.startswith("blob:")}
    assert paths <= {"/", "/ui/V/app.js", "/ui/V/style.css", "/ui/V/icon.svg", "/ui/V/api.js", "/ui/V/sse.js",
                     "/ui/V/markdown.js", "/ui/V/store.js", "/ui/V/settings.js", "/ui/V/view.js", "/ui/V/sidebar.js",
                     "/ui/V/dialogs.js", "/ui/V/panel.js", "/ui/V/chats.js", "/ui/V/connection.js", "/ui/V/util.js",
                     "/ready", "/v1/models", "/v1/chat/completions"}, paths
    assert {"/", "/ready", "/v1/models", "/v1/chat/completions"} <= paths
    page_response = next(r for r in responses if r.url == gateway.url + "/")
    assert (await page_response.all_headers())["content-security-policy"].startswith("default-src 'self'")
    assert chat.errors == []
