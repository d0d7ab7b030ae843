"""The job side of arq: track jobs from inside the worker.

``@tracked`` wraps one job function; :func:`track_worker` tracks every job of a
worker, wrapping the functions and cron jobs it is given the same way and setting
the worker's hooks. Either way the job finds a :class:`~immortus_async.JobContext`
at ``ctx["immortus"]`` to report progress; :func:`job_context` is it, typed::

    @tracked
    async def process_csv(ctx: dict[str, Any], path: str) -> int:
        for i, row in enumerate(rows):
            ...
            await job_context(ctx).update(progress=(i + 1) / n, rows=i + 1)

**Which strategy, which Redis.** The job's inline strategy
(``@tracked(strategy=...)``), else the one given to :func:`track_worker`, else
:func:`~immortus_async.configure`'s, else ``"redis_pub_sub"``. A name or a class is
built on arq's own Redis (``ctx["redis"]``), once per worker process. To track in
another Redis, give an instance: ``@tracked(strategy=RedisPubSubStrategy(url))``,
``track_worker(settings, strategy=RedisPubSubStrategy(url))`` or
``configure(tracking_strategy=RedisPubSubStrategy(url))`` in the worker's module;
waiters then need a :class:`~immortus_async.Tracker` on that Redis.

**Heartbeats, and when Redis stops answering**: as :mod:`immortus_async.jobside`
says (``heartbeat_interval``, ``stalled_after``, ``retry_for``, ``write_timeout``);
a read of arq's records made for tracking has the write deadline too.

**Shutdown.** The work a job leaves behind (a pending redelivery, reading arq's
outcome after a cancellation) belongs to its worker. Under :func:`track_worker`,
the worker's ``on_shutdown`` (arq calls it from ``Worker.close()``, after its own
jobs have ended) first waits up to ``shutdown_grace`` seconds (default 5) for it
to finish, then cancels what is left, logging each job whose state is lost, and
awaits it: nothing of ours outlives ``close()``. Heartbeats are cancelled and
awaited as each job ends. ``@tracked`` without :func:`track_worker` has no worker
to belong to: its leftovers run on in the worker's event loop, and a write still
pending when the process exits is lost (readers that share arq's Redis still get
the outcome from arq's result record); put the settings under
:func:`track_worker` (it leaves ``@tracked`` functions to themselves) to have them
awaited.

**Results.** With ``report_result=True`` (on :func:`tracked` or
:func:`track_worker`), the function's return value goes in its ``finished``
state (``state.result``) when it is JSON-serialisable and at most
``max_result_bytes`` as JSON; otherwise it is left out, with one error logged,
and the job is finished all the same. arq stores its result as always, after our
``finished`` is written: a waiter that needs arq's own result reads it with
``Job(job_id, pool).result()``, which waits for it.

**Cancellation.** arq cancels a job for ``job.abort()`` and ``Tracker.abort``
(only in a worker started with ``allow_abort_jobs=True``), for its timeout, and
when a worker shuts down, and the three look the same from inside. So after a
cancellation the outcome is taken from what arq records next: ``aborted``,
``failed`` (``"TimeoutError: job timed out"``) or ``retrying``. arq's records are
read with the worker's own ``job_deserializer`` when :func:`track_worker` is given
it (a worker's serializer may differ from its pool's), else with the pool's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

from arq.constants import default_queue_name
from arq.cron import CronJob
from arq.worker import Function, Retry, RetryJob, func
from redis.asyncio import Redis

from ... import config
from ..._describe import describe_error
from ..._redis import UNREACHABLE
from ...jobside import MAX_RESULT_BYTES, UNOWNED, JobContext, JobOptions, Leftovers, begin_job
from ...registry import StrategySpec, resolve_strategy
from .strategy import ArqStrategy

__all__ = ["job_context", "track_worker", "tracked"]

logger = logging.getLogger("immortus_async.adapters.arq")

_KEY = "immortus"
# Where track_worker's on_startup leaves what belongs to the running worker: arq
# copies the worker's ctx into each job's, so every job of the worker finds it.
_WORKER = "immortus_worker"
_NO_RESULT = (
    "arq kept no result of the job (keep_result=0), so its outcome after a "
    "cancellation or without @tracked is unknown"
)

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])
S = TypeVar("S", bound=dict[str, Any] | type)
JobFunction = Callable[..., Coroutine[Any, Any, Any]]


@dataclass(frozen=True, slots=True)
class _Worker:
    """What track_worker keeps for one running worker."""

    leftovers: Leftovers
    # arq's records, read the way this worker reads them (its queue, its deserializer).
    reader: ArqStrategy


def job_context(ctx: Mapping[str, Any]) -> JobContext:
    """The :class:`~immortus_async.JobContext` of the arq job whose ``ctx`` this is.

    ``ctx["immortus"]``, typed: what ``@tracked`` and :func:`track_worker` put there
    as the job starts. For a ``ctx`` without one (a job tracked by neither, a test
    calling the function itself with a dict of its own), a context that records
    nothing, so the function runs the same.
    """
    context = ctx.get(_KEY)
    if isinstance(context, JobContext):
        return context
    return JobContext(str(ctx.get("job_id") or ""))


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, Retry):
        defer = exc.defer_score
        return f"Retry: run again in {defer / 1000:.2f}s" if defer else "Retry: run again"
    return describe_error(exc)


# Where a reader of arq's records is kept on the worker's client, for the jobs of a
# worker that track_worker did not set up: one per client, not one built per job
# (2% of such a worker's time). On the client itself, not in a cache that would
# hold the client (the reader does) for ever.
_READER_ATTR = "_immortus_arq_reader"


def _reader_of(redis: Redis) -> ArqStrategy:
    reader = getattr(redis, _READER_ATTR, None)
    if not isinstance(reader, ArqStrategy):
        reader = ArqStrategy(redis)
        setattr(redis, _READER_ATTR, reader)
    return reader


async def _begin(
    ctx: dict[Any, Any], redis: Redis, spec: StrategySpec, options: JobOptions, function: str | None
) -> JobContext:
    """Record ``started`` for the job arq is running in ``ctx``, and start beating."""
    worker = ctx.get(_WORKER)
    if isinstance(worker, _Worker):
        leftovers, reader = worker.leftovers, worker.reader
    else:
        leftovers, reader = UNOWNED, _reader_of(redis)
    return await begin_job(
        ctx["job_id"],
        int(ctx.get("job_try") or 1),
        redis=redis,
        spec=spec,
        options=options,
        function=function,
        leftovers=leftovers,
        reader=reader,
        queue="arq",
    )


async def _enter(
    ctx: dict[Any, Any], spec: StrategySpec, options: JobOptions, function: str
) -> JobContext:
    """The job's context: the one worker hooks made, else a new one, started."""
    job_id, redis = ctx.get("job_id"), ctx.get("redis")
    existing = ctx.get(_KEY)
    if isinstance(existing, JobContext) and existing.job_id == job_id:
        return existing
    if isinstance(job_id, str) and isinstance(redis, Redis):
        context = await _begin(ctx, redis, spec, options, function)
    else:
        # Called outside a worker (a test calling the function itself): record nothing.
        context = JobContext(str(job_id or ""), function=function)
    ctx[_KEY] = context
    return context


def _wrap(
    job_function: JobFunction, name: str, spec: Callable[[], StrategySpec], options: JobOptions
) -> JobFunction:
    """``job_function`` recording its own start and end: what ``@tracked`` makes."""

    @functools.wraps(job_function)
    async def job(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        context = await _enter(ctx, spec(), options, name)
        try:
            result = await job_function(ctx, *args, **kwargs)
        except (Retry, RetryJob) as exc:
            await context.retrying(_retry_reason(exc))
            raise
        except asyncio.CancelledError:
            await context.settle(missing=_NO_RESULT)
            raise
        except Exception as exc:
            await context.failed(describe_error(exc))
            raise
        finally:
            await context.stop()
        await context.finished(result)
        return result

    return job


@overload
def tracked(function: F, /) -> F: ...


@overload
def tracked(
    *,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
    write_timeout: float = 1.0,
    report_result: bool = False,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> Callable[[F], F]: ...


def tracked(
    function: F | None = None,
    /,
    *,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
    write_timeout: float = 1.0,
    report_result: bool = False,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> F | Callable[[F], F]:
    """Track an arq job function: ``@tracked`` or ``@tracked(strategy=...)``.

    Each run records ``started`` (``attempt`` is arq's ``job_try``) before the
    function is called, then ``finished`` when it returns, ``failed`` with the error
    text (``"ValueError: bad row"``) when it raises, ``retrying`` when it raises
    arq's ``Retry``, and, when arq cancels it, what arq makes of that: ``aborted``
    for ``job.abort()``, ``failed`` for a timeout, ``retrying`` for a worker
    shutting down. The function's result or exception is passed on untouched, so
    arq's results, retries, ``keep_result``, ``max_tries`` and timeouts work as
    before. The wrapper keeps the function's ``__qualname__`` (the name arq
    registers) and works under ``arq.worker.func(f, name=...)``.

    Tracking holds the job at most ``write_timeout`` seconds per write, whatever
    Redis does; past that the write goes on in the background (see the module's
    notes). Without :func:`track_worker`, nothing awaits that background work when
    the worker stops.

    Inside the job, ``ctx["immortus"]`` is its :class:`~immortus_async.JobContext`.

    Args:
        function: the job function, when used as ``@tracked`` without arguments.
        strategy: the job's inline strategy (a name, class, instance or
            ``"module:Class"`` path). It is recorded under the function's
            ``__qualname__`` and on the wrapper, so that a web process importing
            this module finds it with ``Tracker.status(job_id, function=...)``.
        heartbeat_interval: seconds between heartbeats while the job runs.
        stalled_after: seconds without a heartbeat after which readers report the
            job stalled; default three ``heartbeat_interval``.
        retry_for: seconds a write is retried while Redis is unreachable.
        write_timeout: seconds a tracking write (or a read of arq's records) may
            take before it is left to the background redelivery.
        report_result: put the function's return value in its ``finished`` state
            (``state.result``), when it is JSON-serialisable and at most
            ``max_result_bytes`` encoded as JSON (default 64 KiB). A result that is
            not is left out, with one error logged; the job is finished all the
            same and arq keeps its result as always.
        max_result_bytes: the largest result reported, in bytes of JSON.

    Raises:
        TypeError: ``function`` is not an ``async def`` function.
        ValueError: bad timings; StrategyNotFound: ``strategy`` names nothing.
    """
    options = JobOptions.checked(
        heartbeat_interval,
        stalled_after,
        retry_for,
        write_timeout,
        report_result=report_result,
        max_result_bytes=max_result_bytes,
    )
    if strategy is not None:
        resolve_strategy(strategy)

    def decorate(job_function: F) -> F:
        if not inspect.iscoroutinefunction(job_function):
            raise TypeError(
                f"@tracked wraps an async job function (async def); {job_function!r} is not one"
            )
        name = job_function.__qualname__
        job = _wrap(job_function, name, lambda: config.strategy_for(job), options)
        job.__immortus_strategy__ = strategy  # type: ignore[attr-defined]
        if strategy is not None:
            config.set_inline_strategy(name, strategy)
        return cast(F, job)

    return decorate(function) if function is not None else decorate


Hook = Callable[[dict[Any, Any]], Awaitable[Any]]
_HOOK_NAMES = ("on_startup", "on_shutdown", "on_job_start", "after_job_end")


def _hooks(
    own: Mapping[str, Any], strategy: StrategySpec | None, options: JobOptions, grace: float
) -> dict[str, Hook]:
    """The four worker hooks of track_worker, each calling the one in ``own`` after its work."""
    user: dict[str, Hook | None] = {name: own.get(name) for name in _HOOK_NAMES}
    # The worker reads its records with these, whatever its pool would use.
    queue_name = own.get("queue_name", default_queue_name)
    deserializer = own.get("job_deserializer")

    async def on_startup(ctx: dict[Any, Any]) -> None:
        redis = ctx.get("redis")
        if isinstance(redis, Redis):
            reader = ArqStrategy(redis, queue_name=queue_name, deserializer=deserializer)
            ctx[_WORKER] = _Worker(Leftovers(), reader)
        if (hook := user["on_startup"]) is not None:
            await hook(ctx)

    async def on_shutdown(ctx: dict[Any, Any]) -> None:
        worker = ctx.pop(_WORKER, None)
        try:
            if isinstance(worker, _Worker):
                await worker.leftovers.aclose(grace)
        finally:
            if (hook := user["on_shutdown"]) is not None:
                await hook(ctx)

    async def on_job_start(ctx: dict[Any, Any]) -> None:
        job_id, redis = ctx.get("job_id"), ctx.get("redis")
        if isinstance(job_id, str) and isinstance(redis, Redis):
            worker = ctx.get(_WORKER)
            reader = worker.reader if isinstance(worker, _Worker) else ArqStrategy(redis)
            try:
                async with asyncio.timeout(options.write_timeout):
                    function = (await reader.status(job_id)).function
            except UNREACHABLE as exc:
                logger.warning("cannot read arq's record of job %s: %s", job_id, options.why(exc))
                function = None
            except Exception as exc:
                logger.warning("cannot read arq's record of job %s: %s", job_id, exc)
                function = None
            spec = config.strategy_for(function, override=strategy)
            ctx[_KEY] = await _begin(ctx, redis, spec, options, function)
        if (hook := user["on_job_start"]) is not None:
            await hook(ctx)

    async def after_job_end(ctx: dict[Any, Any]) -> None:
        context = ctx.get(_KEY)
        # A function wrapped here or by @tracked has recorded its own end, with
        # the exact error text; for any other, arq's record (written by now) tells.
        if isinstance(context, JobContext) and not context.ended:
            await context.settle(wait=0, missing=_NO_RESULT)
        if (hook := user["after_job_end"]) is not None:
            await hook(ctx)

    return {
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "on_job_start": on_job_start,
        "after_job_end": after_job_end,
    }


def _tracking(declared: Any, strategy: StrategySpec | None, options: JobOptions) -> Any:
    """A ``functions`` or ``cron_jobs`` entry whose coroutine records its own end.

    Entries already tracked (``@tracked``) and import strings are left as they are.
    """
    if isinstance(declared, str):
        # Importing it here could import the settings' own module again; the hooks
        # still track it, from arq's records.
        return declared
    entry: Function | CronJob = declared if isinstance(declared, CronJob) else func(declared)
    if hasattr(entry.coroutine, "__immortus_strategy__"):
        return declared
    name = entry.name
    coroutine = _wrap(
        entry.coroutine, name, lambda: config.strategy_for(name, override=strategy), options
    )
    return dataclasses.replace(entry, coroutine=coroutine)


@overload
def track_worker(settings: S, /) -> S: ...


@overload
def track_worker(
    *,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
    write_timeout: float = 1.0,
    shutdown_grace: float = 5.0,
    report_result: bool = False,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> Callable[[S], S]: ...


def track_worker(
    settings: S | None = None,
    /,
    *,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
    write_timeout: float = 1.0,
    shutdown_grace: float = 5.0,
    report_result: bool = False,
    max_result_bytes: int = MAX_RESULT_BYTES,
) -> S | Callable[[S], S]:
    """Track every job of an arq worker, decorated or not.

    Wraps each entry of ``functions`` and ``cron_jobs`` (but ``@tracked`` ones,
    which track themselves, and import strings) so that it records its own end:
    ``finished``, ``failed`` with the error text, ``retrying``, and after a
    cancellation what arq records. That holds for cron jobs too, whose results
    arq does not keep (``keep_result=0``). Entries become arq ``Function`` or
    ``CronJob`` objects under the names arq gave them.

    Sets the worker's hooks, each calling the hook already there after its own
    work: ``on_job_start`` (records ``started``, starts the heartbeat, puts a
    :class:`~immortus_async.JobContext` at ``ctx["immortus"]``), ``after_job_end`` (for a job of a
    function it did not wrap, records the outcome from arq's result record),
    ``on_startup`` and ``on_shutdown`` (the worker's background tracking work: on
    ``Worker.close()``, pending writes are awaited for up to ``shutdown_grace``
    seconds, then cancelled, each lost one logged, and awaited; nothing of ours
    outlives ``close()``). arq's records are read with the settings'
    ``job_deserializer`` and ``queue_name``, as the worker reads them.

    Use it on a ``WorkerSettings`` class, which it changes and returns, or on a
    dict of ``Worker`` arguments, of which it returns a copy::

        @track_worker
        class WorkerSettings:
            functions = [resize_image]
            on_job_start = my_own_hook      # still runs

        worker = Worker(**track_worker({"functions": [resize_image]}), redis_pool=pool)

    A ``@tracked`` function under these hooks is tracked once, with its own error
    text. A job of a function given to the worker some other way is tracked from
    arq's result record, so keep results (``keep_result`` > 0, arq's default is
    an hour): without one it reads ``failed`` with an error saying its outcome is
    unknown.

    Args:
        settings: the ``WorkerSettings`` class or dict.
        strategy: the strategy for jobs that have no inline one; default
            :func:`~immortus_async.configure`'s, else ``"redis_pub_sub"``.
        heartbeat_interval: as for :func:`tracked`.
        stalled_after: as for :func:`tracked`.
        retry_for: as for :func:`tracked`.
        write_timeout: as for :func:`tracked`.
        shutdown_grace: seconds ``Worker.close()`` waits for pending tracking
            writes before it cancels them.
        report_result: as for :func:`tracked`, for the functions wrapped here (a
            ``@tracked`` one keeps its own choice; a function not wrapped, whose
            end is read from arq's records, reports none).
        max_result_bytes: as for :func:`tracked`.

    Raises:
        TypeError: ``settings`` is neither a class nor a dict.
        ValueError: bad timings.
    """
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

    def install(target: S) -> S:
        if not isinstance(target, dict | type):
            raise TypeError(
                "track_worker takes a WorkerSettings class or a dict of Worker arguments, "
                f"got {type(target).__name__}"
            )
        # arq reads a settings class's own __dict__: inherited hooks do not run.
        own = target if isinstance(target, dict) else vars(target)
        changes: dict[str, Any] = _hooks(own, strategy, options, shutdown_grace)
        for key in ("functions", "cron_jobs"):
            if own.get(key):
                changes[key] = [_tracking(entry, strategy, options) for entry in own[key]]
        if isinstance(target, dict):
            return cast(S, {**target, **changes})
        for key, value in changes.items():
            setattr(target, key, value)
        return target

    return install(settings) if settings is not None else install
