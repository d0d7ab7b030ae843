"""The one place a strategy is built from a spec, for the Tracker and the job side alike."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from ._redis import Client, is_cluster
from .registry import StrategySpec, resolve_strategy
from .strategies.base import QueueRecords

__all__ = ["Records", "StrategyBuilder"]

Records = Callable[[], Callable[[Redis], object] | None]
"""Asked when a strategy takes a ``fallback``: the maker of the queue's reader of its
own records (a class is built like any strategy), or None for a queue without."""


class StrategyBuilder:
    """Builds each strategy class once, with what its constructor asks for.

    A spec naming a class (or a name, a path) is built once per builder; an
    instance is used as it is. The constructor gets ``redis`` if it takes it (the
    queue's Redis, ``queue_redis``, for a strategy that reads a queue's own
    records: :class:`~immortus_async.strategies.base.QueueRecords`), each of
    ``options`` it takes (``prefix``, ``unreachable_timeout``), and, given
    ``records``, a ``fallback``: the queue's reader of its own records, so that a
    job with no record of ours still reports honestly.

    Args:
        redis: the tracking Redis, or None for a builder of Redis-less strategies.
        queue_redis: the queue's own Redis when it is not ``redis``.
        records: what makes the fallback (the Tracker's: the configured queue
            adapter's); the job side, which only writes, goes without.
        **options: other constructor arguments, passed where they are taken.
    """

    def __init__(
        self,
        redis: Client | None,
        *,
        queue_redis: Client | None = None,
        records: Records | None = None,
        **options: Any,
    ) -> None:
        self._redis = redis
        self._queue_redis = queue_redis
        self._records_of = records
        self._options = options
        self._built: dict[Any, object] = {}

    def get(self, spec: StrategySpec) -> object:
        """The strategy ``spec`` names, built here on first use."""
        found = resolve_strategy(spec)
        if not isinstance(found, type):
            return found
        return self._instance(found)

    def instances(self) -> list[object]:
        """Every strategy built so far (fallbacks included)."""
        return list(self._built.values())

    def clear(self) -> None:
        """Forget every strategy built (the caller closes them)."""
        self._built.clear()

    def _instance(self, cls: type) -> object:
        instance = self._built.get(cls)
        if instance is None:
            instance = self._built[cls] = self._build(cls)
        return instance

    def _build(self, cls: type) -> object:
        params = inspect.signature(cls).parameters
        kwargs: dict[str, Any] = {
            name: value for name, value in self._options.items() if name in params
        }
        if "redis" in params:
            # What reads the queue's own records reads them where the queue is.
            redis = self._redis
            if isinstance(cls, QueueRecords) and self._queue_redis is not None:
                redis = self._queue_redis
            if redis is None:
                raise ValueError(
                    f"{cls.__name__} needs Redis: create the Tracker with a Redis client or URL"
                )
            kwargs["redis"] = redis
        if "fallback" in params and self._records_of is not None:
            records = self._records()
            if records is not None:
                kwargs["fallback"] = records
        return cls(**kwargs)

    def _records(self) -> object | None:
        """The queue's reader of its own records, built once, if the queue has one."""
        assert self._records_of is not None
        factory = self._records_of()
        redis = self._queue_redis or self._redis
        if factory is None or (redis is not None and is_cluster(redis)):
            # A queue's own records are on one server, which a Tracker that
            # tracks on a cluster names as queue_redis: without it, no fallback.
            return None
        if isinstance(factory, type):
            return self._instance(factory)
        if not isinstance(redis, Redis):
            return None
        if factory not in self._built:
            self._built[factory] = factory(redis)
        return self._built[factory]
