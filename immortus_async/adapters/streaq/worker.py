"""The job side of streaQ: track every task of a worker through streaQ's middleware.

:func:`track_worker` registers a task middleware on a ``streaq.Worker``; inside a
task, :func:`job_context` is its :class:`~immortus_async.JobContext`::

    worker = Worker(redis_url=REDIS_URL)
    track_worker(worker, redis=REDIS_URL)

    @worker.task
    async def process_csv(path: str) -> int:
        for i, row in enumerate(rows):
            ...
            await job_context().update(progress=(i + 1) / n, rows=i + 1)

A synchronous task (streaQ runs it in a thread) is tracked the same; it reports
through the event loop: ``anyio.from_thread.run(job_context().update, 0.5)``.

**Which Redis.** streaQ talks to Redis through coredis; tracking writes through a
redis-py client of its own, on the URL (or the ``redis.asyncio.Redis``) given to
:func:`track_worker` as ``redis``: by default the worker's own Redis, so that
waiters find both our records and streaQ's there. To track on a Redis Cluster,
give it as ``redis`` (a ``redis.asyncio.cluster.RedisCluster`` or a
``redis+cluster://`` URL) and the worker's own Redis as ``queue_redis``: tracking
writes go to the cluster, streaQ's records are read where streaQ keeps them::

    track_worker(worker, redis="redis+cluster://10.0.0.5:7000", queue_redis=REDIS_URL)

Waiters then need a :class:`~immortus_async.Tracker` on the cluster with the same
``queue_redis``. Which strategy: the task's inline one (set with
``config.set_inline_strategy(name, ...)``), else the one given to
:func:`track_worker`, else :func:`~immortus_async.configure`'s, else
``"redis_pub_sub"``.

**What each end records.** A task that returns: ``finished``. One that raises:
``failed`` with the error text (``"ValueError: bad row"``). ``StreaqRetry``:
``retrying``; when streaQ then gives up without running it again (its
``max_tries``), its result record says ``failed`` and readers that fall back on
streaQ's records (``"redis_pub_sub"`` under ``configure(queue_adapter="streaq")``)
report it, pushed by streaQ's own result message. A cancellation (``abort()``,
the task's ``timeout``, a worker shutting down past its ``grace_period``) looks
the same from inside the task, so its outcome is read from what streaQ records
next: ``aborted``, ``failed`` (``"TimeoutError: Task timed out!"``) or
``retrying`` (a timeout under ``retry_timeouts``). A task that a stopping worker
hands back to be run again stays ``started`` (``stalled`` once its heartbeats
stop) until a worker runs it again. Tasks streaQ ends without running them
(expired, aborted before they ran, unknown function, a failed dependency, retries
exhausted) never reach the middleware: only streaQ's result record knows them, and
the fallback reads it.

Heartbeats, write deadlines and redelivery are the job side's
(:mod:`immortus_async.jobside`): tracking never fails a task, never changes its
result and never holds it longer than ``write_timeout`` per write.

**Shutdown.** The background work tasks leave (pending writes, reading streaQ's
outcome after a cancellation) belongs to the worker: when it stops (its lifespan
exits, after its own tasks have ended) it is waited for up to ``shutdown_grace``
seconds, then cancelled, each lost state logged, and awaited; the tracking
client made from a URL is closed then too. streaQ runs its worker on anyio; the
job side needs anyio's asyncio backend (streaQ's default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

import anyio
from redis.asyncio import Redis
from streaq import StreaqRetry, Worker
from streaq.task import RegisteredMiddleware
from streaq.types import StreaqCancelled

from ... import config
from ..._describe import describe_error
from ..._redis import Client, client_from, names_cluster
from ...jobside import MAX_RESULT_BYTES, JobContext, JobOptions, Leftovers, begin_job
from ...registry import StrategySpec, resolve_strategy
from .strategy import StreaqStrategy

__all__ = ["job_context", "track_worker"]

W = TypeVar("W", bound=Worker[Any])
Run = Callable[..., Coroutine[Any, Any, Any]]

_current: ContextVar[JobContext] = ContextVar("immortus_streaq_job")
# streaQ records what a cancelled attempt meant as soon as our middleware returns.
# An attempt its records still show running this long after was handed back to be
# run again (a worker stopping past its grace_period): its next run records itself.
# Waiting no longer keeps a stopping worker from waiting out its shutdown_grace.
_RECORDED_WITHIN = 1.0


def job_context() -> JobContext:
    """The :class:`~immortus_async.JobContext` of the streaQ task running here.

    Inside a task of a worker under :func:`track_worker`, its context (this
    attempt's); anywhere else (a test calling the task's function itself), a
    context that records nothing, so the function runs the same.
    """
    try:
        return _current.get()
    except LookupError:
        return JobContext("")


class _Tracking:
    """What track_worker keeps for one worker: its clients, reader, options and leftovers."""

    def __init__(
        self,
        worker: Worker[Any],
        redis: Client | str,
        queue_redis: Redis | str | None,
        strategy: StrategySpec | None,
        options: JobOptions,
        grace: float,
    ) -> None:
        # Clients made here from URLs are closed as the worker stops.
        self.redis, owned = client_from(redis)
        self._owned: list[Client] = [self.redis] if owned else []
        records = self.redis
        if queue_redis is not None:
            records, owned = client_from(queue_redis)
            self._owned += [records] if owned else []
        assert isinstance(records, Redis), "track_worker refuses a cluster for streaQ's records"
        self.strategy, self.options, self.grace = strategy, options, grace
        # streaQ's records, read the way this worker reads them (its queue, its
        # deserializer and signing secret), for the outcome after a cancellation.
        self.reader = StreaqStrategy(records, worker=worker)
        self.leftovers = Leftovers()
        self.registered: RegisteredMiddleware | None = None

    def middleware(self, run: Run) -> Run:
        """streaQ's middleware: ``run`` is the task (and the middlewares inside this one)."""

        async def tracked(*args: Any, **kwargs: Any) -> Any:
            assert self.registered is not None
            task = self.registered.context
            context = await begin_job(
                task.task_id,
                task.tries,
                redis=self.redis,
                spec=config.strategy_for(task.fn_name, override=self.strategy),
                options=self.options,
                function=task.fn_name,
                leftovers=self.leftovers,
                reader=self.reader,
                queue="streaQ",
            )
            token = _current.set(context)
            try:
                result = await run(*args, **kwargs)
            except StreaqRetry as exc:
                await context.retrying(describe_error(exc))
                raise
            except StreaqCancelled as exc:
                # Raised by the task itself: streaQ records it as an abort.
                await context.aborted(describe_error(exc, default="task aborted"))
                raise
            except anyio.get_cancelled_exc_class():
                # Inside a cancelled scope every await is cancelled again: shielded,
                # this hands the outcome to the background and returns.
                with anyio.CancelScope(shield=True):
                    await context.settle(wait=_RECORDED_WITHIN)
                raise
            except Exception as exc:
                await context.failed(describe_error(exc))
                raise
            finally:
                _current.reset(token)
                with anyio.CancelScope(shield=True):
                    await context.stop()
            await context.finished(result)
            return result

        return tracked

    async def aclose(self) -> None:
        """What the worker owes when it stops: leftovers awaited, our client closed."""
        # The worker may be stopping because it was cancelled: what it owes still
        # gets its grace period.
        with anyio.CancelScope(shield=True):
            await self.leftovers.aclose(self.grace)
            await self.reader.aclose()
            for client in self._owned:
                await client.aclose()


class _Lifespan:
    """The worker's own lifespan with ours around its exit (``Worker.lifespan``).

    Being one of these is also how a worker is known to be tracked already.
    """

    def __init__(self, inner: AbstractAsyncContextManager[Any], tracking: _Tracking) -> None:
        self._inner, self._tracking = inner, tracking

    async def __aenter__(self) -> Any:
        return await self._inner.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            await self._tracking.aclose()
        finally:
            suppressed = await self._inner.__aexit__(exc_type, exc, traceback)
        return suppressed


def track_worker(
    worker: W,
    *,
    redis: Client | str,
    queue_redis: Redis | str | None = None,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
    write_timeout: float = 1.0,
    shutdown_grace: float = 5.0,
    report_result: bool = False,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> W:
    """Track every task of a streaQ worker: register our middleware on it; return it.

    Each attempt records ``started`` (``attempt`` is streaQ's try count) before the
    task runs, then its end (see the module's notes), with heartbeats meanwhile;
    inside the task, :func:`job_context` reports progress and meta. The task's
    result or exception is passed on untouched, so streaQ's results, retries,
    timeouts and aborts work as before. Middlewares registered before this one
    run outside it (streaQ applies them in order, the first outermost).

    The worker's ``lifespan`` is wrapped so that, as the worker stops, the
    tracking work its tasks left behind is awaited for up to ``shutdown_grace``
    seconds, then cancelled and awaited: nothing of ours outlives the worker.

    Args:
        worker: the ``streaq.Worker``, before it runs.
        redis: where tracking writes go: the worker's own Redis, as a URL or a
            ``redis.asyncio.Redis`` (``decode_responses=False``), or a Redis
            Cluster (a ``redis.asyncio.cluster.RedisCluster`` or a
            ``redis+cluster://`` URL), which needs ``queue_redis``. A client made
            from a URL is closed when the worker stops (``queue_redis``'s too).
        queue_redis: the worker's own Redis, where streaQ's records are read
            (the outcome of a cancelled task), when ``redis`` is not it: a URL or
            a ``redis.asyncio.Redis`` (``decode_responses=False``), one server.
            Default: ``redis``.
        strategy: the strategy for tasks that have no inline one; default
            :func:`~immortus_async.configure`'s, else ``"redis_pub_sub"``.
        heartbeat_interval: seconds between heartbeats while a task runs.
        stalled_after: seconds without a heartbeat after which readers report the
            task stalled; default three ``heartbeat_interval``.
        retry_for: seconds a write is retried while Redis is unreachable.
        write_timeout: seconds a tracking write (or a read of streaQ's records)
            may take before it is left to the background redelivery.
        shutdown_grace: seconds a stopping worker waits for pending tracking writes.
        report_result: put each task's return value in its ``finished`` state
            (``state.result``) when it is JSON-serialisable and at most
            ``max_result_bytes`` encoded as JSON (default 64 KiB); a result that
            is not is left out, with one error logged, and the task is finished
            all the same (streaQ keeps its result as always).
        max_result_bytes: the largest result reported, in bytes of JSON.

    Raises:
        TypeError: ``worker`` is not a ``streaq.Worker``; ``redis`` is a Redis
            Cluster and no ``queue_redis`` is given; ``queue_redis`` is a Redis
            Cluster.
        ValueError: bad timings; the worker is tracked already.
        StrategyNotFound: ``strategy`` names nothing.
    """
    if not isinstance(worker, Worker):
        raise TypeError(f"track_worker takes a streaq.Worker, got {type(worker).__name__}")
    # Before any client is made: streaQ's records are read from one server.
    if queue_redis is None and names_cluster(redis):
        raise TypeError(
            "track_worker(redis=...) is a Redis Cluster, where tracking writes go; streaQ's "
            "records are on the worker's own Redis: give that too, as queue_redis=..."
        )
    if queue_redis is not None and names_cluster(queue_redis):
        raise TypeError(
            "track_worker(queue_redis=...) is the streaQ worker's own Redis, one server whose "
            "records are read; it is a Redis Cluster here (give the cluster as redis=...)"
        )
    if isinstance(worker.lifespan, _Lifespan):
        raise ValueError("this worker is tracked already: call track_worker once per worker")
    options = JobOptions.checked(
        heartbeat_interval,
        stalled_after,
        retry_for,
        write_timeout,
        report_result=report_result,
        max_result_bytes=max_result_bytes,
    )
    if not (shutdown_grace >= 0 and math.isfinite(shutdown_grace)):
        raise ValueError(
            f"shutdown_grace must be a finite number of seconds, not negative, got "
            f"{shutdown_grace!r}"
        )
    if strategy is not None:
        resolve_strategy(strategy)
    tracking = _Tracking(worker, redis, queue_redis, strategy, options, shutdown_grace)
    tracking.registered = worker.middleware(tracking.middleware)
    worker.lifespan = _Lifespan(worker.lifespan, tracking)
    return worker
