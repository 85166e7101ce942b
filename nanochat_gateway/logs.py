"""Logging set-up: plain text, JSON lines, or key=value lines, from [logging].

Every record passes through ``RedactingFilter`` first, whatever its format: credentials
(``Authorization`` values, API keys) are masked in the message, the traceback and any extra
field, and lone surrogates are escaped so that writing a line never fails.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from nanochat_gateway.redact import printable, redact_secrets

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Masks secrets in a record before any formatter sees it (installed on the log handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _safe(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _safe(record.exc_text)
        if record.stack_info:
            record.stack_info = _safe(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, _safe(value))
        return True


def _safe(text: str) -> str:
    return redact_secrets(printable(text))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    # Anything passed with `extra=` becomes a field of its own.
    fields.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        fields["exc"] = record.exc_text
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = str(value)
            if not text or any(c in text for c in ' ="\n'):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        return " ".join(parts)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record to stderr in ``fmt`` at ``level`` and above, secrets masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "keyvalue":
        handler.setFormatter(KeyValueFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log duplicates request_log's one line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
