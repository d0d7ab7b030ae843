"""Hostile HTTP on the bridge's port: each input gets its documented answer, nobody else notices.

Raw sockets, since no well-behaved HTTP client sends these requests.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from websockets.asyncio.client import ClientConnection

from immortus_async import RedisPubSubStrategy
from immortus_async.bridge import Bridge

from ..utils import SCALE
from .helpers import still_served, subscribe, token

PATHS = ["/healthz", f"/verify/7?token={token('7')}", "/", "/jobs/7"]


async def exchange(bridge: Bridge, raw: bytes) -> bytes:
    """Send ``raw`` in one write; everything the bridge answers, up to its end of stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(raw)
    async with asyncio.timeout(10 * SCALE):
        answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


def request(method: str, path: str, *headers: str, port: int) -> bytes:
    """One request head: ``Host`` first, then ``headers`` as given."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers lower-cased, body) of one response; the body is what follows the head."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def test_a_header_given_twice_is_400(
    bridge: Bridge,
    strategy: RedisPubSubStrategy,
    bystander: ClientConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two Host or two Origin headers: 400 bad_request on every path, nothing logged as an error."""
    caplog.set_level(logging.WARNING)
    for path in PATHS:
        for twice in [("Host: 127.0.0.1:1",), ("Origin: https://a.x", "Origin: https://b.x")]:
            raw = request("GET", path, *twice, port=bridge.port)
            status, _, body = parse(await exchange(bridge, raw))
            assert (status, json.loads(body)["code"]) == (400, "bad_request"), (path, twice)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await still_served(bystander, strategy)


async def test_methods_other_than_get_and_head_are_405(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """POST, PUT, DELETE, OPTIONS, PATCH: 405 method_not_allowed with the Allow header."""
    for path in PATHS:
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"]:
            raw = request(method, path, port=bridge.port)
            status, headers, body = parse(await exchange(bridge, raw))
            assert (status, json.loads(body)["code"]) == (405, "method_not_allowed"), (method, path)
            assert headers["allow"] == ("GET" if path in ("/", "/jobs/7") else "GET, HEAD")
    await still_served(bystander, strategy)


async def test_head_is_get_without_the_body(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """HEAD answers GET's status and headers (Content-Length included) and no body."""
    for path in ["/healthz", f"/verify/7?token={token('7')}", "/immortus.js", "/nope"]:
        get_status, get_headers, get_body = parse(
            await exchange(bridge, request("GET", path, port=bridge.port))
        )
        raw = request("HEAD", path, port=bridge.port)
        status, headers, body = parse(await exchange(bridge, raw))
        assert (status, body) == (get_status, b""), path
        assert headers["content-length"] == get_headers["content-length"] == str(len(get_body))
        assert headers["content-type"] == get_headers["content-type"]
    await still_served(bystander, strategy)


async def test_head_of_a_websocket_path_is_405_without_a_body(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """HEAD with every upgrade header on a handshake path: 405, Allow: GET, no body, no upgrade."""
    upgrade = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    for path in ["/", "/jobs/7"]:
        status, headers, body = parse(
            await exchange(bridge, request("HEAD", path, *upgrade, port=bridge.port))
        )
        assert (status, headers["allow"], body) == (405, "GET", b"")
    await still_served(bystander, strategy)


async def test_pipelined_requests_get_the_first_answered_then_close(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """Two requests in one write: the first is answered (Connection: close), the rest dropped."""
    raw = request("GET", "/healthz", port=bridge.port) + request("GET", "/nope", port=bridge.port)
    answer = await exchange(bridge, raw)
    status, headers, body = parse(answer)
    assert (status, headers["connection"], json.loads(body)["redis"]) == (200, "close", "up")
    assert answer.count(b"HTTP/1.1 ") == 1
    await still_served(bystander, strategy)


async def test_garbage_after_a_request_head_still_gets_the_answer(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """Bytes that are no websocket frame, sent with the request: the request is answered."""
    raw = request("GET", "/healthz", port=bridge.port) + b"\xff" * 64
    status, _, body = parse(await exchange(bridge, raw))
    assert (status, json.loads(body)["status"]) == (200, "ok")
    await still_served(bystander, strategy)


async def test_a_request_with_a_body_is_closed_without_an_answer(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """A body (websockets reads none): the connection is closed, with no answer and no error."""
    raw = request("POST", "/healthz", "Content-Length: 5", port=bridge.port) + b"hello"
    assert await exchange(bridge, raw) == b""
    await still_served(bystander, strategy)


async def test_frames_sent_with_the_handshake_request_are_read_after_it(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """An eager client's subscribe frame in the handshake's write: answered 101, then served."""
    upgrade = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    message = subscribe("good").encode()
    frame = bytes([0x81, 0x80 | 126]) + len(message).to_bytes(2, "big") + b"\0\0\0\0" + message
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(request("GET", "/", *upgrade, port=bridge.port) + frame)
    async with asyncio.timeout(10 * SCALE):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        head = await reader.readexactly(2)
        assert head[0] == 0x81  # a text frame: the state of "good"
        length = head[1] if head[1] < 126 else int.from_bytes(await reader.readexactly(2), "big")
        assert json.loads(await reader.readexactly(length))["job_id"] == "good"
    writer.transport.abort()
    await still_served(bystander, strategy)
