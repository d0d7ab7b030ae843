"""The job side of taskiq: a broker middleware, and the context a task reports through.

Add :class:`TrackingMiddleware` to the broker the workers run, and ask for the
task's :class:`~immortus_async.jobside.JobContext` through taskiq's own
dependency injection::

    broker = ListQueueBroker(url).with_result_backend(RedisAsyncResultBackend(url))
    broker.add_middlewares(SimpleRetryMiddleware(), TrackingMiddleware())

    @broker.task
    async def process_csv(path: str, job: JobContext = TaskiqDepends(tracking)) -> int:
        for i, row in enumerate(rows):
            ...
            await job.update(progress=(i + 1) / n, rows=i + 1)

**What is recorded.** ``queued`` as a process whose broker carries the middleware
sends a task (``task.kiq()``: a web process records its tasks with no change to
its code; ``tracker.enqueue(broker, task, ...)`` does the same for any broker);
``started`` before the task runs (``attempt`` is one more
than the runs taskiq counted before it: the ``_retries`` label its retry
middlewares stamp, plus the ``X-Taskiq-requeue`` label of ``Context.requeue``; and
one more than an attempt our record says began and never ended, the task of a
killed worker that an acknowledging broker hands to the next);
after it, ``finished``, ``failed`` with the error text (``"ValueError: bad row"``),
or ``retrying`` with it when taskiq will run the task again (a task past taskiq's
``timeout`` label fails with ``"TimeoutError: the task ran past its timeout
(5s)"``). Tracking never changes the task's result or what taskiq does next.

**How a retry is told from a failure.** Not by guessing the retry middleware's
rules: a retry middleware (``SimpleRetryMiddleware``, ``SmartRetryMiddleware``, or
``Context.requeue``) sends the task again with the same id while the attempt is
still in this worker, and this middleware sees that send (``pre_send``) and
records ``retrying`` before the broker has the task, so the next attempt's
``started`` always comes after it (that attempt may start in this very worker
before the failed one's last hook has run). A ``SmartRetryMiddleware`` with a
``schedule_source`` schedules instead of sending; it is still seen when it stores
no result of the attempt (``no_result_on_retry``, its default). A task that raises
``NoResultError`` itself ends ``finished``: it asked taskiq to keep no result, not
to fail.

**Which strategy, which Redis.** ``strategy`` given here, else
:func:`~immortus_async.configure`'s, else ``"redis_pub_sub"``; a name or a class is
built on ``redis`` (default: a client of the broker's own Redis, for taskiq-redis
brokers). The middleware never reads taskiq's own records (taskiq calls
``post_execute`` after every run), so tracking on a Redis Cluster is only a matter
of ``redis``: ``TrackingMiddleware("redis+cluster://10.0.0.5:7000")`` (or a
``redis.asyncio.cluster.RedisCluster``), the broker and its result backend
staying on their own Redis; waiters then need a
:class:`~immortus_async.Tracker` on the cluster with that Redis as
``queue_redis``. ``heartbeat_interval``, ``stalled_after``, ``retry_for`` and
``write_timeout`` are those of :mod:`immortus_async.jobside` (heartbeats, the
write deadline, redelivery while Redis is unreachable). The background work the
tasks leave belongs to the worker: the broker's shutdown waits up to
``shutdown_grace`` seconds for it, then cancels what is left and awaits it.

Middleware order does not matter: in a worker the middleware moves itself last
in the broker's list (see :meth:`TrackingMiddleware.startup`), and the end is
recorded in ``post_execute``, which taskiq calls after every ``on_error``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from taskiq import Context, TaskiqDepends, TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from ... import config
from ..._describe import describe_error
from ..._redis import Client, client_from
from ...jobside import (
    MAX_RESULT_BYTES,
    JobContext,
    JobOptions,
    Leftovers,
    _strategy_on,
    begin_job,
)
from ...registry import StrategySpec, resolve_strategy
from ...state import JobUpdate
from ...status import JobStatus
from ...strategies.base import StateReader, StateWriter
from .strategy import client_of

__all__ = ["TrackingMiddleware", "attempt_of", "tracking"]

logger = logging.getLogger("immortus_async.adapters.taskiq")


_REQUEUES = "X-Taskiq-requeue"


def _count(message: TaskiqMessage, label: str) -> int:
    try:
        return max(int(message.labels.get(label) or 0), 0)
    except (TypeError, ValueError):
        return 0


def _error_text(message: TaskiqMessage, error: BaseException) -> str:
    """``"ValueError: bad row"``; taskiq's timeout (a bare ``TimeoutError``) says so."""
    timeout = message.labels.get("timeout")
    if isinstance(error, TimeoutError) and not str(error) and timeout is not None:
        return describe_error(error, default=f"the task ran past its timeout ({timeout}s)")
    return describe_error(error)


def attempt_of(message: TaskiqMessage) -> int:
    """Which run of its task ``message`` is: 1, plus each retry and requeue taskiq counted."""
    return 1 + _count(message, "_retries") + _count(message, _REQUEUES)


@dataclass(slots=True)
class _Run:
    """One attempt running in this worker."""

    message: TaskiqMessage
    context: JobContext
    # Context.requeue's count as the attempt began (it raises it as it requeues).
    requeues: int = 0
    error: BaseException | None = None
    # The task was sent again while this attempt ran: its end is recorded (retrying).
    sent_again: bool = False


def _broker_redis(broker: Any) -> Redis | None:
    """A client of the broker's own Redis (taskiq-redis brokers), else None."""
    pool = getattr(broker, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return None
    return client_of(pool)


# Where taskiq is not installed (arq's environment), mypy sees TaskiqMiddleware as Any.
class TrackingMiddleware(TaskiqMiddleware):  # type: ignore[misc, unused-ignore]
    """Tracks every task a taskiq worker runs; see the module for what it records.

    Args:
        redis: where to track: a ``redis.asyncio.Redis``, a
            ``redis.asyncio.cluster.RedisCluster`` or a URL
            (``redis+cluster://host:port`` for a cluster); default the broker's
            own Redis (taskiq-redis brokers). A client made from a URL is closed
            at the broker's shutdown.
        strategy: the strategy for the tasks (a name, class, instance or
            ``"module:Class"`` path); default :func:`~immortus_async.configure`'s,
            else ``"redis_pub_sub"``.
        heartbeat_interval: seconds between heartbeats while a task runs.
        stalled_after: seconds without a heartbeat after which readers report the
            task stalled; default three ``heartbeat_interval``.
        retry_for: seconds a write is retried while Redis is unreachable.
        write_timeout: seconds a tracking write may hold the task.
        shutdown_grace: seconds the broker's shutdown waits for pending writes.
        report_result: put each task's return value in its ``finished`` state
            (``state.result``) when it is JSON-serialisable and at most
            ``max_result_bytes`` encoded as JSON (default 64 KiB); a result that
            is not is left out, with one error logged, and the task is finished
            all the same (the result backend keeps it as always).
        max_result_bytes: the largest result reported, in bytes of JSON.

    Raises:
        ValueError: bad timings; StrategyNotFound: ``strategy`` names nothing.
    """

    def __init__(
        self,
        redis: Client | str | None = None,
        *,
        strategy: StrategySpec | None = None,
        heartbeat_interval: float = 5.0,
        stalled_after: float | None = None,
        retry_for: float = 30.0,
        write_timeout: float = 1.0,
        shutdown_grace: float = 5.0,
        report_result: bool = False,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        super().__init__()
        self._options = JobOptions.checked(
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
        self._strategy = strategy
        self._grace = shutdown_grace
        self._given = redis
        self._redis: Client | None = None
        self._owns_redis = False
        self._looked = False
        self._leftovers = Leftovers()
        # id(message) -> its attempt running here. The receiver hands one message
        # object to every hook of an attempt and to the task's Context; a task id
        # alone is not enough: a retry may start here before its failed attempt's
        # last hook has run.
        self._runs: dict[int, _Run] = {}

    # The broker's life

    def _client(self) -> Client | None:
        """The tracking client, made on first use; None (said once) when there is none."""
        if not self._looked:
            self._looked = True
            if self._given is not None:
                self._redis, self._owns_redis = client_from(self._given)
            else:
                self._redis, self._owns_redis = _broker_redis(self.broker), True
                if self._redis is None:
                    logger.error(
                        "%s has no Redis of its own: give TrackingMiddleware(redis=...); "
                        "its tasks run untracked",
                        type(self.broker).__name__,
                    )
        return self._redis

    async def startup(self) -> None:
        """In a worker: go last among the broker's middlewares.

        Last, so that taskiq calls this ``on_error`` before any retry middleware's
        (it calls them in reverse order): the error text is known when the retry
        middleware sends the task again. The others keep their order.
        """
        if not self.broker.is_worker_process:
            return
        middlewares = self.broker.middlewares
        if self in middlewares and middlewares[-1] is not self:
            middlewares.remove(self)
            middlewares.append(self)

    async def shutdown(self) -> None:
        """Wait up to ``shutdown_grace`` for the tasks' pending writes; close what we opened."""
        await self._leftovers.aclose(self._grace)
        self._looked = False
        redis, self._redis = self._redis, None
        if redis is not None and self._owns_redis:
            await redis.aclose()

    # One task's run

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Record ``started`` and start the heartbeat, before the task runs."""
        function = message.task_name
        redis = self._client()
        spec = config.strategy_for(function, override=self._strategy)
        context = await begin_job(
            message.task_id,
            await self._attempt(message, redis, spec),
            redis=redis,
            spec=spec,
            options=self._options,
            function=function,
            leftovers=self._leftovers,
            # No reader of taskiq's records: taskiq calls post_execute after every
            # run, cancelled or timed out too, so no end goes unseen here.
            queue="taskiq",
        )
        self._runs[id(message)] = _Run(message, context, _count(message, _REQUEUES))
        return message

    async def _attempt(
        self, message: TaskiqMessage, redis: Client | None, spec: StrategySpec
    ) -> int:
        """Which attempt this run is, and the end of the one before where it is missing.

        taskiq's count, or one more than an attempt that began and never ended: a
        broker that acknowledges (``RedisStreamBroker``) hands the task of a worker
        that died to another one with the labels it had, so taskiq's count says the
        same attempt again, while our record says that attempt began.

        An earlier attempt still ``started`` in our record when a later one begins
        was run again without a send we saw (``Context.requeue`` kicks the broker
        itself; a retry scheduled elsewhere): it is recorded ``retrying`` first, so
        the watchers see it before the new attempt's ``started``.

        Reads and writes here have the write deadline; past it, or on any error,
        taskiq's own count is used and the task goes on.
        """
        counted = attempt_of(message)
        if redis is None:
            return counted
        task_id = message.task_id
        try:
            # The instance begin_job then writes with (one per client and spec).
            strategy = _strategy_on(redis, spec)
            if not isinstance(strategy, StateReader):
                return counted
            async with asyncio.timeout(self._options.write_timeout):
                state = await strategy.status(task_id)
                if state.status is not JobStatus.STARTED:
                    return counted
                if state.attempt >= counted:
                    return state.attempt + 1
                if isinstance(strategy, StateWriter):
                    why = "requeued" if _count(message, _REQUEUES) else "run again"
                    update = JobUpdate(
                        job_id=task_id, status=JobStatus.RETRYING, attempt=state.attempt, error=why
                    )
                    await strategy.apply(update)
        except Exception as exc:
            # The worst outcome is taskiq's own count: never hold the task for it.
            logger.debug("cannot read the record of task %s: %r", task_id, exc)
        return counted

    def context_for(self, message: TaskiqMessage) -> JobContext | None:
        """The context of the attempt running ``message`` here, if this middleware began it."""
        run = self._runs.get(id(message))
        return run.context if run is not None and run.message is message else None

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        """A task sent while an attempt of the same id runs here will run again:
        record that attempt ``retrying`` now, before the broker has the task, so that
        its next attempt's ``started`` comes after it."""
        for run in self._runs.values():
            if run.message.task_id == message.task_id and not run.sent_again:
                run.sent_again = True
                # No error yet: the task itself sent its message again.
                why = "sent again" if run.error is None else _error_text(message, run.error)
                await run.context.retrying(why)
        return message

    async def post_send(self, message: TaskiqMessage) -> None:
        """The broker has a new task: record it ``queued`` (a send made here as a
        retry is not one: its attempt's end is already recorded).

        So a web process whose broker carries the middleware records every
        ``kiq()`` it makes, with no change to its code. The write has the write
        deadline; past it, or if Redis cannot be reached, it is logged and dropped
        (the task is sent all the same, and its worker records the rest).
        """
        task_id = message.task_id
        if any(run.message.task_id == task_id for run in self._runs.values()):
            return
        redis = self._client()
        if redis is None:
            return
        function = message.task_name
        try:
            strategy = _strategy_on(redis, config.strategy_for(function, override=self._strategy))
            if isinstance(strategy, StateWriter):
                update = JobUpdate(
                    job_id=task_id, status=JobStatus.QUEUED, attempt=0, function=function
                )
                async with asyncio.timeout(self._options.write_timeout):
                    await strategy.apply(update)
        except Exception as exc:
            logger.warning(
                "task %s is sent, but its queued state was not written: %r", task_id, exc
            )

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        """Keep the task's own exception: a retry middleware may replace the result's."""
        run = self._runs.get(id(message))
        if run is not None:
            run.error = exception

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Record how the attempt ended (every ``on_error`` has run by now)."""
        run = self._runs.pop(id(message), None)
        if run is None:
            return
        context = run.context
        try:
            error = run.error if run.error is not None else result.error
            if run.sent_again:
                pass  # recorded as it was sent again
            elif _count(message, _REQUEUES) > run.requeues:
                # Context.requeue: it counts the run on the message, sends it again
                # (straight to the broker, no middleware sees it) and ends this one.
                await context.retrying("requeued")
            elif not result.is_err:
                await context.finished(result.return_value)
            elif isinstance(error, NoResultError):
                await context.finished()
            elif error is None:
                await context.failed("the task failed")
            elif isinstance(result.error, NoResultError):
                # A retry middleware kept no result of the attempt: it will run the
                # task again, without sending it now (a schedule source).
                await context.retrying(_error_text(message, error))
            else:
                await context.failed(_error_text(message, error))
        finally:
            await context.stop()


# A default that declares a dependency is how taskiq's injection is written.
def tracking(context: Context = TaskiqDepends()) -> JobContext:  # noqa: B008
    """The running task's :class:`~immortus_async.jobside.JobContext`, for ``TaskiqDepends``.

    ``job: JobContext = TaskiqDepends(tracking)`` in a task's signature gives the
    context :class:`TrackingMiddleware` began for this attempt. On a broker without
    the middleware, or for a task called outside a worker, it is a context that
    records nothing, so the task runs the same.
    """
    message = context.message
    for middleware in context.broker.middlewares:
        if isinstance(middleware, TrackingMiddleware):
            found = middleware.context_for(message)
            if found is not None:
                return found
    return JobContext(message.task_id, attempt_of(message), function=message.task_name)
