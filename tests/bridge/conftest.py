"""Fixtures for the bridge: a real bridge on port 0 over the test's own Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from immortus_async import RedisPubSubStrategy, RedisServer
from immortus_async.bridge import Bridge, serve

from .helpers import SECRET


@pytest.fixture
async def bridge(redis_server: RedisServer) -> AsyncIterator[Bridge]:
    """A bridge on a free loopback port, requiring tokens signed with ``SECRET``."""
    async with serve(redis_server.url, "127.0.0.1", 0, secret=SECRET) as bridge:
        yield bridge


@pytest.fixture
def strategy(redis: Redis) -> RedisPubSubStrategy:
    """The job side: writes and publishes states as a worker would."""
    return RedisPubSubStrategy(redis)
