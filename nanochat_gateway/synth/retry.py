"""When to retry a request and how long to wait first.

Retried: 408, 409, 429, every 5xx, connection errors and timeouts. The wait is what the server asks
for in ``retry-after-ms`` (OpenAI's, in milliseconds) or ``Retry-After`` (seconds or an HTTP date),
otherwise exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)], which
spreads many clients' retries out instead of synchronising them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


def is_retryable_status(status: int) -> bool:
    """True for the statuses that a later identical request may succeed on."""
    return status in (408, 409, 429) or 500 <= status <= 599


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The wait a response asks for, in seconds, or None when it names none (or names nonsense)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = _number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and 0 <= number < float("inf") else None


def backoff_seconds(attempt: int, rng: random.Random, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S
                    ) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (0 for the first retry)."""
    return rng.uniform(0, min(cap, base * 2 ** min(attempt, 30)))
