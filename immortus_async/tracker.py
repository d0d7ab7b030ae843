"""The waiting side: ask where a job is, wait for it to end, follow every change."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import anyio
from redis.asyncio import Redis

from . import adapters, config
from ._builder import StrategyBuilder
from ._follow import poll, retrying
from ._redis import UNREACHABLE, client_from
from .config import strategy_for
from .exceptions import JobNotFound, TrackerClosed
from .keys import DEFAULT_PREFIX
from .registry import StrategySpec, resolve_strategy
from .state import JobState, JobUpdate
from .status import JobStatus
from .strategies.base import PushSource, StateReader, StateWriter
from .tokens import mint_token, read_secret

__all__ = ["Tracker"]

Function = Callable[..., Any] | str | None

logger = logging.getLogger("immortus_async.tracker")


class Tracker:
    """Tells where jobs are and wakes whoever waits on them, without polling.

    Args:
        redis: a ``redis.asyncio.Redis`` (an arq pool is one), a Redis URL (the
            Tracker then owns and closes the client), or None for strategies that
            need no Redis (``"memory"``).
        tracking_strategy: the strategy for jobs whose function has none of its
            own; defaults to :func:`~immortus_async.configure`'s, else the one
            inferred from the queue adapter (``"redis_pub_sub"`` for arq, taskiq
            and streaQ).
        secret: the token signing secret; defaults to ``$IMMORTUS_SECRET``.
        prefix: the prefix of the strategy's Redis keys and channels.
        poll_interval: ``(min, max)`` seconds between reads for a strategy that
            cannot push; the interval grows from min to max while nothing changes.
        queue_redis: the queue's own Redis when tracking lives on another one:
            a ``redis.asyncio.Redis`` (an arq pool, whose queue name and job
            deserializer are then used) or a URL (then owned and closed here).
            The strategy that reads the queue's own records (``"arq"``, and the
            fallback of ``"redis_pub_sub"``) is built on it. Default: ``redis``.
        unreachable_timeout: seconds a waiter (:meth:`status`, :meth:`completed`,
            :meth:`watch`) rides out a Redis it cannot reach, at its first read or
            mid-wait, before it raises :class:`~immortus_async.RedisUnavailable`;
            None: only the caller's timeout ends the wait.

    A Tracker holds at most one Redis pub/sub connection (per Redis) for all of
    its waiters. Use it as ``async with Tracker(...) as tracker:`` or call
    :meth:`aclose`.
    """

    def __init__(
        self,
        redis: Redis | str | None = None,
        *,
        tracking_strategy: StrategySpec | None = None,
        secret: str | bytes | None = None,
        prefix: str = DEFAULT_PREFIX,
        poll_interval: tuple[float, float] = (0.01, 1.0),
        queue_redis: Redis | str | None = None,
        unreachable_timeout: float | None = 30.0,
    ) -> None:
        if unreachable_timeout is not None and not unreachable_timeout > 0:
            raise ValueError(
                "unreachable_timeout must be a positive number of seconds or None, "
                f"got {unreachable_timeout!r}"
            )
        self._unreachable_timeout = unreachable_timeout
        self._redis: Redis | None = None
        self._owns_redis = False
        if redis is not None:
            self._redis, self._owns_redis = client_from(redis)
        self._queue_redis: Redis | None = None
        self._owns_queue_redis = False
        if queue_redis is not None:
            self._queue_redis, self._owns_queue_redis = client_from(queue_redis)
        if tracking_strategy is not None:
            resolve_strategy(tracking_strategy)
        self._override = tracking_strategy
        self._secret = read_secret(secret)
        self._prefix = prefix
        if not 0 < poll_interval[0] <= poll_interval[1]:
            raise ValueError(
                f"poll_interval must be (min, max) with 0 < min <= max, got {poll_interval}"
            )
        self._poll_interval = poll_interval
        self._builder = StrategyBuilder(
            self._redis,
            queue_redis=self._queue_redis,
            # Read when a strategy that takes a fallback is built: configure() may
            # come after the Tracker.
            records=lambda: adapters.records_of(config.queue_adapter()),
            prefix=prefix,
            unreachable_timeout=unreachable_timeout,
        )
        self._closed = False

    @property
    def redis(self) -> Redis | None:
        """The Redis client this Tracker uses (None for a Redis-less Tracker)."""
        return self._redis

    @property
    def healthy(self) -> bool:
        """False while any pub/sub connection of this Tracker has waiters and is
        down, or one of its long-lived tasks is restarting after it failed."""
        return all(getattr(instance, "healthy", True) for instance in self._builder.instances())

    def stats(self) -> dict[str, Any]:
        """What this Tracker's strategies report of themselves, for a health endpoint.

        ``watching``: how a queue's own endings reach waiters, once a waiter has
        asked: ``"client-tracking"`` (client-side caching), ``"keyspace-events"``
        or ``"batched-look"`` (where Redis refuses the first two); with
        ``client_tracking_off`` saying why caching is not used.
        """
        stats: dict[str, Any] = {}
        for instance in self._builder.instances():
            report = getattr(instance, "stats", None)
            if callable(report):
                stats.update(report())
        return stats

    def strategy(self, function: Function = None) -> object:
        """The strategy instance that tracks jobs of ``function`` (see :func:`strategy_for`).

        A strategy given as a name or a class is built once per Tracker, with this
        Tracker's Redis client and prefix if its constructor takes ``redis`` and
        ``prefix`` (a reader of the queue's own records on ``queue_redis``), and the
        queue adapter's reader as its ``fallback`` if it takes one; an instance is
        used as it is.
        """
        if self._closed:
            raise TrackerClosed("this Tracker is closed")
        return self._builder.get(strategy_for(function, override=self._override))

    async def status(self, job_id: str, *, function: Function = None) -> JobState:
        """The job's state now; an id never seen reads ``unknown``.

        Waits only for a Redis it cannot reach, at most ``unreachable_timeout``.

        Raises:
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``.
        """
        strategy = self.strategy(function)
        return await retrying(
            lambda: _read(strategy, job_id),
            job_id,
            unreachable_timeout=self._unreachable_timeout,
            where=getattr(strategy, "where", "Redis"),
        )

    def watch(self, job_id: str, *, function: Function = None) -> AsyncIterator[JobState]:
        """Iterate over the job's states: the current one, then every change, ending
        after the terminal one.

        With a strategy that pushes, changes arrive as they happen; a waiter that
        falls behind skips intermediate progress (the latest state and the terminal
        one always arrive). Otherwise the strategy is polled with backoff.

        Raises:
            JobLost: Redis lost the job's record while it was followed (restarted
                without data): its end will never be known.
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``.
            SubscriptionRefused: Redis refused to subscribe to the job's channel
                (an ACL user without channel permissions).
            InvalidStateError: a message on the job's channel is not a job state.
        """
        strategy = self.strategy(function)
        if isinstance(strategy, PushSource):
            return strategy.watch(job_id)
        low, high = self._poll_interval
        return poll(
            job_id,
            lambda: _read(strategy, job_id),
            min_interval=low,
            max_interval=high,
            unreachable_timeout=self._unreachable_timeout,
        )

    async def completed(
        self, job_id: str, *, function: Function = None, timeout: float | None = None
    ) -> JobState:
        """Wait until the job is terminal and return that state.

        A failed, aborted or expired job returns normally: look at ``status``.

        Raises:
            JobNotFound: at once, if the job has no record anywhere.
            JobLost: Redis lost the job's record while it was waited for.
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``.
            TimeoutError: ``timeout`` seconds passed first.
            ImmortusError: any other documented failure of :meth:`watch`.
        """
        with anyio.fail_after(timeout):
            states = self.watch(job_id, function=function)
            try:
                first = True
                async for state in states:
                    if first and state.status is JobStatus.UNKNOWN:
                        raise JobNotFound(job_id)
                    first = False
                    if state.completed:
                        return state
            finally:
                close = getattr(states, "aclose", None)
                if close is not None:
                    await close()
        raise AssertionError("watch() ended before a terminal state")  # pragma: no cover

    async def enqueue(self, target: Any, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Enqueue with the queue ``target`` belongs to, record ``queued``; return its job.

        ``target`` is what the queue enqueues on, and decides the adapter
        (:func:`immortus_async.adapters.for_target`): an ``arq.ArqRedis`` pool,
        with the function's name and every argument, arq's underscore options
        (``_job_id``, ``_defer_by``, ...) included, going to ``pool.enqueue_job``;
        the other adapters say what they take. The queued state is written after
        the queue has the job, as attempt 0, so a worker that already started it
        is never moved back. Returns None, and writes nothing, when the queue
        refuses the job (arq: a duplicate ``_job_id``).

        The job is enqueued once the queue has it: if the tracking Redis cannot be
        reached for the queued state, that is logged and the job returned all the
        same (raising would invite the caller to enqueue it twice); the worker's
        own updates, and the queue's records, tell the rest.

        Raises:
            TypeError: no queue adapter takes ``target``.
        """
        adapter = adapters.for_target(target)
        return await adapter.enqueue(target, function, args, kwargs, self._queued)

    async def _queued(self, job_id: str, function: str | None) -> None:
        """Record that the queue has ``job_id``; a Redis out of reach is only logged."""
        strategy = self.strategy(function)
        try:
            if isinstance(strategy, StateWriter):
                update = JobUpdate(
                    job_id=job_id, status=JobStatus.QUEUED, attempt=0, function=function
                )
                await strategy.apply(update)
            elif callable(getattr(strategy, "job_enqueued", None)):
                await strategy.job_enqueued(job_id)  # type: ignore[attr-defined]
        except UNREACHABLE as exc:
            logger.warning(
                "job %s is enqueued, but its queued state was not written: %s", job_id, exc
            )

    def token(self, job_id: str, *, ttl: float = 3600) -> str:
        """A signed token (JWT, HS256) that lets a browser follow ``job_id`` for ``ttl`` s.

        Raises:
            ValueError: the Tracker has no secret (pass ``secret=`` or set
                ``IMMORTUS_SECRET``).
        """
        if self._secret is None:
            raise ValueError("no signing secret: pass Tracker(secret=...) or set IMMORTUS_SECRET")
        return mint_token(job_id, self._secret, ttl=ttl)

    async def aclose(self) -> None:
        """Close every connection this Tracker opened. Idempotent; never raises what a
        strategy's close raises (it is logged: the rest still gets closed)."""
        if self._closed:
            return
        self._closed = True
        closers = [getattr(instance, "aclose", None) for instance in self._builder.instances()]
        self._builder.clear()
        if self._owns_redis and self._redis is not None:
            closers.append(self._redis.aclose)
        if self._owns_queue_redis and self._queue_redis is not None:
            closers.append(self._queue_redis.aclose)
        for close in closers:
            if close is None:
                continue
            try:
                await close()
            except Exception:
                logger.exception("closing the Tracker: %r failed", close)

    async def __aenter__(self) -> Tracker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _read(strategy: object, job_id: str) -> JobState:
    """A job's state from any strategy: its own ``status``, else ``completed``+``meta``.

    For a strategy that only answers ``completed``, a job not completed reads
    ``queued`` unless its ``meta`` carries a valid ``"status"`` (as the Immortus
    custom-strategy example does); a completed one reads ``finished``.
    """
    if isinstance(strategy, StateReader):
        return await strategy.status(job_id)
    done = bool(await strategy.completed(job_id))  # type: ignore[attr-defined]
    meta_method = getattr(strategy, "meta", None)
    meta = dict(await meta_method(job_id) or {}) if meta_method is not None else {}
    status = JobStatus.FINISHED if done else JobStatus.QUEUED
    claimed = meta.get("status")
    if isinstance(claimed, str) and claimed in JobStatus._value2member_map_:
        claimed_status = JobStatus(claimed)
        if claimed_status.terminal == done:
            status = claimed_status
    return JobState(job_id=job_id, status=status, meta=meta)
