"""Clients that do not read: bounded memory, nobody else slowed, the end still delivered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect

from immortus_async import JobStatus, RedisPubSubStrategy, RedisServer
from immortus_async.bridge import Bridge, serve

from ..utils import SCALE, wait_until
from .helpers import (
    SECRET,
    BridgeProcess,
    Listening,
    MountServer,
    advance,
    open_client,
    protocol_server,
    receive,
    subscribe,
)

S = JobStatus
UPDATES = 10_000
PADDING = "x" * 2048  # 10,000 frames of this would be over 20 MiB if the bridge kept them
MiB = 1024 * 1024


async def _stalled_client(bridge: Listening) -> ClientConnection:
    """A client whose socket takes almost nothing in: the bridge's sends soon block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", bridge.port))
    sock.setblocking(False)
    # The mount's websocket root is its path with a slash (Starlette's Mount).
    return await connect(bridge.url + "/", sock=sock, max_queue=1, ping_interval=None)


def _rss(bridge: BridgeProcess) -> int:
    rss: int = psutil.Process(bridge.process.pid).memory_info().rss
    return rss


@pytest.mark.timeout(120)
async def test_a_client_that_never_reads_costs_bounded_memory(
    bridge_process: BridgeProcess, strategy: RedisPubSubStrategy
) -> None:
    """10,000 updates to a never-reading client: RSS bounded, others served, latest+end kept."""
    await advance(strategy, "slow", S.STARTED)
    await advance(strategy, "other", S.STARTED)
    slow = await _stalled_client(bridge_process)
    await slow.send(subscribe("slow"))
    async with await open_client(bridge_process) as other:
        await other.send(subscribe("other"))
        assert (await receive(other))["job_id"] == "other"
        # Warm up until the slow client's sends block, so the baseline includes
        # its full socket buffers, then measure what 10,000 more updates add.
        for n in range(500):
            await advance(strategy, "slow", S.STARTED, progress=n / UPDATES, meta={"pad": PADDING})
        before = _rss(bridge_process)
        for n in range(1, UPDATES + 1):
            last = await advance(
                strategy, "slow", S.STARTED, progress=n / UPDATES, meta={"n": n, "pad": PADDING}
            )
            if n % 1000 == 0:
                sent = await advance(strategy, "other", S.STARTED, progress=n / UPDATES)
                frame = await receive(other, timeout=5)
                assert (frame["job_id"], frame["seq"]) == ("other", sent.seq)
        growth = _rss(bridge_process) - before
    print(f"\nRSS growth over {UPDATES} updates: {growth / MiB:.2f} MiB")
    assert growth < 8 * MiB, f"the bridge grew by {growth / MiB:.1f} MiB"

    seqs = []
    while not seqs or seqs[-1] < last.seq:
        frame = await receive(slow)
        seqs.append(frame["seq"])
    assert seqs == sorted(set(seqs)), "states arrive in order, each once"
    print(f"the slow client received {len(seqs)} of {UPDATES} states")
    assert len(seqs) < UPDATES / 2, "intermediate states were skipped, not queued"
    assert frame["progress"] == 1.0 and frame["meta"]["n"] == UPDATES
    await advance(strategy, "slow", S.FINISHED)
    assert (await receive(slow))["status"] == "finished"
    await slow.close()


def _server_with_timeouts(
    kind: str, redis_server: RedisServer
) -> contextlib.AbstractAsyncContextManager[Bridge | MountServer]:
    """The bridge, or uvicorn serving the mount, with short send and close timeouts."""
    timeouts = {"send_timeout": 0.5 * SCALE, "close_timeout": 0.5 * SCALE}
    return protocol_server(kind, redis_server.url, bridge_only={"write_limit": 1024}, **timeouts)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["bridge", "mount"])
async def test_a_client_blocked_past_send_timeout_is_closed(
    redis_server: RedisServer,
    strategy: RedisPubSubStrategy,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """A client that leaves a send blocked past send_timeout is disconnected (code 4008),
    by the bridge and by the mount alike (the same session's timer)."""
    caplog.set_level(logging.WARNING, logger="immortus_async.bridge")
    async with _server_with_timeouts(kind, redis_server) as server:
        slow = await _stalled_client(server)
        await _flood_until_closed(server, slow, strategy)
        slow.transport.abort()
    assert any("read nothing" in record.getMessage() for record in caplog.records)


def _server_side(bridge_port: int, client_port: int) -> list[str]:
    """TCP states of the bridge's end of the connection from ``client_port``."""
    return [
        conn.status
        for conn in psutil.net_connections("tcp")
        if conn.laddr and conn.laddr.port == bridge_port and conn.raddr
        if conn.raddr.port == client_port
    ]


async def _flood_until_closed(
    bridge: Bridge | MountServer, slow: ClientConnection, strategy: RedisPubSubStrategy
) -> None:
    """Follow a job on ``slow`` and update it until the bridge gives up on the client."""
    await slow.send(subscribe("stuck"))
    await wait_until(lambda: bridge.statistics().subscriptions == 1, message="the subscribe")
    for n in range(5000):
        if bridge.statistics().connections == 0:
            break
        await advance(strategy, "stuck", S.STARTED, meta={"n": n, "pad": PADDING})
    await wait_until(lambda: bridge.statistics().connections == 0, message="the close")


@pytest.mark.timeout(60)
async def test_a_slow_client_is_reset_not_left_in_fin_wait(
    redis_server: RedisServer, strategy: RedisPubSubStrategy
) -> None:
    """Closing a client that does not read resets the TCP connection: nothing queued lingers."""
    async with serve(
        redis_server.url,
        "127.0.0.1",
        0,
        secret=SECRET,
        send_timeout=0.5 * SCALE,
        close_timeout=0.5 * SCALE,
        write_limit=1024,
    ) as bridge:
        slow = await _stalled_client(bridge)
        client_port = slow.local_address[1]
        await _flood_until_closed(bridge, slow, strategy)
        # A FIN queued behind megabytes the client never reads keeps the socket in
        # FIN-WAIT-1 for minutes; a reset frees it at once.
        await wait_until(
            lambda: not _server_side(bridge.port, client_port), message="the bridge's socket gone"
        )
        slow.transport.abort()


def _ping(payload: bytes) -> bytes:
    """A masked PING frame (mask key zero, so the payload goes as is)."""
    return bytes([0x89, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


@pytest.mark.timeout(120)
async def test_pings_from_a_client_that_never_reads_cost_bounded_memory(
    redis_server: RedisServer, strategy: RedisPubSubStrategy
) -> None:
    """300,000 pings and no read: the bridge stops reading instead of queueing pongs, then
    closes the client; its memory stays bounded and other clients are served."""
    await advance(strategy, "other", S.STARTED)
    async with serve(
        redis_server.url,
        "127.0.0.1",
        0,
        secret=SECRET,
        send_timeout=0.5 * SCALE,
        close_timeout=0.5 * SCALE,
    ) as bridge:
        other = await open_client(bridge)
        await other.send(subscribe("other"))
        assert (await receive(other))["job_id"] == "other"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", bridge.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.transport.pause_reading()  # from now on, the client reads nothing
        batch = _ping(b"p" * 100) * 1000
        before = psutil.Process().memory_info().rss
        sent = 0
        try:
            while sent < 300_000:
                writer.write(batch)
                await writer.drain()
                sent += 1000
        except ConnectionError:
            pass  # the bridge gave up on the client: what the fix does
        growth = psutil.Process().memory_info().rss - before
        print(f"\n{sent} pings sent; RSS growth {growth / MiB:.2f} MiB")
        assert growth < 8 * MiB, f"the bridge grew by {growth / MiB:.1f} MiB"
        state = await advance(strategy, "other", S.STARTED, progress=0.5)
        frame = await receive(other)
        assert (frame["job_id"], frame["seq"]) == ("other", state.seq)
        await wait_until(lambda: bridge.statistics().connections == 1, message="the close")
        writer.transport.abort()
        await other.close()
