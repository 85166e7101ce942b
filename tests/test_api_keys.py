"""api_keys plugin: a real gateway on loopback, keys from every source, the CLI's config line."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import aiohttp
import pytest

from nanochat_gateway.app import create_app
from nanochat_gateway.cli import main as cli_main
from nanochat_gateway.config import ConfigError, load_settings
from nanochat_gateway.plugins import API_KEY_NAME, Plugin
from plugins.api_keys import new_key

ALICE, BOB = "ncg-alice-test-key", "ncg-bob-test-key"
METRICS_TOKEN = "scrape-me"


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class KeyNames(Plugin):
    """Records the key name api_keys stored on each request that got through."""

    name = "key_names"

    def __init__(self, settings, context):
        super().__init__(settings, context)
        self.seen: list[str | None] = []
        self.events: list[tuple[str, dict]] = []

    async def middleware(self, request, handler):
        self.seen.append(request.get(API_KEY_NAME))
        return await handler(request)

    def on_event(self, event, labels):
        self.events.append((event, labels))


def plugin_of(gateway, name: str):
    return next(p for p in gateway.state.plugins if p.name == name)


async def get(url: str, headers: dict | None = None, method: str = "GET"):
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as resp:
        body = await resp.json(content_type=None) if resp.content_type == "application/json" else None
        return resp.status, resp.headers, body


async def test_keys_accepted_rejected_and_public_paths(start_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    gateway = await start_gateway(**{
        "plugins.enabled": ["api_keys", "test_api_keys:KeyNames"],
        "plugins.api_keys": {"keys": {"alice": digest(ALICE), "bob": digest(BOB).upper().replace("SHA256", "sha256")},
                             "metrics_token": digest(METRICS_TOKEN)},
    }, wait_ready=False)
    models = f"{gateway.url}/v1/models"
    status, _, _ = await get(models, {"Authorization": f"Bearer {ALICE}"})
    assert status != 401
    status, _, _ = await get(models, {"x-api-key": BOB})
    assert status != 401
    status, _, _ = await get(models, {"authorization": f"bearer {BOB}"})  # the scheme is case-insensitive
    assert status != 401
    assert plugin_of(gateway, "key_names").seen == ["alice", "bob", "bob"]

    for headers, reason in [(None, "missing_key"), ({"Authorization": "Bearer nope"}, "invalid_key"),
                            ({"x-api-key": ALICE + "x"}, "invalid_key"), ({"Authorization": ALICE}, "missing_key")]:
        status, resp_headers, body = await get(models, headers)
        assert status == 401, headers
        assert resp_headers["WWW-Authenticate"] == "Bearer"
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
        assert plugin_of(gateway, "key_names").events[-1] == ("auth_failure", {"reason": reason})
    for path in ("/health", "/ready", "/openapi.json"):
        status, _, _ = await get(gateway.url + path)
        assert status in (200, 503), path  # /ready may still say "loading"; it is not a 401
    status, _, _ = await get(models, method="OPTIONS")
    assert status != 401  # CORS preflight carries no credentials

    # /metrics takes only its own token (a 404 afterwards proves the request got past auth)
    status, _, _ = await get(f"{gateway.url}/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status != 401
    for headers in (None, {"Authorization": f"Bearer {ALICE}"}):
        status, _, _ = await get(f"{gateway.url}/metrics", headers)
        assert status == 401
    text = caplog.text
    for secret in (ALICE, BOB, METRICS_TOKEN, digest(ALICE)[7:], digest(BOB)[7:]):
        assert secret not in text


async def test_no_keys_means_open_with_a_warning(start_gateway, caplog):
    caplog.set_level(logging.WARNING)
    gateway = await start_gateway(**{"plugins.enabled": ["api_keys"]}, wait_ready=False)
    status, _, _ = await get(f"{gateway.url}/v1/models")
    assert status != 401
    assert any(r.levelno == logging.WARNING and "OPEN" in r.getMessage() for r in caplog.records)


async def test_keys_file_and_env(start_gateway, tmp_path, monkeypatch):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# team keys\n\nalice = {digest(ALICE)}  # laptop\n")
    monkeypatch.setenv("TEST_NCG_KEYS", f"bob={digest(BOB)}, carol = {digest('carol-key')}")
    gateway = await start_gateway(**{
        "plugins.enabled": ["api_keys", "test_api_keys:KeyNames"],
        "plugins.api_keys": {"keys_file": str(keys_file), "keys_env": "TEST_NCG_KEYS"},
    }, wait_ready=False)
    for key in (ALICE, BOB, "carol-key"):
        status, _, _ = await get(f"{gateway.url}/v1/models", {"Authorization": f"Bearer {key}"})
        assert status != 401
    assert plugin_of(gateway, "key_names").seen == ["alice", "bob", "carol"]


@pytest.mark.parametrize("table, words", [
    ({"keys": {"alice": "sha256:1234"}}, ["api_keys", "'alice'", "64 hex"]),
    ({"keys": {"alice": ALICE}}, ["api_keys", "'alice'", "plain key"]),
    ({"keys": {"alice": digest(ALICE), "bob": digest(ALICE)}}, ["'bob'", "already configured as 'alice'"]),
    ({"keys": {"bad name": digest(ALICE)}}, ["'bad name'"]),
    ({"keys_env": "TEST_NCG_UNSET_VARIABLE"}, ["keys_env", "TEST_NCG_UNSET_VARIABLE", "not set"]),
    ({"metrics_token": "hunter2"}, ["metrics_token"]),
])
def test_bad_configuration_stops_start_up(table, words, monkeypatch):
    monkeypatch.delenv("TEST_NCG_UNSET_VARIABLE", raising=False)
    settings = load_settings(None, env={}, overrides={"plugins.enabled": ["api_keys"], "plugins.api_keys": table})
    with pytest.raises(ConfigError) as caught:
        create_app(settings)
    message = str(caught.value)
    for word in words:
        assert word in message
    assert ALICE not in message and "hunter2" not in message  # a misplaced secret is never echoed


SHIPPED_CONFIG = Path(__file__).parent.parent / "config.toml"
KEYS_HEADER = "[plugins.api_keys.keys]\n"


def new_key_lines(capsys, name: str) -> tuple[str, str, str]:
    """(key, config line, keys_env entry) as `nanochat-gateway keys new NAME` prints them."""
    assert cli_main(["keys", "new", name]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^\s+(ncg-\S+)$", out, re.M).group(1)
    config_line, env_entry = [line for line in out.splitlines() if "sha256:" in line]
    return key, config_line, env_entry.strip()


async def test_cli_key_lines_paste_into_the_shipped_config(start_gateway, capsys, tmp_path):
    alice, alice_line, _ = new_key_lines(capsys, "alice.smith@example.com")
    bob, bob_line, _ = new_key_lines(capsys, "bob")
    assert len(alice) == 4 + 43
    text = SHIPPED_CONFIG.read_text()
    assert text.count(KEYS_HEADER) == 1
    # Pasted where the output says: right below the header, one line per key.
    config = tmp_path / "config.toml"
    config.write_text(text.replace(KEYS_HEADER, KEYS_HEADER + alice_line + "\n" + bob_line + "\n"))
    settings = load_settings(config, env={})
    gateway = await start_gateway(**{"plugins.enabled": ["api_keys", "test_api_keys:KeyNames"],
                                     "plugins.api_keys": settings.plugins.table("api_keys")}, wait_ready=False)
    for key in (alice, bob):
        status, _, _ = await get(f"{gateway.url}/v1/models", {"Authorization": f"Bearer {key}"})
        assert status != 401
    assert plugin_of(gateway, "key_names").seen == ["alice.smith@example.com", "bob"]


async def test_cli_env_entry_works_in_keys_env(start_gateway, capsys, monkeypatch):
    key, _, entry = new_key_lines(capsys, "carol")
    _, _, other = new_key_lines(capsys, "dave")
    monkeypatch.setenv("TEST_NCG_CLI_KEYS", f"{entry},{other}")
    gateway = await start_gateway(**{"plugins.enabled": ["api_keys", "test_api_keys:KeyNames"],
                                     "plugins.api_keys": {"keys_env": "TEST_NCG_CLI_KEYS"}}, wait_ready=False)
    status, _, _ = await get(f"{gateway.url}/v1/models", {"Authorization": f"Bearer {key}"})
    assert status != 401 and plugin_of(gateway, "key_names").seen == ["carol"]


def test_a_fresh_key_each_time() -> None:
    key, key_digest = new_key()
    fresh, fresh_digest = new_key()
    assert fresh != key and fresh_digest == digest(fresh) and key_digest == digest(key)


async def test_a_wrong_method_is_405_before_any_key_check(start_gateway):
    gateway = await start_gateway(**{"plugins.enabled": ["api_keys"],
                                     "plugins.api_keys": {"keys": {"alice": digest(ALICE)}}})
    status, headers, body = await get(f"{gateway.url}/v1/models", method="TRACE")
    assert status == 405 and body["error"]["code"] == "method_not_allowed" and "GET" in headers["Allow"]
    status, _, body = await get(f"{gateway.url}/v1/models")  # the route itself still needs the key
    assert status == 401
