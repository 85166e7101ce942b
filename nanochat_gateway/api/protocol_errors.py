"""What to answer when a request fails before the application sees it.

aiohttp's HTTP parser rejects malformed requests (a control character in a header, a header
over the size limit, too many headers, a lowercase method, bad chunked encoding) with an
exception whose text quotes the offending bytes, and by default answers with that text as
text/plain and logs it with a traceback. A header may hold an API key, so here each parser
exception becomes an OpenAI-shaped error with a fixed message that names the problem but
never quotes the request, with the status the problem deserves:

- 431 for a header field over the size limit or too many headers,
- 414 for a request line (method, path, query) over its limit,
- 415 for a Content-Encoding the server cannot decode (br, zstd),
- 400 for everything else the parser refuses.

A body that fails while a handler reads it (bad chunked encoding, a gzip body that is not
gzip) reaches the handler as ``RequestPayloadError``; ``body_error_to_api`` answers it with 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import http_exceptions

from nanochat_gateway.api import errors

__all__ = ["HeaderLimits", "body_error_to_api", "parser_error_to_api", "unsupported_content_encoding"]

# llhttp's reasons are fixed phrases ("Invalid header value char"); aiohttp puts the quoted
# request bytes after a colon. Only a phrase of plain words before any colon is repeated.
_PLAIN_REASON_RE = re.compile(r"[A-Za-z][A-Za-z ,.-]{2,80}")
_TOO_MANY_HEADERS = "Too many headers received"


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """The parser's limits; the two sizes must differ so that an overlong line says which it was."""

    max_line_size: int  # the request line
    max_field_size: int  # one header (name and value)
    max_headers: int


def parser_error_to_api(exc: BaseException | None, limits: HeaderLimits) -> errors.APIError:
    """The OpenAI-shaped 4xx for an exception of aiohttp's request parser; never quotes the request."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return _line_too_long(exc, limits)
    if isinstance(exc, http_exceptions.BadHttpMethod):
        if "HTTPS traffic" in exc.message:
            return errors.invalid_request("This port speaks plain HTTP, not HTTPS.", code="invalid_http")
        return errors.invalid_request(
            "The request method is not valid (methods are upper case, e.g. POST).", code="invalid_method"
        )
    if isinstance(exc, http_exceptions.InvalidURLError):
        return errors.invalid_request("The request target is not a valid URL path.", code="invalid_url")
    if isinstance(exc, http_exceptions.BadStatusLine):
        return errors.invalid_request("The request line is not valid HTTP/1.1.", code="invalid_http")
    if isinstance(exc, http_exceptions.InvalidHeader):
        return errors.invalid_request("A request header holds a character that is not allowed.",
                                      code="invalid_header")
    if isinstance(exc, http_exceptions.ContentEncodingError):
        return unsupported_content_encoding()
    if isinstance(exc, http_exceptions.TransferEncodingError):
        return errors.invalid_request("The chunked transfer encoding of the request body is not valid.",
                                      code="invalid_http")
    if isinstance(exc, http_exceptions.ContentLengthError):
        return errors.invalid_request("The request body is shorter than its Content-Length.", code="invalid_http")
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return _other_parser_error(exc, limits)
    return errors.invalid_request("The request is not valid HTTP/1.1.", code="invalid_http")


def _line_too_long(exc: http_exceptions.LineTooLong, limits: HeaderLimits) -> errors.APIError:
    limit = exc.args[1] if len(exc.args) > 1 else None
    if limit == limits.max_line_size:
        return errors.APIError(414, f"The request line is longer than {limits.max_line_size} bytes.",
                               "invalid_request_error", None, "request_line_too_long")
    return errors.APIError(431, f"A request header is longer than {limits.max_field_size} bytes.",
                           "invalid_request_error", None, "header_too_large")


def _other_parser_error(exc: http_exceptions.HttpProcessingError, limits: HeaderLimits) -> errors.APIError:
    reason = exc.message.split(":", 1)[0].strip()
    if reason == _TOO_MANY_HEADERS:
        return errors.APIError(431, f"The request has more than {limits.max_headers} headers.",
                               "invalid_request_error", None, "too_many_headers")
    if "header" in reason.lower() and _PLAIN_REASON_RE.fullmatch(reason):
        return errors.invalid_request(f"A request header is not valid ({reason}).", code="invalid_header")
    if _PLAIN_REASON_RE.fullmatch(reason):
        return errors.invalid_request(f"The request is not valid HTTP/1.1 ({reason}).", code="invalid_http")
    return errors.invalid_request("The request is not valid HTTP/1.1.", code="invalid_http")


def body_error_to_api(exc: BaseException) -> errors.APIError:
    """The 400 for a request body that could not be read (``exc`` is aiohttp's RequestPayloadError)."""
    cause = exc.__cause__
    if isinstance(cause, http_exceptions.ContentEncodingError):
        return errors.invalid_request("The request body does not decode as its Content-Encoding says.",
                                      code="invalid_body_encoding")
    if isinstance(cause, http_exceptions.TransferEncodingError | http_exceptions.BadHttpMessage):
        return errors.invalid_request("The chunked transfer encoding of the request body is not valid.",
                                      code="invalid_http")
    return errors.invalid_request("The request body could not be read.", code="invalid_http")


def unsupported_content_encoding() -> errors.APIError:
    """415: a Content-Encoding other than identity, gzip or deflate (br and zstd need extra packages)."""
    return errors.APIError(415, "This Content-Encoding is not supported: send the body uncompressed (identity), "
                           "gzip or deflate.", "invalid_request_error", None, "unsupported_content_encoding")
