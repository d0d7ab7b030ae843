"""Making a Redis client from what a user passes: a client, or a URL."""

from __future__ import annotations

import builtins
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    ConnectionError,
    NoPermissionError,
    RedisClusterException,
    TimeoutError,
    TryAgainError,
)

__all__ = [
    "CLUSTER_SCHEMES",
    "REFUSED",
    "UNREACHABLE",
    "Client",
    "client_from",
    "is_cluster",
    "keep_startup_nodes",
    "names_cluster",
]

Client = Redis | RedisCluster
"""A tracking Redis: one server, or a Redis Cluster."""

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
"""URL schemes that name a Redis Cluster (any one of its nodes) rather than one server."""

UNREACHABLE = (
    ConnectionError,
    TimeoutError,
    builtins.ConnectionError,
    builtins.TimeoutError,
    OSError,
    # A Redis Cluster mid-migration or mid-failover: ASK/TRYAGAIN past redis-py's
    # redirections, CLUSTERDOWN, "TTL exhausted" (ClusterError), a slot no node
    # serves yet and no node answering at all (RedisClusterException).
    ClusterError,
    AskError,
    TryAgainError,
    RedisClusterException,
)
"""What a command raises when Redis cannot be reached, or a cluster cannot serve it
for now; redis-py's own errors do not derive from the built-in ones."""

REFUSED = (AuthenticationError, AuthorizationError, NoPermissionError)
"""What Redis answers when it is reached and says no (a wrong password, an ACL user
without the command or key): waiting it out would not help, so it is raised at
once. redis-py derives the first two from its ConnectionError, so every handler of
:data:`UNREACHABLE` that waits must let these through first."""


def is_cluster(redis: Client) -> bool:
    """True for a Redis Cluster client: the one test that picks sharded pub/sub
    (``SPUBLISH``/``SSUBSCRIBE``) over plain ``PUBLISH``/``SUBSCRIBE``."""
    return isinstance(redis, RedisCluster)


def names_cluster(redis: object) -> bool:
    """True for what :func:`client_from` makes a Redis Cluster client of: a
    ``RedisCluster``, or a ``redis+cluster://`` URL. Asked before any client is
    made, by what refuses a cluster where one server's records are read."""
    return isinstance(redis, RedisCluster) or (
        isinstance(redis, str) and redis.startswith(CLUSTER_SCHEMES)
    )


class _StartupNodes(dict[str, Any]):
    """A cluster client's startup nodes that, once all are removed, are those removed.

    redis-py removes a startup node at each connection error of a command on it,
    and its reconnect closes every node's connections, failing the commands in
    flight on healthy nodes too: a master killed under load can leave it none,
    and then it never finds the cluster again ("at least one reachable node").
    """

    def __init__(self, nodes: dict[str, Any]) -> None:
        super().__init__(nodes)
        self._removed: dict[str, Any] = {}

    def pop(self, key: str, *default: Any) -> Any:
        node = super().pop(key, *default)
        if node is not None:
            self._removed[key] = node
        return node

    def values(self) -> Any:
        return super().values() if self else self._removed.values()


def keep_startup_nodes(redis: Client) -> None:
    """Make sure a cluster client always has startup nodes to ask (:class:`_StartupNodes`)."""
    if isinstance(redis, RedisCluster):
        manager = redis.nodes_manager
        if not isinstance(manager.startup_nodes, _StartupNodes):
            manager.startup_nodes = _StartupNodes(manager.startup_nodes)


def client_from(redis: Client | str) -> tuple[Client, bool]:
    """Return ``(client, owned)``: a given client as is, or a new one for a URL.

    A ``redis+cluster://host:port`` URL (``rediss+cluster://`` for TLS) makes a
    ``RedisCluster`` that discovers the cluster from that node. A client we create
    retries a command a few times on a dropped connection, so the first command
    after a Redis restart does not fail on a stale pooled socket.
    """
    if isinstance(redis, Redis | RedisCluster):
        return redis, False
    if isinstance(redis, str) and redis.startswith(CLUSTER_SCHEMES):
        scheme, rest = redis.split("+cluster://", 1)
        return RedisCluster.from_url(f"{scheme}://{rest}"), True
    if isinstance(redis, str):
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.01), retries=3)
        client = Redis.from_url(redis, retry=retry, retry_on_error=[ConnectionError, TimeoutError])
        return client, True
    raise TypeError(
        "expected a redis.asyncio.Redis, a redis.asyncio.cluster.RedisCluster or a Redis URL, "
        f"got {type(redis).__name__}"
    )
