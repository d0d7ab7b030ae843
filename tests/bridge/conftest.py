"""Fixtures for the bridge: a real bridge on port 0 over the test's own Redis."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from immortus_async import JobStatus, RedisPubSubStrategy, RedisServer, Tracker
from immortus_async.bridge import Bridge, serve

from ..utils import SCALE
from .helpers import (
    SECRET,
    BridgeProcess,
    MountServer,
    PageServer,
    advance,
    open_client,
    receive,
    subscribe,
)

# The protocol's tests run against both servers that speak it.
BOTH_SERVERS = (
    "test_session",
    "test_hostile_frames",
    "test_browser",
    "test_asgi",
    "test_http",
    "test_feed",
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test of :data:`BOTH_SERVERS` that uses ``bridge`` on the bridge and the mount.

    ``@pytest.mark.bridge_only`` keeps a test on the bridge (what only it does:
    keepalive pings, its own TCP handling); ``mount_only`` on the mount.
    """
    if "bridge" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rpartition(".")[2]
    servers = ["bridge", "mount"] if module in BOTH_SERVERS else ["bridge"]
    if metafunc.definition.get_closest_marker("bridge_only"):
        servers = ["bridge"]
    if metafunc.definition.get_closest_marker("mount_only"):
        servers = ["mount"]
    metafunc.parametrize("bridge", servers, indirect=True)


@pytest.fixture
async def bridge(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[Bridge | MountServer]:
    """A server of the protocol on a free loopback port, requiring tokens signed with
    ``SECRET``: the websockets bridge, or uvicorn serving a FastAPI app with the
    ASGI mount (``request.param``, see :func:`pytest_generate_tests`)."""
    if request.param == "mount":
        async with Tracker(redis_server.url) as tracker:
            server = await MountServer(tracker, secret=SECRET).start()
            try:
                yield server
            finally:
                await server.stop()
        return
    async with serve(redis_server.url, "127.0.0.1", 0, secret=SECRET) as bridge:
        yield bridge


@pytest.fixture
def strategy(redis: Redis) -> RedisPubSubStrategy:
    """The job side: writes and publishes states as a worker would."""
    return RedisPubSubStrategy(redis)


async def start_bridge_process(redis_url: str, *options: str) -> BridgeProcess:
    """``immortus-async bridge`` in a process of its own, on a free port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "immortus_async.cli",
        "bridge",
        "--redis",
        redis_url,
        "--port",
        "0",
        *options,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "IMMORTUS_SECRET": SECRET},
    )
    assert process.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(20 * SCALE):
        while not (found := re.search(r"listening on ws://[^:]+:(\d+)", "".join(lines))):
            line = await process.stderr.readline()
            assert line, "the bridge exited:\n" + "".join(lines)
            lines.append(line.decode())
    return BridgeProcess(process, int(found.group(1)), lines)


@pytest.fixture
async def bridge_process(redis_server: RedisServer) -> AsyncIterator[BridgeProcess]:
    """The CLI's bridge in its own process; it must stop cleanly on SIGTERM."""
    running = await start_bridge_process(redis_server.url)
    yield running
    assert await running.stop() == 0, "".join(running.output)


@pytest.fixture
async def page_server() -> AsyncIterator[PageServer]:
    """A started :class:`PageServer` for a test page on its own origin."""
    server = PageServer()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh page; the browser's console errors are printed for failing tests."""
    context = await browser.new_context(viewport={"width": 640, "height": 300})
    page = await context.new_page()
    page.on("console", lambda message: print(f"[browser {message.type}] {message.text}"))
    yield page
    await context.close()


@pytest.fixture
async def bystander(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> AsyncIterator[ClientConnection]:
    """A well-behaved client following job "good" (its snapshot already read)."""
    await advance(strategy, "good", JobStatus.STARTED)
    async with await open_client(bridge) as client:
        await client.send(subscribe("good"))
        assert (await receive(client))["job_id"] == "good"
        yield client
