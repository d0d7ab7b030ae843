"""What the Redis-backed strategies share: their client and one pub/sub hub per client."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from .._pubsub import PubSubHub, connection_factory
from .._redis import client_from

__all__ = ["Connected"]


class _SharedHub:
    """A hub and how many strategies use it."""

    def __init__(self, redis: Redis) -> None:
        self.hub = PubSubHub(connection_factory(redis))
        self.users = 0


# Strategies on one client (a Tracker's redis_pub_sub and its arq fallback) share
# one pub/sub connection; the last one closed closes it.
_hubs: weakref.WeakKeyDictionary[Redis, _SharedHub] = weakref.WeakKeyDictionary()


class Connected:
    """Holds a strategy's Redis client and the pub/sub hub all its waiters share.

    Every strategy on the same client shares one hub, opened on first use and
    closed by the last :meth:`aclose`; messages on this strategy's channels are
    decoded with ``decode``. :meth:`aclose` also closes the client if it was made
    here from a URL.
    """

    def __init__(self, redis: Redis | str, decode: Callable[[bytes], Any]) -> None:
        self.redis, self._owns_redis = client_from(redis)
        self._decode = decode
        self._shared: _SharedHub | None = None

    def _pubsub(self) -> PubSubHub:
        if self._shared is None:
            shared = _hubs.get(self.redis)
            if shared is None or shared.hub.closed:
                shared = _hubs[self.redis] = _SharedHub(self.redis)
            shared.users += 1
            self._shared = shared
        return self._shared.hub

    async def aclose(self) -> None:
        """Leave the shared pub/sub connection (the last one out closes it), and
        close the client if this object created it. Idempotent."""
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.users -= 1
            if shared.users == 0:
                await shared.hub.aclose()
        if self._owns_redis:
            self._owns_redis = False
            await self.redis.aclose()
