"""The log set-up of `serve`: credentials never reach a line, in any format, and any text can be written."""

from __future__ import annotations

import logging
import sys

import pytest

from nanochat_gateway.logs import setup_logging
from nanochat_gateway.redact import printable, redact_secrets

KEY = "ncg-Zq0LsecretSECRETsecret0123456789abcdef"


@pytest.fixture
def gateway_log(capsys):
    """setup_logging(level, fmt) as `serve` does; yields a reader of what was logged, then restores logging."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def start(fmt: str) -> None:
        setup_logging("info", fmt)

    def text() -> str:
        sys.stderr.flush()
        return capsys.readouterr().err

    yield start, text
    root.handlers[:], level = saved
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_log_filter_masks_keys_anywhere_in_a_record(gateway_log, fmt):
    start_logging, logged = gateway_log
    start_logging(fmt)
    log = logging.getLogger("nanochat_gateway.test")
    log.error("header was %r", f"Authorization: Bearer {KEY}")
    log.warning("token %s and x-api-key: %s", KEY, "plainsecret", extra={"detail": f"Bearer {KEY}"})
    try:
        raise ValueError(f"Invalid header value char: b'Authorization: Bearer {KEY}\\x01'")
    except ValueError:
        log.exception("failed")
    log.info("lone surrogate \ud800 stays writable")
    text = logged()
    assert KEY not in text and "plainsecret" not in text and "--- Logging error ---" not in text
    assert text.count("***") >= 4
    assert "\\ud800" in text


@pytest.mark.parametrize("text, expected", [
    (f"b'Authorization: Bearer {KEY}\\x01'", "b'Authorization: ***'"),
    ('{"authorization": "Bearer sk-abcdefghijklmnop0123"}', '{"authorization": "***"}'),
    ("x-api-key: abc123", "x-api-key: ***"),
    (f"token {KEY} used", "token *** used"),
    ("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: ***"),
    ("the api_keys plugin loaded 3 keys", "the api_keys plugin loaded 3 keys"),
])
def test_redact_secrets(text, expected):
    assert redact_secrets(text) == expected


def test_printable_escapes_lone_surrogates_only():
    assert printable("a\ud800b\udfffc") == "a\\ud800b\\udfffc"
    assert printable("h\u00e9llo \U0001f600") == "h\u00e9llo \U0001f600"
    printable("x\ud800").encode("utf-8")
