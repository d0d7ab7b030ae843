"""Fixtures: a private Redis server per test, clients, an arq pool, a Tracker, clean
config, and headless Chromium."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from playwright.async_api import Browser, async_playwright
from redis.asyncio import Redis

import immortus_async.config as config
from immortus_async import RedisServer, Tracker

if TYPE_CHECKING:
    from arq.connections import ArqRedis

NOT_INSTALLED = "not installed in this environment"
"""Why a test of a queue that this environment lacks is skipped."""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of this test's own on a free port; the test may kill or restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's Redis server."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def pool(redis_server: RedisServer) -> AsyncIterator[ArqRedis]:
    """An arq pool on the test's Redis server (arq's own client: enqueue_job, results)."""
    connections = pytest.importorskip("arq.connections", reason=NOT_INSTALLED)
    create_pool, RedisSettings = connections.create_pool, connections.RedisSettings
    arq_pool = await create_pool(RedisSettings.from_dsn(redis_server.url))
    yield arq_pool
    await arq_pool.aclose()


@pytest.fixture
async def tracker(redis: Redis) -> AsyncIterator[Tracker]:
    """A Tracker on the test's Redis, tracking with ``redis_pub_sub``."""
    async with Tracker(redis, tracking_strategy="redis_pub_sub") as tracker:
        yield tracker


@pytest.fixture(autouse=True)
def _clean_configuration() -> Iterator[None]:
    """Every test starts from the default configuration and leaves it so."""
    saved = (config._global_strategy, config._queue_adapter, dict(config._inline))
    yield
    config._global_strategy, config._queue_adapter = saved[0], saved[1]
    config._inline.clear()
    config._inline.update(saved[2])


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("IMMORTUS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium through Playwright (never a downloaded browser).

    Skipped when Chromium is missing, unless IMMORTUS_REQUIRE_BROWSER=1 (CI).
    """
    _require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        await browser.close()
