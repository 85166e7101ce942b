"""Requests aiohttp's HTTP parser refuses get OpenAI-shaped JSON, and no key reaches a body or a log line.

Each request is written to a raw socket of the real listener (server.serve), as a hostile client
would; the logs are the gateway's own (logs.setup_logging) in text and JSON format.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest
import test_connections
import test_logs
from test_connections import Served, read_response

start_served = test_connections.start_served  # the same listener fixture
gateway_log = test_logs.gateway_log  # the gateway's own log set-up, captured

KEY = "ncg-Zq0LsecretSECRETsecret0123456789abcdef"


def request_with_authorization(value: str) -> bytes:
    return f"GET /v1/models HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {value}\r\n\r\n".encode("latin-1")


MALFORMED = {
    "nul in a header": (request_with_authorization(KEY + "\x00end"), 400, "invalid_header"),
    "control character in a header": (request_with_authorization(KEY + "\x01end"), 400, "invalid_header"),
    "DEL in a header": (request_with_authorization(KEY + "\x7fend"), 400, "invalid_header"),
    "bare CR in a header": (request_with_authorization(KEY + "\rend"), 400, "invalid_header"),
    "header over 8190 bytes": (b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
                               "header_too_large"),
    "129 headers": (b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(129))
                    + b"\r\n", 431, "too_many_headers"),
    "lowercase method": (b"get /health HTTP/1.1\r\nHost: t\r\n\r\n", 400, "invalid_method"),
    "request line over 8192 bytes": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414,
                                     "request_line_too_long"),
    "bad chunk size": (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                       400, "invalid_http"),
    "TLS on the plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "invalid_http"),
    "brotli body": (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n"
                    b"{}", 415, "unsupported_content_encoding"),
}


def error_of(status: int, headers: dict[str, str], body: bytes) -> dict:
    assert headers["content-type"].startswith("application/json"), (status, headers)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_parser_errors_are_openai_json_with_the_right_status(start_served, name):
    raw, status, code = MALFORMED[name]
    served = await start_served()
    got, headers, body = await served.request(raw)
    assert got == status
    error = error_of(got, headers, body)
    assert error["code"] == code and error["type"] == "invalid_request_error"
    assert KEY.encode() not in body and b"ncg-" not in body


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_key_in_a_malformed_header_reaches_no_log_line(start_served, gateway_log, fmt):
    start_logging, logged = gateway_log
    start_logging(fmt)
    served = await start_served()
    for bad in ("\x00", "\x01", "\x7f", "\r"):
        status, _, body = await served.request(request_with_authorization(KEY + bad + "tail"))
        assert status == 400 and KEY.encode() not in body
    text = logged()
    assert KEY not in text and KEY[4:20] not in text
    refusals = [line for line in text.splitlines() if "malformed request" in line]
    assert len(refusals) == 4, text[-3000:]
    assert "Traceback" not in text
    if fmt == "json":
        assert all(json.loads(line)["level"] == "info" for line in refusals)


async def test_a_body_whose_chunking_breaks_midway_gets_one_json_400(start_served):
    served = await start_served(**{"server.body_timeout_s": 10.0})
    reader, writer = await served.connect()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
    await asyncio.sleep(0.3)  # the handler is reading the body now
    writer.write(b"zz\r\n")
    status, headers, body = await asyncio.wait_for(read_response(reader), 3)
    assert status == 400 and error_of(status, headers, body)["code"] == "invalid_http"
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, and no second answer
    writer.close()


async def wait_ready(served: Served) -> None:
    for _ in range(300):
        status, _, _ = await served.request(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
        if status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the model did not load")


def completion_request(body: bytes, encoding: str) -> bytes:
    return (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s" % (encoding.encode(), len(body), body))


async def test_gzip_bodies_are_accepted_and_a_body_that_is_not_gzip_gets_400(start_served):
    served = await start_served()
    await wait_ready(served)
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 2}).encode()
    status, headers, answer = await served.request(completion_request(gzip.compress(body), "gzip"))
    assert status == 200, answer
    assert json.loads(answer)["object"] == "text_completion"
    status, headers, answer = await served.request(completion_request(body, "gzip"))
    assert status == 400 and error_of(status, headers, answer)["code"] == "invalid_body_encoding"
