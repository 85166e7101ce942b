"""api_keys: named API keys, stored only as SHA-256 digests, checked on every request.

Clients send ``Authorization: Bearer <key>`` (what the openai SDK sends) or ``x-api-key: <key>``.
Keys come from three places, merged at start-up (a name or digest may appear only once):

    [plugins.api_keys]
    keys_file = "/etc/nanochat/keys.txt"       # lines "name = sha256:<hex>", '#' starts a comment
    keys_env = "NANOCHAT_API_KEYS"             # "name=sha256:<hex>,name2=sha256:<hex>"
    [plugins.api_keys.keys]                     # the shipped config.toml ends the section with it
    alice = "sha256:<64 hex>"                  # (or keys = { alice = "..." } in [plugins.api_keys])

``nanochat-gateway keys new NAME`` prints a fresh key, its line for [plugins.api_keys.keys] and
its keys_env entry. A request passes when
the SHA-256 of the presented key equals a configured digest (compared with hmac.compare_digest
against every digest, so the time taken does not depend on which key matched); the key's name is
then stored as ``request[API_KEY_NAME]`` for rate limiting and logs. Otherwise the answer is 401
in OpenAI's shape with ``WWW-Authenticate: Bearer``. Paths in ``public_paths``, the chat page and
its static files (``PluginContext.public_paths``; the page asks for a key when the API answers 401)
and OPTIONS (CORS preflight) requests need no key; ``/metrics`` needs ``metrics_token`` (and only it) when set.
With no keys configured the plugin lets everything through and warns at start-up. Keys and
digests are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from nanochat_gateway.api import errors
from nanochat_gateway.config import ConfigError
from nanochat_gateway.plugins import API_KEY_NAME, Handler, Plugin, PluginContext

log = logging.getLogger(__name__)

KEY_PREFIX = "ncg-"
DIGEST_PREFIX = "sha256:"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# Names end up in logs, metrics labels and Redis keys: keep them plain.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
_FILE_LINE_RE = re.compile(r"(?P<name>[^=\s]+)\s*=\s*(?P<digest>\S+)")


def new_key() -> tuple[str, str]:
    """Return a fresh random API key and its ``"sha256:<hex>"`` digest for the config."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


class ApiKeysSettings(BaseModel):
    """The ``[plugins.api_keys]`` table."""

    model_config = ConfigDict(extra="forbid")

    keys: dict[str, str] = Field(default_factory=dict, description='key name -> "sha256:<64 hex>"')
    keys_file: str = Field("", description="file of 'name = sha256:<hex>' lines; '#' comments")
    keys_env: str = Field("", description="env variable holding 'name=sha256:<hex>,...'")
    public_paths: list[str] = Field(
        default_factory=lambda: ["/health", "/ready", "/openapi.json"],
        description="paths open without a key; an entry ending in '*' is a prefix",
    )
    metrics_token: str = Field("", description='"sha256:<hex>" of the token metrics_path requires')
    metrics_path: str = Field("/metrics", description="the path metrics_token guards (as [plugins.metrics] path)")


class _KeySet:
    """Collects (name, digest) pairs from every source, refusing bad or ambiguous entries."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, bytes]] = []
        self._names: dict[str, str] = {}
        self._digests: dict[bytes, str] = {}

    def add(self, name: str, digest: str, where: str) -> None:
        # The message never quotes the digest: it may be a plain key pasted by mistake.
        problem = f"[plugins.api_keys] {where}: key {name!r}"
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{problem}: a name is 1-64 characters of letters, digits and _.@+-")
        raw = parse_digest(digest, problem)
        if name in self._names:
            raise ConfigError(f"{problem}: the name is already defined in {self._names[name]}")
        if raw in self._digests:
            raise ConfigError(f"{problem}: the same key is already configured as {self._digests[raw]!r}")
        self._names[name], self._digests[raw] = where, name
        self.entries.append((name, raw))


def parse_digest(digest: str, problem: str) -> bytes:
    """Return the 32 bytes of a ``"sha256:<64 lowercase hex>"`` digest or raise ConfigError."""
    digest = digest.strip()
    if digest.startswith(KEY_PREFIX):
        raise ConfigError(f"{problem}: this is a plain key, configure its digest instead "
                          "(`nanochat-gateway keys new NAME` prints both)")
    if not _DIGEST_RE.fullmatch(digest.lower()):
        raise ConfigError(f"{problem}: expected 'sha256:' followed by 64 hex digits "
                          f"(got a {len(digest)}-character value)")
    return bytes.fromhex(digest[len(DIGEST_PREFIX):])


def load_keys(settings: ApiKeysSettings, environ: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Merge the keys of the inline table, keys_file and keys_env; raise ConfigError on any problem."""
    keys = _KeySet()
    for name, digest in settings.keys.items():
        keys.add(name, digest, "keys")
    if settings.keys_file:
        path = Path(settings.keys_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"[plugins.api_keys] keys_file: cannot read {str(path)!r}: {exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = _FILE_LINE_RE.fullmatch(line)
            if match is None:
                raise ConfigError(f"[plugins.api_keys] keys_file {str(path)!r} line {number}: "
                                  "expected 'name = sha256:<64 hex>'")
            keys.add(match["name"], match["digest"], f"keys_file line {number}")
    if settings.keys_env:
        listed = environ.get(settings.keys_env)
        if listed is None:
            raise ConfigError(f"[plugins.api_keys] keys_env: the environment variable "
                              f"{settings.keys_env!r} is not set")
        for item in filter(None, (part.strip() for part in listed.split(","))):
            name, sep, digest = item.partition("=")
            if not sep:
                raise ConfigError(f"[plugins.api_keys] keys_env {settings.keys_env}: expected "
                                  "'name=sha256:<hex>' items separated by commas")
            keys.add(name.strip(), digest, f"keys_env {settings.keys_env}")
    return keys.entries


def presented_keys(request: web.Request) -> list[str]:
    """The credentials a request carries: the Bearer token and/or the x-api-key header."""
    found = []
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        found.append(token.strip())
    if api_key := request.headers.get("x-api-key", "").strip():
        found.append(api_key)
    return found


def match_key(candidates: list[str], entries: list[tuple[str, bytes]]) -> str | None:
    """Name of the configured key one of ``candidates`` is, comparing every digest every time."""
    matched = None
    for candidate in candidates:
        presented = hashlib.sha256(candidate.encode("utf-8", "surrogateescape")).digest()
        for name, digest in entries:
            # No early exit: the work is the same whichever key (if any) matches.
            if hmac.compare_digest(presented, digest) and matched is None:
                matched = name
    return matched


class ApiKeys(Plugin):
    """Require a configured API key on every non-public path."""

    name = "api_keys"
    Settings = ApiKeysSettings
    settings: ApiKeysSettings

    def __init__(self, settings: ApiKeysSettings, context: PluginContext) -> None:
        super().__init__(settings, context)
        # Read and validated here, inside create_app, so a bad key stops start-up with a clear message.
        self.entries = load_keys(settings, os.environ)
        self.metrics_digest = (parse_digest(settings.metrics_token, "[plugins.api_keys] metrics_token")
                               if settings.metrics_token else None)
        self.exact_public = {p for p in settings.public_paths if not p.endswith("*")}
        self.public_prefixes = tuple(p[:-1] for p in settings.public_paths if p.endswith("*"))

    async def startup(self) -> None:
        if not self.entries:
            log.warning("api_keys: no API keys are configured, so the API is OPEN to anyone who can reach "
                        "it; add keys under [plugins.api_keys] (see `nanochat-gateway keys new NAME`)")
        else:
            log.info("api_keys: %d key(s) configured%s", len(self.entries),
                     f", {self.settings.metrics_path} needs its token" if self.metrics_digest else "")

    def is_public(self, path: str) -> bool:
        """Whether ``path`` is served without a key (its own public_paths, or the gateway's chat page)."""
        return (path in self.exact_public or path.startswith(self.public_prefixes)
                or path in self.context.public_paths)

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return await handler(request)  # CORS preflight never carries credentials
        if request.path == self.settings.metrics_path and self.metrics_digest is not None:
            self._check(request, [("metrics", self.metrics_digest)])
            return await handler(request)
        if isinstance(request.match_info.http_exception, web.HTTPMethodNotAllowed):
            # A method the route does not serve (TRACE, ...): the 405 reveals no more than /openapi.json.
            return await handler(request)
        if not self.entries or self.is_public(request.path):
            return await handler(request)
        request[API_KEY_NAME] = self._check(request, self.entries)
        return await handler(request)

    def _check(self, request: web.Request, entries: list[tuple[str, bytes]]) -> str:
        candidates = presented_keys(request)
        name = match_key(candidates, entries) if candidates else None
        if name is not None:
            return name
        reason = "invalid_key" if candidates else "missing_key"
        self.context.count("auth_failure", reason=reason)
        log.debug("api_keys: %s on %s %s from %s", reason, request.method, request.path, request.remote)
        if reason == "missing_key":
            raise errors.authentication_error(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
                "(or in an 'x-api-key' header)."
            )
        raise errors.authentication_error("Incorrect API key provided.")
