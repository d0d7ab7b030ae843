"""The job side of arq: track jobs from inside the worker.

``@tracked`` wraps one job function; :func:`track_worker` tracks every job of a
worker, wrapping the functions and cron jobs it is given the same way and setting
the worker's hooks. Either way the job finds a :class:`JobContext` at
``ctx["immortus"]`` to report progress::

    @tracked
    async def process_csv(ctx, path):
        for i, row in enumerate(rows):
            ...
            await ctx["immortus"].update(progress=(i + 1) / n, rows=i + 1)

**Which strategy, which Redis.** The job's inline strategy
(``@tracked(strategy=...)``), else the one given to :func:`track_worker`, else
:func:`~immortus_async.configure`'s, else ``"redis_pub_sub"``. A name or a class is
built on arq's own Redis (``ctx["redis"]``), once per worker process. To track in
another Redis, give an instance: ``@tracked(strategy=RedisPubSubStrategy(url))``,
``track_worker(settings, strategy=RedisPubSubStrategy(url))`` or
``configure(tracking_strategy=RedisPubSubStrategy(url))`` in the worker's module;
waiters then need a :class:`~immortus_async.Tracker` on that Redis.

**Heartbeats.** While a job runs, its worker refreshes the job's heartbeat every
``heartbeat_interval`` seconds (default 5). A reader reports a ``started`` job
``stalled=True`` once its last beat is older than ``stalled_after`` (default three
intervals: 15 s), until arq runs it again or gives up; a watcher sees the flag
when that deadline passes, without polling.

**When Redis stops answering.** Tracking never fails a job, never changes its
result, and never holds it longer than ``write_timeout`` seconds (default 1) per
write: every tracking write (``started``, progress, the end, heartbeats) and every
read of arq's records made for tracking has that deadline. A write that misses it,
or fails because Redis cannot be reached (refused, reset, SIGSTOPped server), is
logged once (warning) and retried in the background with backoff (0.05 s doubling
to 1 s, each try with the same deadline) for up to ``retry_for`` seconds (default
30); the job goes on at once, and updates made meanwhile are merged into it
(latest progress and status, meta key by key), so the final state lands once Redis
is back. Any other tracking error is logged and dropped. A command cut short by
the deadline costs its connection: redis-py (5.0.1 and later) closes a connection
whose command was cancelled, and the next command opens a new one, so no reply
is ever read by the wrong command. A write cut short may still be applied once a
frozen Redis wakes up; its redelivered copy then changes nothing (a job only moves
forward and a terminal state is never applied twice) or repeats a progress.

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

**Cancellation.** arq cancels a job for ``job.abort()``, for its timeout, and when
a worker shuts down, and the three look the same from inside. So after a
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
import json
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

from arq.constants import default_queue_name
from arq.cron import CronJob
from arq.worker import Function, Retry, RetryJob, func
from redis.asyncio import Redis

from . import config
from ._describe import describe_error
from ._redis import UNREACHABLE
from .registry import StrategySpec, resolve_strategy
from .state import JobUpdate
from .status import JobStatus
from .strategies.arq import ArqStrategy
from .strategies.base import StateWriter
from .strategies.redis_pub_sub import RedisPubSubStrategy

__all__ = ["MAX_META_BYTES", "JobContext", "track_worker", "tracked"]

logger = logging.getLogger("immortus_async.arq")

MAX_META_BYTES = 64 * 1024
"""The largest ``meta`` one :meth:`JobContext.update` takes, encoded as JSON."""

_KEY = "immortus"
# Where track_worker's on_startup leaves what belongs to the running worker: arq
# copies the worker's ctx into each job's, so every job of the worker finds it.
_WORKER = "immortus_worker"
_BACKOFF = (0.05, 1.0)
_SETTLE_POLL = 0.02
_NO_RESULT = (
    "arq kept no result of the job (keep_result=0), so its outcome after a "
    "cancellation or without @tracked is unknown"
)

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])
S = TypeVar("S", bound=dict[str, Any] | type)
JobFunction = Callable[..., Coroutine[Any, Any, Any]]

# The strategies built on a worker's Redis, one per class as a Tracker builds them,
# live on that client: a dict keyed by the client would keep it alive for ever, as
# each strategy refers to its client.
_BUILT = "_immortus_strategies"


class _Leftovers:
    """The tasks that jobs leave behind, owned by one worker and awaited when it stops.

    A write (a redelivery, reading arq's outcome after a cancellation) is waited
    for within a grace period; a heartbeat is cancelled at once. Every task is
    held here until it ends, so none is collected while it runs.
    """

    def __init__(self) -> None:
        # Each running task, and whether shutdown waits for it (True) or cancels it.
        self._tasks: dict[asyncio.Task[None], bool] = {}

    def spawn(
        self, coroutine: Coroutine[Any, Any, None], *, name: str, wait: bool = True
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks[task] = wait
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def aclose(self, grace: float) -> None:
        """Wait up to ``grace`` s for the writes; cancel what is left, and await it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for task, wait in list(self._tasks.items()):
            if not wait:
                task.cancel()
        # A write that ends may hand its update to another (a settle whose write
        # goes to a redelivery): look again until none is left or the grace is over.
        while writes := [task for task, wait in self._tasks.items() if wait]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.wait(writes, timeout=remaining)
        while self._tasks:
            left = list(self._tasks)
            for task in left:
                task.cancel()
            await asyncio.wait(left)


# The tasks of @tracked jobs in a worker without track_worker: no worker owns
# them, so nothing awaits them at shutdown (the module docstring says so).
_UNOWNED = _Leftovers()


@dataclass(frozen=True, slots=True)
class _Worker:
    """What track_worker keeps for one running worker."""

    leftovers: _Leftovers
    # arq's records, read the way this worker reads them (its queue, its deserializer).
    reader: ArqStrategy


@dataclass(frozen=True, slots=True)
class _Options:
    heartbeat_interval: float = 5.0
    stalled_after: float = 15.0
    retry_for: float = 30.0
    write_timeout: float = 1.0


def _options(
    heartbeat_interval: float, stalled_after: float | None, retry_for: float, write_timeout: float
) -> _Options:
    if heartbeat_interval <= 0:
        raise ValueError(f"heartbeat_interval must be positive seconds, got {heartbeat_interval!r}")
    stalled = 3 * heartbeat_interval if stalled_after is None else stalled_after
    if stalled <= heartbeat_interval:
        raise ValueError(
            f"stalled_after ({stalled!r}) must be longer than heartbeat_interval "
            f"({heartbeat_interval!r}), or every job would read stalled between beats"
        )
    if retry_for < 0:
        raise ValueError(f"retry_for must not be negative, got {retry_for!r}")
    if not (write_timeout > 0 and math.isfinite(write_timeout)):
        raise ValueError(
            f"write_timeout must be a positive, finite number of seconds, got {write_timeout!r}: "
            "it is how long a tracking write may hold the job"
        )
    return _Options(heartbeat_interval, stalled, retry_for, write_timeout)


def _why(exc: BaseException, options: _Options) -> str:
    """What a write or read that raised one of UNREACHABLE ran into, for the log."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"Redis did not answer within {options.write_timeout:g}s"
    return f"Redis is unreachable ({exc})"


def _strategy_on(redis: Redis, spec: StrategySpec) -> object:
    found = resolve_strategy(spec)
    if not isinstance(found, type):
        return found
    built: dict[type, object] = redis.__dict__.setdefault(_BUILT, {})
    if found not in built:
        takes_redis = "redis" in inspect.signature(found).parameters
        built[found] = found(redis=redis) if takes_redis else found()
    return built[found]


def _checked_meta(meta: dict[str, Any]) -> dict[str, Any]:
    try:
        encoded = json.dumps(meta, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from None
    size = len(encoded.encode())
    if size > MAX_META_BYTES:
        raise ValueError(
            f"meta is {size} bytes as JSON, over the {MAX_META_BYTES}-byte limit: "
            "keep large data elsewhere and put a reference to it in meta"
        )
    # A copy in JSON types: what the caller mutates later is not what was reported.
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def _merge(older: JobUpdate | None, newer: JobUpdate) -> JobUpdate:
    """One update with the effect of ``older`` then ``newer`` (both of one attempt)."""
    if older is None:
        return newer
    return JobUpdate(
        job_id=newer.job_id,
        status=newer.status,
        attempt=max(older.attempt, newer.attempt),
        progress=newer.progress if newer.progress is not None else older.progress,
        meta={**(older.meta or {}), **(newer.meta or {})} or None,
        error=newer.error or older.error,
        function=newer.function or older.function,
        at=older.at if older.status is newer.status else newer.at,
    )


def _callback(update: JobUpdate) -> tuple[str, tuple[Any, ...]]:
    """The Immortus-style callback that reports ``update`` to a strategy without ``apply``."""
    status = update.status
    if status is JobStatus.STARTED and (update.progress is not None or update.meta):
        return "job_progress", (update.progress, update.meta or {})
    if status is JobStatus.RETRYING:
        return "job_retrying", (update.error,)
    if status in (JobStatus.FAILED, JobStatus.ABORTED):
        return "job_failed", (update.error,)
    names = {
        JobStatus.QUEUED: "job_enqueued",
        JobStatus.STARTED: "job_started",
        JobStatus.FINISHED: "job_finished",
    }
    return names[status], ()


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, Retry):
        defer = exc.defer_score
        return f"Retry: run again in {defer / 1000:.2f}s" if defer else "Retry: run again"
    return describe_error(exc)


class JobContext:
    """``ctx["immortus"]`` inside a tracked job: report progress and meta from it.

    ``@tracked`` and :func:`track_worker` create one per attempt as the job starts.
    Created directly, ``JobContext(job_id)`` records nothing: it lets a test call a
    job function without a worker.

    Args:
        job_id: arq's job id.
        attempt: arq's ``job_try``, 1 for the first run.
        function: the job function's name.

    Writes are made in the order the job makes them. None holds the job longer
    than the write deadline (``write_timeout``): past it, the update is written in
    the background once Redis answers again (see the module's notes).
    """

    def __init__(self, job_id: str, attempt: int = 1, *, function: str | None = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.function = function
        self._strategy: object | None = None
        self._options = _Options()
        self._leftovers = _UNOWNED
        self._reader: ArqStrategy | None = None
        self._lock = asyncio.Lock()
        self._backlog: JobUpdate | None = None
        self._redelivery: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._ended = False

    async def update(self, progress: float | None = None, **meta: Any) -> None:
        """Report how far the job is and merge ``meta`` into its state; waiters get it at once.

        Returns once the update is written, or after the write deadline
        (``write_timeout``, default 1 s) with the update handed to the background
        redelivery when Redis does not answer; at once while a redelivery is
        pending (the update joins it).

        Args:
            progress: a number in [0, 1]; None leaves the progress as it was.
            **meta: JSON-serialisable values, merged key by key into the job's meta;
                at most :data:`MAX_META_BYTES` (64 KiB) encoded as JSON.

        Raises:
            ValueError: ``progress`` is not a number in [0, 1], or ``meta`` is not
                JSON-serialisable or is too large. Tracking failures never raise
                (see the module's notes on an unreachable Redis).
        """
        update = JobUpdate(
            job_id=self.job_id,
            status=JobStatus.STARTED,
            attempt=self.attempt,
            progress=progress,
            meta=_checked_meta(meta) if meta else None,
        )
        if update.progress is not None or update.meta:
            await self._send(update)

    # The worker's side

    @classmethod
    async def _begin(
        cls,
        ctx: dict[Any, Any],
        redis: Redis,
        spec: StrategySpec,
        options: _Options,
        function: str | None,
    ) -> JobContext:
        """Record ``started`` for the job arq is running in ``ctx``, and start beating."""
        context = cls(ctx["job_id"], int(ctx.get("job_try") or 1), function=function)
        context._options = options
        worker = ctx.get(_WORKER)
        if isinstance(worker, _Worker):
            context._leftovers, context._reader = worker.leftovers, worker.reader
        else:
            context._reader = ArqStrategy(redis)
        try:
            context._strategy = _strategy_on(redis, spec)
        except Exception:
            logger.exception(
                "cannot build tracking strategy %r; job %s runs untracked", spec, context.job_id
            )
            return context
        await context._send(
            JobUpdate(
                job_id=context.job_id,
                status=JobStatus.STARTED,
                attempt=context.attempt,
                function=function,
            )
        )
        beat = getattr(context._strategy, "heartbeat", None)
        if beat is not None:
            if not isinstance(context._strategy, RedisPubSubStrategy):
                # The first beat before the job's body runs: a worker that dies at
                # once must read stalled too (ours rides on `started`, in _deliver).
                await context._beat_once(beat)
            context._heartbeat = context._leftovers.spawn(
                context._beat(beat), name=f"immortus: heartbeat of job {context.job_id}", wait=False
            )
        return context

    async def _beat_once(self, beat: Callable[..., Awaitable[Any]]) -> None:
        try:
            async with asyncio.timeout(self._options.write_timeout):
                await beat(self.job_id, self.attempt, stalled_after=self._options.stalled_after)
        except Exception as exc:
            # A missed beat is what readers should see; the next one tries again.
            logger.debug("heartbeat of job %s failed: %r", self.job_id, exc)

    async def _beat(self, beat: Callable[..., Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(self._options.heartbeat_interval)
            await self._beat_once(beat)

    async def _stop(self) -> None:
        """The attempt is over: no more beats, and hooks leave its end to whoever ended it.

        The heartbeat is cancelled and awaited, so no beat of this attempt comes later.
        """
        self._ended = True
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.cancel()
            # wait() and not `await beat`: a cancelled task raises CancelledError
            # in whoever awaits it, which would read as this job's own cancellation.
            await asyncio.wait([beat])

    async def _end(self, status: JobStatus, error: str | None = None) -> None:
        await self._stop()
        await self._send(
            JobUpdate(job_id=self.job_id, status=status, attempt=self.attempt, error=error)
        )

    async def _end_from_arq(self, *, wait: float | None = None) -> None:
        """Record, once arq has written it, what the end of the job meant.

        In the background (owned by the worker), polling arq's records for up to
        ``wait`` seconds (default ``retry_for``) while they still say ``started``.
        """
        if self._reader is not None and self._strategy is not None:
            self._leftovers.spawn(
                self._settle(wait=self._options.retry_for if wait is None else wait),
                name=f"immortus: arq's outcome of job {self.job_id}",
            )
        await self._stop()

    async def _settle(self, *, wait: float) -> None:
        """Record the outcome arq holds for this attempt, waiting up to ``wait`` s for it.

        A read Redis does not answer (within the write deadline) is tried again
        with backoff for up to ``retry_for`` s.
        """
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        began = loop.time()
        delay = _SETTLE_POLL
        try:
            while True:
                try:
                    async with asyncio.timeout(self._options.write_timeout):
                        state = await self._reader.status(self.job_id)
                except UNREACHABLE as exc:
                    if loop.time() - began >= max(wait, self._options.retry_for):
                        logger.warning(
                            "cannot read arq's outcome of job %s: %s",
                            self.job_id,
                            _why(exc, self._options),
                        )
                        return
                    delay = min(delay * 2, _BACKOFF[1])
                else:
                    if state.status is not JobStatus.STARTED or loop.time() - began >= wait:
                        break
                    delay = _SETTLE_POLL
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            logger.error(
                "tracking job %s: the worker stopped before arq's outcome of it was recorded",
                self.job_id,
            )
            raise
        except Exception as exc:
            logger.warning("cannot read arq's outcome of job %s: %s", self.job_id, exc)
            return
        if state.status is JobStatus.UNKNOWN:
            update = JobUpdate(
                job_id=self.job_id, status=JobStatus.FAILED, attempt=self.attempt, error=_NO_RESULT
            )
        elif state.completed or state.status is JobStatus.RETRYING:
            update = JobUpdate.from_state(state)
        else:
            return
        await self._send(update)

    # Writing, whatever Redis does

    async def _send(self, update: JobUpdate) -> None:
        if self._strategy is None:
            return
        if self._redelivery is not None:
            self._backlog = _merge(self._backlog, update)
            return
        async with self._lock:
            if self._redelivery is not None:
                self._backlog = _merge(self._backlog, update)
                return
            try:
                async with asyncio.timeout(self._options.write_timeout):
                    await self._deliver(update)
            except UNREACHABLE as exc:
                logger.warning(
                    "tracking job %s: %s; the job goes on, its state is written once Redis "
                    "is back (retrying for up to %ss)",
                    self.job_id,
                    _why(exc, self._options),
                    self._options.retry_for,
                )
                self._backlog = update
                self._redelivery = self._leftovers.spawn(
                    self._redeliver(), name=f"immortus: redelivery of job {self.job_id}"
                )

    async def _redeliver(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.retry_for
        delay, longest = _BACKOFF
        try:
            while self._backlog is not None:
                await asyncio.sleep(delay)
                update, self._backlog = self._backlog, None
                try:
                    async with asyncio.timeout(self._options.write_timeout):
                        await self._deliver(update)
                except UNREACHABLE as exc:
                    if self._backlog is not None:
                        update = _merge(update, self._backlog)
                    self._backlog = update
                    if loop.time() >= deadline:
                        logger.error(
                            "tracking job %s: gave up writing its state after %ss: %s",
                            self.job_id,
                            self._options.retry_for,
                            _why(exc, self._options),
                        )
                        self._backlog = None
                        return
                    delay = min(delay * 2, longest)
            logger.info("tracking job %s: Redis is back, its state is written", self.job_id)
        except asyncio.CancelledError:
            logger.error(
                "tracking job %s: the worker stopped before its state could be written; "
                "that state is lost",
                self.job_id,
            )
            raise
        finally:
            self._redelivery = None

    async def _deliver(self, update: JobUpdate) -> None:
        strategy = self._strategy
        try:
            if isinstance(strategy, RedisPubSubStrategy):
                # A started (or progress) write is a heartbeat too: one round trip.
                stalled_after = self._options.stalled_after
                beats = update.status is JobStatus.STARTED and update.attempt == self.attempt
                await strategy.apply(update, stalled_after=stalled_after if beats else None)
                return
            if isinstance(strategy, StateWriter):
                await strategy.apply(update)
                return
            name, args = _callback(update)
            method = getattr(strategy, name, None)
            if method is not None:
                await method(update.job_id, *args)
        except UNREACHABLE:
            raise
        except Exception:
            logger.exception("tracking job %s failed; the job goes on without it", self.job_id)


async def _enter(
    ctx: dict[Any, Any], spec: StrategySpec, options: _Options, function: str
) -> JobContext:
    """The job's context: the one worker hooks made, else a new one, started."""
    job_id, redis = ctx.get("job_id"), ctx.get("redis")
    existing = ctx.get(_KEY)
    if isinstance(existing, JobContext) and existing.job_id == job_id:
        return existing
    if isinstance(job_id, str) and isinstance(redis, Redis):
        context = await JobContext._begin(ctx, redis, spec, options, function)
    else:
        # Called outside a worker (a test calling the function itself): record nothing.
        context = JobContext(str(job_id or ""), function=function)
    ctx[_KEY] = context
    return context


def _wrap(
    job_function: JobFunction, name: str, spec: Callable[[], StrategySpec], options: _Options
) -> JobFunction:
    """``job_function`` recording its own start and end: what ``@tracked`` makes."""

    @functools.wraps(job_function)
    async def job(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        context = await _enter(ctx, spec(), options, name)
        try:
            result = await job_function(ctx, *args, **kwargs)
        except (Retry, RetryJob) as exc:
            await context._end(JobStatus.RETRYING, _retry_reason(exc))
            raise
        except asyncio.CancelledError:
            await context._end_from_arq()
            raise
        except Exception as exc:
            await context._end(JobStatus.FAILED, describe_error(exc))
            raise
        finally:
            await context._stop()
        await context._end(JobStatus.FINISHED)
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

    Inside the job, ``ctx["immortus"]`` is its :class:`JobContext`.

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

    Raises:
        TypeError: ``function`` is not an ``async def`` function.
        ValueError: bad timings; StrategyNotFound: ``strategy`` names nothing.
    """
    options = _options(heartbeat_interval, stalled_after, retry_for, write_timeout)
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
    own: Mapping[str, Any], strategy: StrategySpec | None, options: _Options, grace: float
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
            ctx[_WORKER] = _Worker(_Leftovers(), reader)
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
                logger.warning("cannot read arq's record of job %s: %s", job_id, _why(exc, options))
                function = None
            except Exception as exc:
                logger.warning("cannot read arq's record of job %s: %s", job_id, exc)
                function = None
            spec = config.strategy_for(function, override=strategy)
            ctx[_KEY] = await JobContext._begin(ctx, redis, spec, options, function)
        if (hook := user["on_job_start"]) is not None:
            await hook(ctx)

    async def after_job_end(ctx: dict[Any, Any]) -> None:
        context = ctx.get(_KEY)
        # A function wrapped here or by @tracked has recorded its own end, with
        # the exact error text; for any other, arq's record (written by now) tells.
        if isinstance(context, JobContext) and not context._ended:
            await context._end_from_arq(wait=0)
        if (hook := user["after_job_end"]) is not None:
            await hook(ctx)

    return {
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "on_job_start": on_job_start,
        "after_job_end": after_job_end,
    }


def _tracking(declared: Any, strategy: StrategySpec | None, options: _Options) -> Any:
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
    :class:`JobContext` at ``ctx["immortus"]``), ``after_job_end`` (for a job of a
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
        heartbeat_interval, stalled_after, retry_for, write_timeout: as for
            :func:`tracked`.
        shutdown_grace: seconds ``Worker.close()`` waits for pending tracking
            writes before it cancels them.

    Raises:
        TypeError: ``settings`` is neither a class nor a dict.
        ValueError: bad timings.
    """
    options = _options(heartbeat_interval, stalled_after, retry_for, write_timeout)
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
