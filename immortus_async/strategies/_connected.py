"""What the Redis-backed strategies share: their client and their pub/sub hub."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from .._pubsub import PubSubHub, connection_factory
from .._redis import client_from

__all__ = ["Connected"]


class Connected:
    """Holds a strategy's Redis client and the one pub/sub hub all its waiters share.

    The hub is opened on first use, decoding each message with ``decode``;
    :meth:`aclose` closes it, and the client if it was made here from a URL.
    """

    def __init__(self, redis: Redis | str, decode: Callable[[bytes], Any]) -> None:
        self.redis, self._owns_redis = client_from(redis)
        self._decode = decode
        self._hub: PubSubHub | None = None

    def _pubsub(self) -> PubSubHub:
        if self._hub is None:
            self._hub = PubSubHub(connection_factory(self.redis), self._decode)
        return self._hub

    async def aclose(self) -> None:
        """Close the pub/sub connection, and the client if this object created it."""
        if self._hub is not None:
            await self._hub.aclose()
        if self._owns_redis:
            await self.redis.aclose()
