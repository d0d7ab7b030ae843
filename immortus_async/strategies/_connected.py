"""What the Redis-backed strategies share: their client and one pub/sub hub per client."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from .._closing import close_all
from .._pubsub import PubSubHub, connection_factory
from .._redis import Client, client_from, is_cluster, keep_startup_nodes
from .._sharded import ShardedHub

__all__ = ["Connected", "address"]


def address(redis: Client) -> str:
    """Where ``redis`` connects, for messages: ``redis://host:port/db``, never a password
    (``redis+cluster://host:port`` for a cluster, one node it discovers it from)."""
    if not isinstance(redis, Redis):
        # The client forgets a startup node it found dead: then a node it knows.
        nodes = [*redis.nodes_manager.startup_nodes.values(), *redis.get_nodes()]
        node = nodes[0]
        return f"redis+cluster://{node.host}:{node.port}"
    kwargs = redis.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


class _SharedHub:
    """A hub and how many strategies use it."""

    def __init__(self, redis: Client, unreachable_timeout: float | None) -> None:
        where = f"Redis at {address(redis)}"
        self.hub: PubSubHub | ShardedHub
        # The channels published with plain PUBLISH (an owner's): the same hub on
        # one server; on a cluster, one connection to any node (ShardedHub.any_node).
        self.plain: PubSubHub
        if is_cluster(redis):
            assert not isinstance(redis, Redis)
            self.hub = ShardedHub(redis, unreachable_timeout=unreachable_timeout, where=where)
            self.plain = PubSubHub(
                self.hub.any_node(), unreachable_timeout=unreachable_timeout, where=where
            )
        else:
            assert isinstance(redis, Redis)
            self.hub = self.plain = PubSubHub(
                connection_factory(redis), unreachable_timeout=unreachable_timeout, where=where
            )
        self.users = 0


# Strategies on one client (a Tracker's redis_pub_sub and its arq fallback) share
# one pub/sub connection, per unreachable timeout (it is the hub's); the last one
# closed closes it.
_hubs: weakref.WeakKeyDictionary[Client, dict[float | None, _SharedHub]] = (
    weakref.WeakKeyDictionary()
)


# The reads of all strategies on one client, at most half its pool's connections at
# once: redis-py 8's pools hold 100 by default and refuse one more
# (MaxConnectionsError) rather than wait for it, so a thousand waiters reading their
# snapshots together would leave none to the application that shares the client.
_reads: weakref.WeakKeyDictionary[Client, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _read_slots(redis: Client) -> asyncio.Semaphore:
    slots = _reads.get(redis)
    if slots is None:
        if isinstance(redis, Redis):
            most = getattr(redis.connection_pool, "max_connections", 2**31)
        else:
            # A cluster client's limit is per node (RedisCluster(max_connections=...)).
            most = redis.get_connection_kwargs().get("max_connections", 2**31)
        slots = _reads[redis] = asyncio.Semaphore(max(1, most // 2))
    return slots


class Connected:
    """Holds a strategy's Redis client and the pub/sub hub all its waiters share.

    Every strategy on the same client (and with the same ``unreachable_timeout``)
    shares one hub, opened on first use and closed by the last :meth:`aclose`;
    messages on this strategy's channels are decoded with ``decode``. :meth:`aclose`
    also closes the client if it was made here from a URL.

    ``unreachable_timeout``: seconds a waiter rides out a Redis it cannot reach,
    at its first read or mid-wait, before it raises
    :class:`~immortus_async.RedisUnavailable`; None: for ever.
    """

    def __init__(
        self,
        redis: Client | str,
        decode: Callable[[bytes], Any],
        *,
        unreachable_timeout: float | None = 30.0,
    ) -> None:
        if unreachable_timeout is not None and unreachable_timeout <= 0:
            raise ValueError(
                f"unreachable_timeout must be a positive number of seconds or None, "
                f"got {unreachable_timeout!r}"
            )
        self.redis, self._owns_redis = client_from(redis)
        keep_startup_nodes(self.redis)
        queue = getattr(self, "queue_adapter", None)
        if queue is not None and is_cluster(self.redis):
            raise TypeError(
                f"{type(self).__name__} reads {queue}'s own records, which live on one Redis "
                "server, not on a Redis Cluster: give the queue's Redis (Tracker(queue_redis=...))"
            )
        self._decode = decode
        self.unreachable_timeout = unreachable_timeout
        self._shared: _SharedHub | None = None

    @property
    def _standalone(self) -> Redis:
        """The client of a strategy that reads a queue's own records: one server
        (``__init__`` refuses a cluster to them)."""
        assert isinstance(self.redis, Redis), "a queue's records are on one server"
        return self.redis

    @property
    def reading(self) -> asyncio.Semaphore:
        """Held for one round trip of a read: bounds this client's reads in flight.

        Never held across another read, so readers on one client (a strategy and
        its fallback) cannot wait on each other.
        """
        return _read_slots(self.redis)

    @property
    def where(self) -> str:
        """The Redis this strategy reads, for messages (no password)."""
        return f"Redis at {address(self.redis)}"

    @property
    def healthy(self) -> bool:
        """False while this strategy's pub/sub hub has waiters and no connection, or
        is restarting a failed task."""
        shared = self._shared
        return shared is None or (shared.hub.healthy and shared.plain.healthy)

    def _pubsub(self) -> PubSubHub | ShardedHub:
        return self._share().hub

    def _plain_pubsub(self) -> PubSubHub:
        """The hub of the channels published with plain ``PUBLISH`` (an owner's)."""
        return self._share().plain

    def _share(self) -> _SharedHub:
        if self._shared is None:
            hubs = _hubs.setdefault(self.redis, {})
            shared = hubs.get(self.unreachable_timeout)
            if shared is None or shared.hub.closed:
                shared = hubs[self.unreachable_timeout] = _SharedHub(
                    self.redis, self.unreachable_timeout
                )
            shared.users += 1
            self._shared = shared
        return self._shared

    async def aclose(self) -> None:
        """Leave the shared pub/sub connection (the last one out closes it), and
        close the client if this object created it. Idempotent."""
        shared, self._shared = self._shared, None
        closers: list[Callable[[], Awaitable[None]]] = []
        if shared is not None:
            shared.users -= 1
            if shared.users == 0:
                closers += [shared.hub.aclose, shared.plain.aclose]
        if self._owns_redis:
            self._owns_redis = False
            closers.append(self.redis.aclose)
        await close_all(closers)
