"""Fixtures of the Redis Cluster suite: a cluster of the test's own, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from .harness import LocalCluster, missing


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """3 masters and 3 replicas of the test's own; the test may kill, fail over, reshard."""
    why = missing()
    if why is not None:
        pytest.skip(why)
    with LocalCluster() as local:
        yield local


@pytest.fixture
async def cluster_client(cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A ``RedisCluster`` client of the test's cluster."""
    # Bounded reads: a frozen node (SIGSTOP) would hold a rediscovery of the slots
    # for ever, and every command behind it.
    client = RedisCluster.from_url(cluster.url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()
