"""Making a Redis client from what a user passes: a client, or a URL."""

from __future__ import annotations

import builtins

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ConnectionError,
    NoPermissionError,
    TimeoutError,
)

__all__ = ["REFUSED", "UNREACHABLE", "client_from"]

UNREACHABLE = (
    ConnectionError,
    TimeoutError,
    builtins.ConnectionError,
    builtins.TimeoutError,
    OSError,
)
"""What a command raises when Redis cannot be reached; redis-py's own errors do not
derive from the built-in ones."""

REFUSED = (AuthenticationError, AuthorizationError, NoPermissionError)
"""What Redis answers when it is reached and says no (a wrong password, an ACL user
without the command or key): waiting it out would not help, so it is raised at
once. redis-py derives the first two from its ConnectionError, so every handler of
:data:`UNREACHABLE` that waits must let these through first."""


def client_from(redis: Redis | str) -> tuple[Redis, bool]:
    """Return ``(client, owned)``: a given client as is, or a new one for a URL.

    A client we create retries a command a few times on a dropped connection, so
    the first command after a Redis restart does not fail on a stale pooled socket.
    """
    if isinstance(redis, Redis):
        return redis, False
    if isinstance(redis, str):
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.01), retries=3)
        client = Redis.from_url(redis, retry=retry, retry_on_error=[ConnectionError, TimeoutError])
        return client, True
    raise TypeError(f"expected a redis.asyncio.Redis or a Redis URL, got {type(redis).__name__}")
