"""The chat page for people: GET / and its static files, shipped as package data.

- The files of ``nanochat_gateway/ui/`` are read once, when the app is built, and served
  from memory. Their URLs carry a version made from their contents (``/ui/<version>/app.js``),
  so browsers keep them for a year and still fetch a new release at once; the page itself
  is revalidated on every load (ETag, 304).
- ``Content-Security-Policy: default-src 'self'``: the page loads nothing from elsewhere and
  runs no inline script, so text that slips into the DOM can never run.
- Nothing here knows about keys or limits: the page calls the public API like any client.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

PAGE_PATH = "/"
STATIC_PREFIX = "/ui/"
FILE_ROUTE = STATIC_PREFIX + "{version}/{name}"
PAGE_FILE = "index.html"
# index.html names its files as {{version}}/<name>, filled in when the app is built.
VERSION_MARK = "{{version}}"
CONTENT_SECURITY_POLICY = "default-src 'self'; base-uri 'none'; frame-ancestors 'none'"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The page may change with every release; the versioned files never change under their URL.
PAGE_CACHE = "no-cache"
FILE_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class StaticFile:
    """One file of the page, ready to send."""

    body: bytes
    content_type: str
    etag: str  # weak: the same tag covers the gzip and the plain form
    cache_control: str


def load_files() -> tuple[str, dict[str, StaticFile]]:
    """Read the page's files from package data; return (version, files by URL path)."""
    folder = resources.files("nanochat_gateway").joinpath("ui")
    sources = {item.name: item.read_bytes() for item in folder.iterdir()
               if item.is_file() and _suffix(item.name) in CONTENT_TYPES}
    if PAGE_FILE not in sources:
        raise RuntimeError(f"the chat page is missing from the package: {PAGE_FILE} not in {folder}")
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + hashlib.sha256(sources[name]).digest())
    version = digest.hexdigest()[:12]
    files: dict[str, StaticFile] = {}
    for name, body in sources.items():
        if name == PAGE_FILE:
            body = body.replace(VERSION_MARK.encode(), f"{STATIC_PREFIX}{version}".encode())
            files[PAGE_PATH] = _static(name, body, PAGE_CACHE)
        else:
            files[f"{STATIC_PREFIX}{version}/{name}"] = _static(name, body, FILE_CACHE)
    return version, files


def add_routes(app: web.Application) -> set[str]:
    """Serve the chat page at / and its files under /ui/<version>/; return the paths served."""
    _, files = load_files()
    serve = _handler(files)
    app.router.add_get(PAGE_PATH, serve)
    app.router.add_get(FILE_ROUTE, serve)
    return set(files)


def _handler(files: dict[str, StaticFile]) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        file = files.get(request.path)
        if file is None:  # another version's file, or no such file
            raise web.HTTPNotFound()
        headers = {
            "ETag": file.etag,
            "Cache-Control": file.cache_control,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Vary": "Accept-Encoding",
        }
        if _matches(request, file.etag):
            return web.Response(status=304, headers=headers)
        response = web.Response(body=file.body, content_type=file.content_type, charset="utf-8",
                                headers=headers)
        response.enable_compression()
        return response

    return serve


def _matches(request: web.Request, etag: str) -> bool:
    """Whether If-None-Match names this file's tag (weak comparison, as RFC 9110 asks for GET)."""
    wanted = request.headers.get("If-None-Match", "")
    tags = {tag.strip().removeprefix("W/") for tag in wanted.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def _static(name: str, body: bytes, cache_control: str) -> StaticFile:
    etag = f'W/"{hashlib.sha256(body).hexdigest()[:16]}"'
    return StaticFile(body, CONTENT_TYPES[_suffix(name)], etag, cache_control)


def _suffix(name: str) -> str:
    return name[name.rfind("."):] if "." in name else ""
