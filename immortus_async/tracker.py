"""The waiting side: ask where a job is, wait for it to end, follow every change."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from redis.asyncio import Redis

from . import adapters, config, metrics, tracing
from ._builder import StrategyBuilder
from ._closing import close_all
from ._follow import poll, retrying
from ._redis import REFUSED, UNREACHABLE, Client, client_from, names_cluster
from .config import strategy_for
from .exceptions import JobNotFound, RedisUnavailable, TrackerClosed
from .keys import DEFAULT_PREFIX
from .registry import StrategySpec, resolve_strategy
from .state import JobState, JobUpdate, utcnow
from .status import JobStatus
from .strategies.base import PushSource, StateReader, StateWriter
from .tokens import mint_owner_token, mint_token, read_secret

if TYPE_CHECKING:
    # For Tracker.enqueue's overloads only: at runtime the core imports no queue.
    from streaq.task import AsyncRegisteredTask, SyncRegisteredTask, Task
    from taskiq import AsyncTaskiqDecoratedTask, AsyncTaskiqTask
    from taskiq.kicker import AsyncKicker

    from ._targets import ArqPool, J, P, R, StreaqWorker, TaskiqBroker

__all__ = ["Tracker"]

Function = Callable[..., Any] | str | None

logger = logging.getLogger("immortus_async.tracker")


class Tracker:
    """Tells where jobs are and wakes whoever waits on them, without polling.

    Args:
        redis: a ``redis.asyncio.Redis`` (an arq pool is one), a
            ``redis.asyncio.cluster.RedisCluster``, a Redis URL
            (``redis+cluster://host:port`` for a cluster; the Tracker then owns
            and closes the client), or None for strategies that need no Redis
            (``"memory"``). On a cluster, the queue's own Redis is ``queue_redis``.
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
            One server: a Redis Cluster here is refused (``TypeError``).
        unreachable_timeout: seconds a waiter (:meth:`status`, :meth:`completed`,
            :meth:`watch`) rides out a Redis it cannot reach, at its first read or
            mid-wait, before it raises :class:`~immortus_async.RedisUnavailable`;
            None: only the caller's timeout ends the wait.
        queue: what :meth:`abort` aborts through, as :meth:`enqueue` takes it: an
            arq pool (its queue name is used), a taskiq broker, a streaQ worker.
            Default: the queue adapter of :func:`~immortus_async.configure` on
            ``queue_redis`` (else ``redis``), which is all arq needs.

    A Tracker holds at most one Redis pub/sub connection (per Redis) for all of
    its waiters. Use it as ``async with Tracker(...) as tracker:`` or call
    :meth:`aclose`.
    """

    def __init__(
        self,
        redis: Client | str | None = None,
        *,
        tracking_strategy: StrategySpec | None = None,
        secret: str | bytes | None = None,
        prefix: str = DEFAULT_PREFIX,
        poll_interval: tuple[float, float] = (0.01, 1.0),
        queue_redis: Redis | str | None = None,
        unreachable_timeout: float | None = 30.0,
        queue: object | None = None,
    ) -> None:
        self._queue = queue
        if queue_redis is not None and names_cluster(queue_redis):
            # Else no reader of the queue's records would be built, silently.
            raise TypeError(
                "queue_redis is the queue's own Redis, one server whose records are read; "
                "it is a Redis Cluster here: give the cluster as the Tracker's redis"
            )
        if unreachable_timeout is not None and not unreachable_timeout > 0:
            raise ValueError(
                "unreachable_timeout must be a positive number of seconds or None, "
                f"got {unreachable_timeout!r}"
            )
        self._unreachable_timeout = unreachable_timeout
        self._endings: set[asyncio.Future[None]] = set()
        self._redis: Client | None = None
        self._owns_redis = False
        if redis is not None:
            self._redis, self._owns_redis = client_from(redis)
        self._queue_redis: Client | None = None
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
    def redis(self) -> Client | None:
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
        The job's return value is ``state.result`` where its job side reports
        results (``report_result``); the queue's own result store may not have
        it yet when this returns (arq stores it after the job side's write).

        Raises:
            JobNotFound: at once, if the job has no record anywhere.
            JobLost: Redis lost the job's record while it was waited for.
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``.
            TimeoutError: ``timeout`` seconds passed first.
            ImmortusError: any other documented failure of :meth:`watch`.
        """
        # asyncio's own deadline: anyio's cancel scope cost a waiter more than its wake.
        async with asyncio.timeout(timeout):
            with tracing.waiting(job_id) as span:
                states = self.watch(job_id, function=function)
                try:
                    first = True
                    async for state in states:
                        if first and state.status is JobStatus.UNKNOWN:
                            raise JobNotFound(job_id)
                        if first:
                            await tracing.link(span, self.strategy(function), job_id)
                        if state.completed:
                            if not first:  # it waited: the push woke it
                                metrics.woke(state.finished_at)
                            return state
                        first = False
                finally:
                    close = getattr(states, "aclose", None)
                    if close is not None:
                        await close()
        raise AssertionError("watch() ended before a terminal state")  # pragma: no cover

    # The queue's own job type comes back, for each queue's target (see _targets.py).
    # Where taskiq or streaQ is not installed its types are Any, so the type checker
    # finds the overloads after the first of that queue unreachable: hence the ignores.
    @overload
    async def enqueue(
        self, target: ArqPool[J], function: str, *args: Any, owner: str | None = None, **kwargs: Any
    ) -> J: ...
    @overload
    async def enqueue(
        self,
        target: TaskiqBroker,
        function: AsyncTaskiqDecoratedTask[P, Coroutine[Any, Any, R]]
        | AsyncKicker[P, Coroutine[Any, Any, R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AsyncTaskiqTask[R]: ...
    @overload
    async def enqueue(  # type: ignore[overload-cannot-match, unused-ignore]
        self,
        target: TaskiqBroker,
        function: AsyncTaskiqDecoratedTask[P, R] | AsyncKicker[P, R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> AsyncTaskiqTask[R]: ...
    @overload
    async def enqueue(  # type: ignore[overload-cannot-match, unused-ignore]
        self,
        target: TaskiqBroker,
        function: str,
        *args: Any,
        owner: str | None = None,
        **kwargs: Any,
    ) -> AsyncTaskiqTask[Any]: ...
    @overload
    async def enqueue(
        self,
        target: StreaqWorker,
        function: AsyncRegisteredTask[P, R] | SyncRegisteredTask[P, R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Task[P, R]: ...
    @overload
    async def enqueue(  # type: ignore[overload-cannot-match, unused-ignore]
        self, target: StreaqWorker, function: Task[P, R], *, owner: str | None = None
    ) -> Task[P, R]: ...
    @overload
    async def enqueue(  # type: ignore[overload-cannot-match, unused-ignore]
        self,
        target: StreaqWorker,
        function: str,
        *args: Any,
        owner: str | None = None,
        **kwargs: Any,
    ) -> Task[Any, Any]: ...
    async def enqueue(self, target: object, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Enqueue with the queue ``target`` belongs to, record ``queued``; return its job.

        ``target`` is what the queue enqueues on, and decides the adapter
        (:func:`immortus_async.adapters.for_target`): an ``arq.ArqRedis`` pool,
        with the function's name and every argument, arq's underscore options
        (``_job_id``, ``_defer_by``, ...) included, going to ``pool.enqueue_job``;
        the other adapters say what they take. The queued state is written after
        the queue has the job, as attempt 0, so a worker that already started it
        is never moved back. Returns None, and writes nothing, when the queue
        refuses the job (arq: a duplicate ``_job_id``).

        ``owner`` (keyword-only, taken by the Tracker: not passed to the queue)
        records who the job is for, e.g. ``owner="user-42"``: the job joins that
        owner's feed (:meth:`watch_owner`), which a page follows to list a
        user's jobs live. A job keeps its first owner (a new run of an ended id
        takes the owner of its enqueue). The overloads that check a taskiq or
        streaQ task's own arguments do not name it: the type checker refuses
        arguments after a ``ParamSpec``'s.

        The job is enqueued once the queue has it: if the tracking Redis cannot be
        reached for the queued state, that is logged and the job returned all the
        same (raising would invite the caller to enqueue it twice); the worker's
        own updates, and the queue's records, tell the rest.

        Raises:
            TypeError: no queue adapter takes ``target``.
            ValueError: ``owner`` is not a non-empty string, or the Tracker's
                default strategy keeps no owner feeds (before anything is enqueued).
        """
        owner = kwargs.pop("owner", None)
        adapter = adapters.for_target(target)
        # Taken before the queue has the job: a record of this id that ended
        # earlier is of a run before this one, which this enqueue starts afresh.
        queued = functools.partial(self._queued, since=utcnow())
        if owner is not None:
            self._feed_strategy(owner)
            queued = functools.partial(queued, owner=owner)
        with tracing.publishing(adapter.name, function):
            return await adapter.enqueue(target, function, args, kwargs, queued)

    async def _queued(
        self,
        job_id: str,
        function: str | None,
        *,
        since: datetime | None = None,
        owner: str | None = None,
    ) -> None:
        """Record that the queue has ``job_id``; a Redis out of reach is only logged."""
        strategy = self.strategy(function)
        if owner is not None and not _feeds(strategy):
            logger.warning(
                "job %s has an owner, but its strategy %s keeps no owner feeds",
                job_id,
                type(strategy).__name__,
            )
            owner = None
        try:
            if isinstance(strategy, StateWriter):
                update = JobUpdate(
                    job_id=job_id,
                    status=JobStatus.QUEUED,
                    attempt=0,
                    function=function,
                    since=since,
                )
                if owner is None:
                    await strategy.apply(update)
                else:
                    await strategy.apply(update, owner=owner)  # type: ignore[call-arg]
                await tracing.carry(strategy, job_id)
            elif callable(getattr(strategy, "job_enqueued", None)):
                await strategy.job_enqueued(job_id)  # type: ignore[attr-defined]
        except UNREACHABLE as exc:
            logger.warning(
                "job %s is enqueued, but its queued state was not written: %s", job_id, exc
            )

    def watch_owner(self, owner: str) -> AsyncIterator[JobState]:
        """Iterate over the owner's jobs: the newest (at most 100) now, then every
        change of any of them as it happens, each job queued later included; never
        ends by itself (break, or ``aclose()`` it).

        Only jobs enqueued with ``owner=`` (:meth:`enqueue`) belong to an owner.
        A waiter that falls behind gets only the latest state per job. The feed
        is the default strategy's (``"redis_pub_sub"``).

        Raises:
            ValueError: ``owner`` is not a non-empty string, or the strategy
                keeps no owner feeds.
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``.
            InvalidStateError: a message on the owner's channel is not a job state.
        """
        feed: AsyncIterator[JobState] = self._feed_strategy(owner).watch_owner(owner)
        return feed

    def _feed_strategy(self, owner: object) -> Any:
        """The default strategy, which keeps the owner feeds; ValueError if it cannot."""
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"owner must be a non-empty string, got {owner!r}")
        strategy = self.strategy()
        if not _feeds(strategy):
            raise ValueError(
                f"{type(strategy).__name__} keeps no owner feeds: use the 'redis_pub_sub' strategy"
            )
        return strategy

    async def owner(self, job_id: str) -> str | None:
        """The owner the job was enqueued with (``enqueue(..., owner=...)``), or None
        (no owner, no record, or a strategy without owner feeds): what an app's
        ``authorize`` asks to let a user see their own jobs.

        Raises:
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``.
        """
        strategy = self.strategy()
        if not _feeds(strategy):
            return None
        found: str | None = await retrying(
            lambda: strategy.owner(job_id),  # type: ignore[attr-defined]
            job_id,
            unreachable_timeout=self._unreachable_timeout,
            where=getattr(strategy, "where", "Redis"),
        )
        return found

    def owner_token(self, owner: str, *, ttl: float = 3600) -> str:
        """A signed token (JWT, HS256, claim ``owner``) that lets a browser follow
        ``owner``'s feed for ``ttl`` s; it opens no single job.

        Raises:
            ValueError: the Tracker has no secret.
        """
        if self._secret is None:
            raise ValueError("no signing secret: pass Tracker(secret=...) or set IMMORTUS_SECRET")
        return mint_owner_token(owner, self._secret, ttl=ttl)

    async def abort(self, job_id: str) -> bool:
        """Ask the job's queue to abort it; False, asking nothing, if it has ended.

        The queue is the adapter of ``queue`` (the Tracker's argument), else of
        :func:`~immortus_async.configure`. A job the queue takes out before it
        runs is recorded ``aborted`` at once; a running job is cancelled by its
        worker (arq: only a worker with ``allow_abort_jobs=True``), whose tracking
        records ``aborted``. Either way every watcher gets the terminal
        ``aborted``, unless the job ends otherwise first: ``await
        tracker.completed(job_id)`` tells which. Returns once the queue has the
        request, without waiting for the job to stop.

        Raises:
            JobNotFound: the job has no record anywhere.
            AbortUnsupported: its queue cannot abort a job (taskiq), or needs the
                ``queue`` object this Tracker was not given (streaQ's worker).
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``,
                or the queue's Redis did not take the request within it (not
                retried: ask again).
        """
        state = await self.status(job_id)
        if state.status is JobStatus.UNKNOWN:
            raise JobNotFound(job_id)
        if state.completed:
            return False
        if self._queue is not None:
            adapter, target = adapters.for_target(self._queue), self._queue
        else:
            adapter = adapters.load(config.queue_adapter() or adapters.DEFAULT)
            target = self._queue_redis or self._redis
        await self._asking_queue(adapter.abort(target, job_id, self._shielded_abort(state)), job_id)
        return True

    async def _asking_queue(self, request: Coroutine[Any, Any, None], job_id: str) -> None:
        """Run ``request`` to the queue within ``unreachable_timeout``. Not retried:
        a request that reached the queue but lost its answer would find the job
        gone the second time, and its ``aborted`` would never be recorded."""
        try:
            async with asyncio.timeout(self._unreachable_timeout):
                await request
        except REFUSED:
            raise
        except UNREACHABLE as exc:
            limit = self._unreachable_timeout
            reason = str(exc) or (
                type(exc).__name__ if limit is None else f"no answer in {limit:g}s"
            )
            raise RedisUnavailable(
                f"cannot reach the queue's Redis to abort job {job_id!r}: {reason}"
            ) from exc

    def _shielded_abort(self, state: JobState) -> Callable[[str], Awaitable[None]]:
        """Record ``aborted`` beyond the queue request's deadline: once the queue has
        taken the job out, its end must be written even if the caller gives up."""

        async def aborted(job_id: str) -> None:
            write = asyncio.ensure_future(self._aborted(state, job_id))
            # Held until done: a shielded task nobody references may be collected.
            self._endings.add(write)
            write.add_done_callback(self._endings.discard)
            await asyncio.shield(write)

        return aborted

    async def _aborted(self, state: JobState, job_id: str) -> None:
        """Record ``aborted`` for a job its queue took out before it ran."""
        strategy = self.strategy(state.function)
        update = JobUpdate(
            job_id=job_id,
            status=JobStatus.ABORTED,
            attempt=state.attempt,
            error="aborted before it ran",
        )
        if isinstance(strategy, StateWriter):
            await strategy.apply(update)
        elif callable(getattr(strategy, "job_failed", None)):
            await strategy.job_failed(job_id, update.error)  # type: ignore[attr-defined]

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
        strategy's close raises (it is logged: the rest still gets closed).

        Raises:
            asyncio.CancelledError: the caller was cancelled meanwhile; the rest is
                closed all the same first (each close is bounded), so that no
                connection, nor a task that reads one, outlives the Tracker.
        """
        if self._closed:
            return
        self._closed = True
        closers = [getattr(instance, "aclose", None) for instance in self._builder.instances()]
        self._builder.clear()
        if self._owns_redis and self._redis is not None:
            closers.append(self._redis.aclose)
        if self._owns_queue_redis and self._queue_redis is not None:
            closers.append(self._queue_redis.aclose)
        await close_all(closers, on_error=_close_failed)

    async def __aenter__(self) -> Tracker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _close_failed(close: Callable[[], Awaitable[None]], exc: Exception) -> None:
    logger.error("closing the Tracker: %r failed", close, exc_info=exc)


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


def _feeds(strategy: object) -> bool:
    """Whether ``strategy`` keeps owner feeds (the ``redis_pub_sub`` strategy does)."""
    return callable(getattr(strategy, "watch_owner", None))
