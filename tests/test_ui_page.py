"""The chat page as files and HTTP: package data, headers, caching, [ui] enabled, api_keys and rate_limit.

What the page does in a browser is tested in test_ui_chat.py and test_ui_app.py.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from nanochat_gateway.api import ui

ROOT = Path(__file__).resolve().parent.parent
UI_DIR = ROOT / "nanochat_gateway" / "ui"
SIZE_BUDGET = 100 * 1024
ALICE = "ncg-alice-ui-key"


async def fetch(url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    """GET as sent: bodies not decompressed (plain unless the test asks for an encoding)."""
    headers.setdefault("Accept-Encoding", "identity")
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.get(url, headers=headers) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def page_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_every_page_file_is_package_data_and_the_page_is_small():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["nanochat_gateway"]
    files = [path for path in UI_DIR.iterdir() if path.is_file()]
    for path in files:
        assert any(fnmatch(f"ui/{path.name}", pattern) for pattern in patterns), f"{path.name} is not package data"
        assert path.suffix in ui.CONTENT_TYPES, f"{path.name} would not be served"
    total = sum(path.stat().st_size for path in files)
    assert total < SIZE_BUDGET, f"the page is {total} bytes"


def test_page_files_hold_no_inline_code_no_html_injection_and_no_outside_urls():
    html = (UI_DIR / "index.html").read_text()
    assert "<script>" not in html and " style=" not in html and "<style" not in html
    assert re.search(r"\son\w+=", html) is None, "inline event handlers need 'unsafe-inline'"
    for path in UI_DIR.glob("*.js"):
        source = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{path.name} uses {sink}"
    for path in UI_DIR.iterdir():
        text = path.read_text()
        urls = re.findall(r"https?://[^\s\"'<>)]+", text)
        assert all(url.startswith("http://www.w3.org/2000/svg") for url in urls), f"{path.name} names {urls}"


async def test_page_and_files_are_served_with_csp_and_caching(start_gateway):
    gateway = await start_gateway()
    status, headers, body = await fetch(gateway.url + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"].startswith("default-src 'self';")
    assert "unsafe" not in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-cache" and headers["X-Content-Type-Options"] == "nosniff"
    # Revalidation: the same page is a 304 without a body.
    status, again, body304 = await fetch(gateway.url + "/", **{"If-None-Match": headers["ETag"]})
    assert status == 304 and body304 == b"" and again["ETag"] == headers["ETag"]

    html = body.decode()
    version, files = ui.load_files()
    urls = page_urls(html)
    assert urls and all(url.startswith(f"/ui/{version}/") for url in urls)
    assert "{{version}}" not in html
    for url in [*urls, f"/ui/{version}/sse.js"]:
        status, headers, content = await fetch(gateway.url + url)
        assert status == 200, url
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert content == (UI_DIR / url.rsplit("/", 1)[1]).read_bytes()
    status, headers, _ = await fetch(gateway.url + f"/ui/{version}/app.js")
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    # The version is the files' contents: any change gives new URLs.
    digest = hashlib.sha256()
    for name in sorted(p.name for p in UI_DIR.iterdir() if p.suffix in ui.CONTENT_TYPES):
        digest.update(name.encode() + b"\0" + hashlib.sha256((UI_DIR / name).read_bytes()).digest())
    assert version == digest.hexdigest()[:12]
    # Compressed when the browser asks for it.
    status, headers, _ = await fetch(gateway.url + f"/ui/{version}/app.js", **{"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    # Anything else under /ui/ is the usual JSON 404.
    status, headers, body = await fetch(gateway.url + "/ui/0000/app.js")
    assert status == 404 and headers["Content-Type"].startswith("application/json")


async def test_ui_disabled_serves_no_page(start_gateway):
    gateway = await start_gateway(**{"ui.enabled": False})
    status, headers, body = await fetch(gateway.url + "/")
    assert status == 404 and b"unknown_url" in body
    assert not any(r.canonical.startswith("/ui/") for r in gateway.app.router.resources())


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


async def test_page_is_public_under_api_keys_while_the_api_is_not(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["api_keys"],
                                     "plugins.api_keys": {"keys": {"alice": digest(ALICE)}}})
    status, _, body = await fetch(gateway.url + "/")
    assert status == 200
    for url in page_urls(body.decode()):
        assert (await fetch(gateway.url + url))[0] == 200, url
    assert (await fetch(gateway.url + "/v1/models"))[0] == 401
    assert (await fetch(gateway.url + "/v1/models", Authorization=f"Bearer {ALICE}"))[0] == 200
    # Only the page's exact paths are open: nothing reaches the API through them.
    version, _ = ui.load_files()
    for path in (f"/ui/{version}/../../v1/models", f"/ui/{version}/app.js/../../../v1/models", "/ui/"):
        status, _, _ = await fetch(gateway.url + path)
        assert status in (401, 404), path


async def test_loading_the_page_spends_no_rate_limit(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["rate_limit"],
                                     "plugins.rate_limit": {"requests_per_minute": 1}})
    for _ in range(3):
        status, _, body = await fetch(gateway.url + "/")
        assert status == 200
        for url in page_urls(body.decode()):
            assert (await fetch(gateway.url + url))[0] == 200
        assert (await fetch(gateway.url + "/v1/models"))[0] == 200
        assert (await fetch(gateway.url + "/ready"))[0] == 200
