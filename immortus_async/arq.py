"""The job side of arq: track jobs from inside the worker.

``@tracked`` wraps one job function; :func:`track_worker` tracks every job of a
worker through its hooks. Either way the job finds a :class:`JobContext` at
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

**When Redis is unreachable.** Tracking never fails a job and never changes its
result. A write that fails because Redis cannot be reached is logged once
(warning) and retried in the background with backoff (0.05 s doubling to 1 s) for
up to ``retry_for`` seconds (default 30); updates made meanwhile are merged into
it (latest progress and status, meta key by key), so the final state lands once
Redis is back. Any other tracking error is logged and dropped. A worker process
that exits while a write is pending loses it; readers that share arq's Redis
still get the outcome from arq's result record.

**Cancellation.** arq cancels a job for ``job.abort()``, for its timeout, and when
a worker shuts down, and the three look the same from inside. So after a
cancellation the outcome is taken from what arq records next: ``aborted``,
``failed`` (``"TimeoutError: job timed out"``) or ``retrying``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

from arq.worker import Retry, RetryJob
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
_BACKOFF = (0.05, 1.0)
_SETTLE_POLL = 0.02
_NO_RESULT = (
    "arq kept no result of the job (keep_result=0), so its outcome after a "
    "cancellation or without @tracked is unknown"
)

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])
S = TypeVar("S", bound=dict[str, Any] | type)

# Tasks that outlive the job that started them (a write retried while Redis is
# away, reading arq's outcome after a cancellation): held here so they are not
# collected while they run.
_background: set[asyncio.Task[None]] = set()
# The strategies built on a worker's Redis, one per class as a Tracker builds them,
# live on that client: a dict keyed by the client would keep it alive for ever, as
# each strategy refers to its client.
_BUILT = "_immortus_strategies"


def _spawn(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


@dataclass(frozen=True, slots=True)
class _Options:
    heartbeat_interval: float = 5.0
    stalled_after: float = 15.0
    retry_for: float = 30.0


def _options(heartbeat_interval: float, stalled_after: float | None, retry_for: float) -> _Options:
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
    return _Options(heartbeat_interval, stalled, retry_for)


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

    Writes are made in the order the job makes them.
    """

    def __init__(self, job_id: str, attempt: int = 1, *, function: str | None = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.function = function
        self._strategy: object | None = None
        self._options = _Options()
        self._arq: Redis | None = None
        self._lock = asyncio.Lock()
        self._backlog: JobUpdate | None = None
        self._redelivery: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._ended = False

    async def update(self, progress: float | None = None, **meta: Any) -> None:
        """Report how far the job is and merge ``meta`` into its state; waiters get it at once.

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
        context._options, context._arq = options, redis
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
            context._heartbeat = _spawn(context._beat(beat))
        return context

    async def _beat_once(self, beat: Callable[..., Awaitable[Any]]) -> None:
        try:
            await beat(self.job_id, self.attempt, stalled_after=self._options.stalled_after)
        except Exception as exc:
            # A missed beat is what readers should see; the next one tries again.
            logger.debug("heartbeat of job %s failed: %s", self.job_id, exc)

    async def _beat(self, beat: Callable[..., Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(self._options.heartbeat_interval)
            await self._beat_once(beat)

    def _stop(self) -> None:
        """The attempt is over: no more beats, and hooks leave its end to whoever ended it."""
        self._ended = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _end(self, status: JobStatus, error: str | None = None) -> None:
        self._stop()
        await self._send(
            JobUpdate(job_id=self.job_id, status=status, attempt=self.attempt, error=error)
        )

    def _end_from_arq(self) -> None:
        """Record, once arq has written it, what a cancellation of the job meant."""
        self._stop()
        if self._arq is not None and self._strategy is not None:
            _spawn(self._settle(wait=self._options.retry_for))

    async def _settle(self, *, wait: float) -> None:
        """Record the outcome arq holds for this attempt, waiting up to ``wait`` s for it."""
        assert self._arq is not None
        reader = ArqStrategy(self._arq)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            state = await reader.status(self.job_id)
            while state.status is JobStatus.STARTED and loop.time() < deadline:
                await asyncio.sleep(_SETTLE_POLL)
                state = await reader.status(self.job_id)
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
                await self._deliver(update)
            except UNREACHABLE as exc:
                logger.warning(
                    "tracking job %s: Redis is unreachable (%s); the job goes on, its state "
                    "is written once Redis is back (retrying for up to %ss)",
                    self.job_id,
                    exc,
                    self._options.retry_for,
                )
                self._backlog = update
                self._redelivery = _spawn(self._redeliver())

    async def _redeliver(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.retry_for
        delay, longest = _BACKOFF
        try:
            while self._backlog is not None:
                await asyncio.sleep(delay)
                update, self._backlog = self._backlog, None
                try:
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
                            exc,
                        )
                        self._backlog = None
                        return
                    delay = min(delay * 2, longest)
            logger.info("tracking job %s: Redis is back, its state is written", self.job_id)
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


@overload
def tracked(function: F, /) -> F: ...


@overload
def tracked(
    *,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
) -> Callable[[F], F]: ...


def tracked(
    function: F | None = None,
    /,
    *,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
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

    Raises:
        TypeError: ``function`` is not an ``async def`` function.
        ValueError: bad timings; StrategyNotFound: ``strategy`` names nothing.
    """
    options = _options(heartbeat_interval, stalled_after, retry_for)
    if strategy is not None:
        resolve_strategy(strategy)

    def decorate(job_function: F) -> F:
        if not inspect.iscoroutinefunction(job_function):
            raise TypeError(
                f"@tracked wraps an async job function (async def); {job_function!r} is not one"
            )
        name = job_function.__qualname__

        @functools.wraps(job_function)
        async def job(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
            context = await _enter(ctx, config.strategy_for(job), options, name)
            try:
                result = await job_function(ctx, *args, **kwargs)
            except (Retry, RetryJob) as exc:
                await context._end(JobStatus.RETRYING, _retry_reason(exc))
                raise
            except asyncio.CancelledError:
                context._end_from_arq()
                raise
            except Exception as exc:
                await context._end(JobStatus.FAILED, describe_error(exc))
                raise
            finally:
                context._stop()
            await context._end(JobStatus.FINISHED)
            return result

        job.__immortus_strategy__ = strategy  # type: ignore[attr-defined]
        if strategy is not None:
            config.set_inline_strategy(name, strategy)
        return cast(F, job)

    return decorate(function) if function is not None else decorate


Hook = Callable[[dict[Any, Any]], Awaitable[Any]]


def _hooks(
    user_start: Hook | None, user_end: Hook | None, strategy: StrategySpec | None, options: _Options
) -> tuple[Hook, Hook]:
    async def on_job_start(ctx: dict[Any, Any]) -> None:
        job_id, redis = ctx.get("job_id"), ctx.get("redis")
        if isinstance(job_id, str) and isinstance(redis, Redis):
            try:
                function = (await ArqStrategy(redis).status(job_id)).function
            except Exception as exc:
                logger.warning("cannot read arq's record of job %s: %s", job_id, exc)
                function = None
            spec = config.strategy_for(function, override=strategy)
            ctx[_KEY] = await JobContext._begin(ctx, redis, spec, options, function)
        if user_start is not None:
            await user_start(ctx)

    async def after_job_end(ctx: dict[Any, Any]) -> None:
        context = ctx.get(_KEY)
        # A @tracked function has recorded its own end, with the exact error text.
        if isinstance(context, JobContext) and not context._ended:
            context._stop()
            await context._settle(wait=0)
        if user_end is not None:
            await user_end(ctx)

    return on_job_start, after_job_end


@overload
def track_worker(settings: S, /) -> S: ...


@overload
def track_worker(
    *,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
) -> Callable[[S], S]: ...


def track_worker(
    settings: S | None = None,
    /,
    *,
    strategy: StrategySpec | None = None,
    heartbeat_interval: float = 5.0,
    stalled_after: float | None = None,
    retry_for: float = 30.0,
) -> S | Callable[[S], S]:
    """Track every job of an arq worker, decorated or not, through its hooks.

    Sets ``on_job_start`` (records ``started``, starts the heartbeat, puts a
    :class:`JobContext` at ``ctx["immortus"]``) and ``after_job_end`` (records the
    outcome from arq's result record), each calling the hook already there after
    its own work. Use it on a ``WorkerSettings`` class, which it changes and
    returns, or on a dict of ``Worker`` arguments, of which it returns a copy::

        @track_worker
        class WorkerSettings:
            functions = [resize_image]
            on_job_start = my_own_hook      # still runs

        worker = Worker(**track_worker({"functions": [resize_image]}), redis_pool=pool)

    A ``@tracked`` function under these hooks is tracked once, with its own error
    text. The outcome comes from arq's result record, so keep results
    (``keep_result`` > 0, arq's default is an hour): without one a job that ended
    reads ``failed`` with an error saying its outcome is unknown.

    Args:
        settings: the ``WorkerSettings`` class or dict.
        strategy: the strategy for jobs that have no inline one; default
            :func:`~immortus_async.configure`'s, else ``"redis_pub_sub"``.
        heartbeat_interval, stalled_after, retry_for: as for :func:`tracked`.

    Raises:
        TypeError: ``settings`` is neither a class nor a dict.
    """
    options = _options(heartbeat_interval, stalled_after, retry_for)
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
        start, end = _hooks(own.get("on_job_start"), own.get("after_job_end"), strategy, options)
        if isinstance(target, dict):
            return cast(S, {**target, "on_job_start": start, "after_job_end": end})
        target.on_job_start = start  # type: ignore[attr-defined]
        target.after_job_end = end  # type: ignore[attr-defined]
        return target

    return install(settings) if settings is not None else install
