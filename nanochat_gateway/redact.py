"""Text that is safe to log or send back: credentials masked, lone surrogates made printable.

Clients put secrets in headers (``Authorization: Bearer <key>``, ``x-api-key``, cookies), and
some failures quote the raw header bytes. ``redact_secrets`` masks the value after any of those
header names and anything that looks like an API key, wherever it appears in a text.
``printable`` turns lone surrogates (which JSON may carry as ``\\ud800`` but UTF-8 cannot
encode) into their escape, so writing the text never fails.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "printable", "redact_secrets"]

MASK = "***"

# A header name, then ": " or "=" (possibly quoted, as in a repr or JSON), then the value.
_SECRET_HEADER_RE = re.compile(
    r"(?P<name>\b(?:proxy-)?authorization|\bx-api-key|\bapi[-_]?key|\bcookie|\bset-cookie)"
    r"(?P<sep>['\"]?\s*[:=]\s*['\"]?)(?P<value>[^\r\n'\"]*)",
    re.IGNORECASE,
)
# Credentials that stand on their own: bearer/basic tokens, this gateway's keys, OpenAI-style keys.
_SECRET_TOKEN_RE = re.compile(
    r"(?P<prefix>\b(?:bearer|basic)\s+)[^\s'\",;\\]+"
    r"|\bncg-[A-Za-z0-9_\-]{8,}"
    r"|\bsk-[A-Za-z0-9_\-]{16,}",
    re.IGNORECASE,
)
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def redact_secrets(text: str) -> str:
    """Return ``text`` with header credentials and API-key-looking tokens replaced by ``***``."""
    text = _SECRET_HEADER_RE.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    return _SECRET_TOKEN_RE.sub(lambda m: f"{m['prefix'] or ''}{MASK}", text)


def printable(text: str) -> str:
    """Return ``text`` with every lone surrogate written as its ``\\uXXXX`` escape (valid UTF-8)."""
    if not _LONE_SURROGATE_RE.search(text):
        return text
    return _LONE_SURROGATE_RE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)
