"""A chat-completions client for synthesis over aiohttp: retries, a shared pause, adaptive request shape.

- Retries follow retry.py. A 429 pauses every request of this client, not only the one that got it:
  the endpoint's limit is shared, so the other workers would only collect 429s of their own.
- 401 and 403 (bad key) and 404 (wrong URL or model) raise FatalEndpointError: no later request
  can succeed, so the run stops at once.
- Endpoints differ in what they accept. A 400/422 that names ``response_format`` (no structured
  outputs), ``max_tokens`` (wants ``max_completion_tokens``) or ``temperature`` (fixed) switches the
  request shape for the rest of the run and resends; the decision is made once, from the first such
  answer, and recorded in ``notes`` for the report. A 400 that names nothing, to a request carrying
  ``response_format``, is probed by resending without it.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from nanochat_gateway import __version__
from nanochat_gateway.synth.retry import backoff_seconds, is_retryable_status, retry_after_seconds


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make, in both shapes: with structured outputs and without."""

    model: str
    messages: list[dict[str, str]]  # sent along with response_format
    plain_messages: list[dict[str, str]]  # sent without it: JSON instructions are in the prompt
    schema: dict[str, Any] | None  # the json_schema object of response_format
    max_tokens: int
    temperature: float | None = None


@dataclass(frozen=True)
class ChatReply:
    content: str
    refusal: str | None
    finish_reason: str | None
    structured: bool  # the request carried response_format


@dataclass
class ClientStats:
    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)  # by cause: "429", "503", "timeout", ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    paused_s: float = 0.0


class FatalEndpointError(Exception):
    """An answer after which no request can succeed (401, 403, 404)."""

    def __init__(self, status: int, message: str, url: str) -> None:
        super().__init__(f"{url} answered {status}: {message}")
        self.status = status
        self.message = message
        self.url = url


class RequestFailed(Exception):
    """One request gave up; ``reason`` is "request_failed" (retries exhausted) or "endpoint_error"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Shape:
    structured: bool = True
    token_param: str = "max_tokens"
    send_temperature: bool = True


class ChatClient:
    """POSTs to ``{base_url}/chat/completions``; one instance per endpoint for the whole run."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str | None, *, timeout_s: float,
                 max_retries: int, rng: random.Random | None = None, stats: ClientStats | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.session = session
        self.headers = {"User-Agent": f"nanochat-gateway-synth/{__version__}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_retries = max_retries
        self.rng = rng or random.Random()
        self.stats = stats or ClientStats()
        self.notes: list[str] = []
        self.shape = _Shape()
        self._resume_at = 0.0  # loop time before which no request is sent (a 429 pause)

    def paused_for(self) -> float:
        """Seconds left of the current 429 pause (0 when not paused)."""
        return max(0.0, self._resume_at - asyncio.get_running_loop().time())

    async def complete(self, request: ChatRequest) -> ChatReply:
        """The endpoint's reply, after retries; raises RequestFailed or FatalEndpointError."""
        attempt = 0
        probing: str | None = None  # the unexplained 400 that a request without response_format tests
        while True:
            await self._wait_for_pause()
            structured = self.shape.structured and request.schema is not None and probing is None
            body = self._body(request, structured)
            try:
                status, headers, payload = await self._post(body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                cause = "timeout" if isinstance(exc, TimeoutError) else "connection"
                attempt = await self._back_off(attempt, cause, None, f"{type(exc).__name__}: {exc}")
                continue
            if status == 200:
                reply = self._reply(payload, structured)
                if reply is None:
                    attempt = await self._back_off(attempt, "bad_response", None, "a 200 without choices")
                    continue
                if probing is not None:
                    self._refuse_structured(probing, "a request without it succeeded")
                return reply
            message, param = _error_fields(payload)
            if status in (401, 403, 404):
                raise FatalEndpointError(status, message, self.url)
            if status in (400, 422):
                if self._adapt(body, param, message):
                    continue
                if "response_format" in body and probing is None:
                    probing = f"{status}: {message}"
                    continue
            if is_retryable_status(status):
                attempt = await self._back_off(attempt, str(status), retry_after_seconds(headers), message)
                continue
            raise RequestFailed("endpoint_error", f"{status}: {message}")

    def _body(self, request: ChatRequest, structured: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages if structured else request.plain_messages,
            self.shape.token_param: request.max_tokens,
        }
        if request.temperature is not None and self.shape.send_temperature:
            body["temperature"] = request.temperature
        if structured:
            body["response_format"] = {"type": "json_schema", "json_schema": request.schema}
        return body

    async def _post(self, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        self.stats.requests += 1
        async with self.session.post(self.url, json=body, headers=self.headers, timeout=self.timeout) as resp:
            text = (await resp.read()).decode("utf-8", errors="replace")
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            return resp.status, dict(resp.headers), payload

    def _reply(self, payload: Any, structured: bool) -> ChatReply | None:
        try:
            choice = payload["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            return None
        usage = payload.get("usage") or {}
        self.stats.prompt_tokens += _int(usage.get("prompt_tokens"))
        self.stats.completion_tokens += _int(usage.get("completion_tokens"))
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        refusal = message.get("refusal")
        return ChatReply(content if isinstance(content, str) else "", refusal if isinstance(refusal, str) else None,
                         choice.get("finish_reason"), structured)

    def _adapt(self, body: dict[str, Any], param: str | None, message: str) -> bool:
        """Switch the request shape if the error names a field the endpoint refuses; True to resend."""
        named = f"{param or ''} {message}".lower()
        if "response_format" in body and any(w in named for w in ("response_format", "response format",
                                                                   "json_schema", "structured output")):
            self._refuse_structured(message, "")
            return True
        if self.shape.token_param == "max_tokens" and "max_completion_tokens" in named:
            self.shape.token_param = "max_completion_tokens"
            self.notes.append(f"the endpoint wants max_completion_tokens instead of max_tokens ({message})")
            return True
        if "temperature" in body and self.shape.send_temperature and (param == "temperature"
                                                                      or "temperature" in message.lower()):
            self.shape.send_temperature = False
            self.notes.append(f"the endpoint refused temperature, so the model's default is used ({message})")
            return True
        return False

    def _refuse_structured(self, message: str, how: str) -> None:
        if self.shape.structured:
            self.shape.structured = False
            suffix = f"; {how}" if how else ""
            self.notes.append(f"the endpoint refused response_format json_schema ({message}{suffix}): "
                              f"JSON is asked for in the prompt and parsed tolerantly")

    async def _back_off(self, attempt: int, cause: str, retry_after: float | None, message: str) -> int:
        """Wait before the next try of one request; raises RequestFailed when retries are used up."""
        if attempt >= self.max_retries:
            raise RequestFailed("request_failed", f"{cause} after {attempt + 1} tries: {message}")
        self.stats.retries[cause] += 1
        delay = retry_after if retry_after is not None else backoff_seconds(attempt, self.rng)
        if cause == "429":
            self._pause_all(delay)
        else:
            await asyncio.sleep(delay)
        return attempt + 1

    def _pause_all(self, delay: float) -> None:
        now = asyncio.get_running_loop().time()
        until = now + delay
        if until > self._resume_at:
            self.stats.paused_s += until - max(self._resume_at, now)
            self._resume_at = until

    async def _wait_for_pause(self) -> None:
        while (left := self.paused_for()) > 0:
            await asyncio.sleep(left)


def _error_fields(payload: Any) -> tuple[str, str | None]:
    """The message and param of an error body, whatever its shape (OpenAI envelope, bare, or text)."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or json.dumps(error)[:300]
            param = error.get("param")
            return str(message), param if isinstance(param, str) else None
        return str(error)[:300], None
    return (str(payload).strip()[:300] or "(empty body)"), None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
