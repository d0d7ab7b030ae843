"""The job side, whatever the queue: what a job reports while it runs, and how.

A queue adapter integrates through its queue's own extension point (arq: a
decorator and worker hooks; taskiq: a middleware; streaQ: its task middleware) and
calls this small API; everything that is not about one queue lives here once:
the :class:`JobContext` progress API, write deadlines, background redelivery,
heartbeats, and the owner of the tasks a job leaves behind.

**The API an adapter calls**::

    from immortus_async.jobside import JobOptions, Leftovers, begin_job

    options = JobOptions.checked(heartbeat_interval=5.0)  # validated once, at import
    # (report_result=True, max_result_bytes=...: the return value in `finished`)
    leftovers = Leftovers()        # one per worker; `await leftovers.aclose(grace)` on stop

    # as a job starts (attempt 1 for its first run):
    context = await begin_job(job_id, attempt, redis=redis, spec=spec, function="name",
                          options=options, leftovers=leftovers, reader=records,
                          queue="taskiq")
    # ... the job runs; it calls `await context.update(progress, **meta)` ...
    # as it ends, one of:
    await context.finished(result)   # the result is reported with report_result
    await context.failed("ValueError: bad row")      # describe_error(exc)
    await context.retrying("Retry: run again")       # the queue will run it again
    await context.aborted("cancelled")
    await context.settle(wait=0)   # the queue's records tell: read them (in the background)
    # and on any way out (a `finally:`), so that no heartbeat outlives the attempt:
    await context.stop()

* :func:`begin_job` builds the strategy ``spec`` names on ``redis`` (the one builder,
  once per client; ``config.strategy_for(function)`` is the usual spec), records
  ``started`` and starts the heartbeat. It never raises for tracking: a strategy
  that cannot be built leaves the job untracked, logged. ``redis`` None (a job
  called outside a worker) gives a context that records nothing. On one Redis
  (``RedisPubSubStrategy``'s pipelined writes), ``started`` is on the connection
  when it returns, but its reply is not awaited: the job's next write waits for
  both, and one left unanswered is noticed at its own deadline all the same.
* ``reader`` is the queue's own records (a
  :class:`~immortus_async.strategies.base.StateReader`, the adapter's strategy),
  used by :meth:`JobContext.settle` after an end the job side cannot see (a
  cancellation, a job the adapter did not wrap): it polls the reader while it
  still says ``started``, for up to ``wait`` seconds (default ``retry_for``), and
  records what the queue made of the attempt (terminal or ``retrying``).
* ``leftovers`` owns the background work of the job (redeliveries, settles,
  heartbeats); without one, the job's work belongs to no worker and nothing awaits
  it at shutdown (``UNOWNED``).
* :attr:`JobContext.ended` is True once one of the ends (or :meth:`stop`) ran: a
  worker hook that runs after the job leaves its end alone.

**Heartbeats.** While a job runs, its worker refreshes the job's heartbeat every
``heartbeat_interval`` seconds (default 5). A reader reports a ``started`` job
``stalled=True`` once its last beat is older than ``stalled_after`` (default three
intervals: 15 s), until the queue runs it again or gives up; a watcher sees the flag
when that deadline passes, without polling. A strategy of the
:class:`~immortus_async.strategies.base.Heartbeats` protocol takes the first beat
with the ``started`` write; another with a ``heartbeat`` method beats before the
job's body runs.

**When Redis stops answering.** Tracking never fails a job, never changes its
result, and never holds it longer than ``write_timeout`` seconds (default 1) per
write: every tracking write (``started``, progress, the end, heartbeats) and every
read of the queue's records made for tracking has that deadline. A write that
misses it, or fails because Redis cannot be reached (refused, reset, SIGSTOPped
server), is logged once (warning) and retried in the background with backoff (0.05
s doubling to 1 s, each try with the same deadline) for up to ``retry_for`` seconds
(default 30); the job goes on at once, and updates made meanwhile are merged into
it (latest progress and status, meta key by key), so the final state lands once
Redis is back. Any other tracking error is logged and dropped. A command cut short
by the deadline costs its connection: redis-py (5.0.1 and later) closes a
connection whose command was cancelled, and the next command opens a new one, so
no reply is ever read by the wrong command. A write cut short may still be applied
once a frozen Redis wakes up; its redelivered copy then changes nothing (a job only
moves forward and a terminal state is never applied twice) or repeats a progress.

**Shutdown.** :meth:`Leftovers.aclose` waits up to its grace for the writes left
(redeliveries, settles), then cancels what is left, each lost state logged, and
awaits it; heartbeats are cancelled at once. Heartbeats are also cancelled and
awaited as each job ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from . import metrics, tracing
from ._builder import StrategyBuilder
from ._redis import UNREACHABLE, Client
from .registry import StrategySpec
from .state import JobUpdate
from .status import JobStatus
from .strategies.base import Heartbeats, StateReader, StateWriter
from .strategies.redis_pub_sub import RedisPubSubStrategy

__all__ = [
    "MAX_META_BYTES",
    "MAX_RESULT_BYTES",
    "UNOWNED",
    "JobContext",
    "JobOptions",
    "Leftovers",
    "begin_job",
]

logger = logging.getLogger("immortus_async.jobside")

MAX_META_BYTES = 64 * 1024
"""The largest ``meta`` one :meth:`JobContext.update` takes, encoded as JSON."""

MAX_RESULT_BYTES = 64 * 1024
"""The default largest result reported in a ``finished`` state, encoded as JSON
(``max_result_bytes`` of each queue's job side changes it)."""

_BACKOFF = (0.05, 1.0)
_SETTLE_POLL = 0.02

# The builders of a worker's Redis, one per client: a dict keyed by the client would
# keep it alive for ever, as each strategy refers to its client.
_BUILDER = "_immortus_builder"


class Leftovers:
    """The tasks that jobs leave behind, owned by one worker and awaited when it stops.

    A write (a redelivery, reading the queue's outcome after a cancellation) is
    waited for within a grace period; a heartbeat is cancelled at once. Every task
    is held here until it ends, so none is collected while it runs.
    """

    def __init__(self) -> None:
        # Each running task, and whether shutdown waits for it (True) or cancels it.
        self._tasks: dict[asyncio.Task[None], bool] = {}

    def spawn(
        self, coroutine: Coroutine[Any, Any, None], *, name: str, wait: bool = True
    ) -> asyncio.Task[None]:
        """Run ``coroutine`` as a task of this worker; ``wait``: shutdown waits for it."""
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


UNOWNED = Leftovers()
"""The owner of the work of jobs that belong to no worker: nothing awaits it."""


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The job side's timings, in seconds; make them with :meth:`checked`."""

    heartbeat_interval: float = 5.0
    """Between heartbeats while the job runs."""
    stalled_after: float = 15.0
    """Without a heartbeat, after which readers report the job stalled."""
    retry_for: float = 30.0
    """How long a write is retried while Redis is unreachable."""
    write_timeout: float = 1.0
    """How long a tracking write (or a read of the queue's records) may hold the job."""
    report_result: bool = False
    """Whether the job's return value goes in its ``finished`` state."""
    max_result_bytes: int = MAX_RESULT_BYTES
    """The largest result reported, encoded as JSON; a larger one is left out (logged)."""

    @classmethod
    def checked(
        cls,
        heartbeat_interval: float = 5.0,
        stalled_after: float | None = None,
        retry_for: float = 30.0,
        write_timeout: float = 1.0,
        *,
        report_result: bool = False,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> JobOptions:
        """Validated options; ``stalled_after`` defaults to three ``heartbeat_interval``.

        Raises:
            ValueError: a timing out of range, with what it must be.
        """
        if heartbeat_interval <= 0:
            raise ValueError(
                f"heartbeat_interval must be positive seconds, got {heartbeat_interval!r}"
            )
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
                "write_timeout must be a positive, finite number of seconds, got "
                f"{write_timeout!r}: it is how long a tracking write may hold the job"
            )
        if isinstance(max_result_bytes, bool) or not isinstance(max_result_bytes, int):
            raise ValueError(f"max_result_bytes must be an int, got {max_result_bytes!r}")
        if max_result_bytes <= 0:
            raise ValueError(f"max_result_bytes must be positive, got {max_result_bytes!r}")
        return cls(
            heartbeat_interval, stalled, retry_for, write_timeout, report_result, max_result_bytes
        )

    def why(self, exc: BaseException) -> str:
        """What a write or read that raised one of UNREACHABLE ran into, for the log."""
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"Redis did not answer within {self.write_timeout:g}s"
        return f"Redis is unreachable ({exc})"


def _strategy_on(redis: Client, spec: StrategySpec) -> object:
    builder = redis.__dict__.get(_BUILDER)
    if not isinstance(builder, StrategyBuilder):
        # The job side only writes: its strategies need no reader of the queue.
        builder = redis.__dict__[_BUILDER] = StrategyBuilder(redis)
    return builder.get(spec)


# What a strategy class can do, by class: a runtime Protocol check costs some 10 µs,
# and a trivial job makes three (see benchmarks/README.md, Overhead).
_KINDS: dict[type, tuple[bool, bool, bool]] = {}


def _kind(strategy: object) -> tuple[bool, bool, bool]:
    """``(is a Heartbeats, is a StateWriter, writes with RedisPubSubStrategy._applied)``
    for ``strategy``, checked once per class.

    ``_applied`` is ``apply`` without parsing the state it returns: taken only where
    ``apply`` is the strategy's own, so that a subclass's ``apply`` is still called.
    """
    kind = _KINDS.get(type(strategy))
    if kind is None:
        kind = _KINDS[type(strategy)] = (
            isinstance(strategy, Heartbeats),
            isinstance(strategy, StateWriter),
            isinstance(strategy, RedisPubSubStrategy)
            and type(strategy).apply is RedisPubSubStrategy.apply,
        )
    return kind


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


def _reported_result(job_id: str, result: Any, limit: int) -> Any:
    """``result`` as JSON types when it is JSON-able and at most ``limit`` bytes as JSON;
    else None, with one error logged saying why (the job itself is not touched)."""
    try:
        encoded = json.dumps(result, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        logger.error(
            "job %s: its result is not reported in its state, as it is not JSON-serialisable "
            "(%s); the job is finished all the same, and its queue keeps the result",
            job_id,
            exc,
        )
        return None
    size = len(encoded.encode())
    if size > limit:
        logger.error(
            "job %s: its result is not reported in its state, as it is %d bytes as JSON, "
            "over the %d-byte limit (max_result_bytes); the job is finished all the same, "
            "and its queue keeps the result",
            job_id,
            size,
            limit,
        )
        return None
    # A copy in JSON types, as waiters will read it.
    return json.loads(encoded)


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
        result=newer.result if newer.result is not None else older.result,
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


class JobContext:
    """What a tracked job reports progress and meta through (arq: ``ctx["immortus"]``).

    A job gets it from its adapter: arq's ``ctx["immortus"]``, typed as
    ``immortus_async.adapters.arq.job_context(ctx)``; taskiq's
    ``job: JobContext = TaskiqDepends(tracking)``; streaQ's ``job_context()``.

    An adapter creates one per attempt as the job starts, with :func:`begin_job`.
    Created directly, ``JobContext(job_id)`` records nothing: it lets a test call a
    job function without a worker.

    Args:
        job_id: the queue's job id.
        attempt: which run of the job this is, 1 for the first.
        function: the job function's name, as the queue knows it.

    Writes are made in the order the job makes them. None holds the job longer
    than the write deadline (``write_timeout``): past it, the update is written in
    the background once Redis answers again (see the module's notes).
    """

    def __init__(self, job_id: str, attempt: int = 1, *, function: str | None = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.function = function
        self._strategy: object | None = None
        self._options = JobOptions()
        self._leftovers = UNOWNED
        self._reader: StateReader | None = None
        self._queue = "the queue"
        self._lock = asyncio.Lock()
        self._backlog: JobUpdate | None = None
        self._redelivery: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # The started write while its reply is awaited by nobody (see _post).
        self._posted: tuple[JobUpdate, asyncio.Future[Any]] | None = None
        # The next beat is a timer, and a task only while it writes: a job shorter
        # than heartbeat_interval (most) never makes one.
        self._next_beat: asyncio.TimerHandle | None = None
        self._ended = False
        # The attempt's OpenTelemetry span, ended by the end of the attempt or by
        # settle(), not by stop(): an adapter may stop the attempt before its end.
        self._span: Any = None

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

    # The adapter's side

    @property
    def ended(self) -> bool:
        """True once the attempt's end was recorded (or :meth:`stop` ran)."""
        return self._ended

    async def finished(self, result: Any = None) -> None:
        """The job returned ``result``: record ``finished``.

        With ``report_result`` (the job side's option), ``result`` goes in the
        state when it is JSON-serialisable and at most ``max_result_bytes`` as
        JSON; else the state has none and one error is logged. Never raises for it.
        """
        reported = None
        if self._options.report_result and result is not None:
            reported = _reported_result(self.job_id, result, self._options.max_result_bytes)
        await self._end(JobStatus.FINISHED, result=reported)

    async def failed(self, error: str) -> None:
        """The job raised and will not run again: record ``failed`` with ``error``."""
        await self._end(JobStatus.FAILED, error)

    async def retrying(self, error: str) -> None:
        """The attempt failed and the queue will run the job again: record ``retrying``."""
        await self._end(JobStatus.RETRYING, error)

    async def aborted(self, error: str | None = None) -> None:
        """The queue cancelled the job for good: record ``aborted``."""
        await self._end(JobStatus.ABORTED, error)

    async def settle(self, *, wait: float | None = None, missing: str | None = None) -> None:
        """Record, once the queue has written it, what the end of the attempt meant.

        In the background (owned by the worker's :class:`Leftovers`), reading the
        ``reader`` given to :func:`begin_job` for up to ``wait`` seconds (default
        ``retry_for``) while it still says ``started``; then its terminal or
        ``retrying`` state is recorded. A job the reader does not know records
        ``failed`` with ``missing`` (default: the queue kept no record of it).
        Stops the heartbeat at once. Without a reader, only that.
        """
        span, self._span = self._span, None
        tracing.finish(span)  # the outcome comes later, from the queue
        if self._reader is not None and self._strategy is not None:
            error = missing or f"{self._queue} kept no record of the job, so its outcome is unknown"
            self._leftovers.spawn(
                self._settle(
                    self._reader,
                    wait=self._options.retry_for if wait is None else wait,
                    error=error,
                ),
                name=f"immortus: {self._queue}'s outcome of job {self.job_id}",
            )
        await self.stop()

    async def stop(self) -> None:
        """The attempt is over: no more beats, and hooks leave its end to whoever ended it.

        The heartbeat is cancelled and awaited, so no beat of this attempt comes later.
        """
        self._ended = True
        if self._next_beat is not None:
            self._next_beat.cancel()
            self._next_beat = None
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None and not beat.done():
            beat.cancel()
            # wait() and not `await beat`: a cancelled task raises CancelledError
            # in whoever awaits it, which would read as this job's own cancellation.
            await asyncio.wait([beat])

    async def _start(self) -> None:
        update = JobUpdate(
            job_id=self.job_id,
            status=JobStatus.STARTED,
            attempt=self.attempt,
            function=self.function,
        )
        if not self._post(update):
            await self._send(update)
        beat = getattr(self._strategy, "heartbeat", None)
        if beat is not None:
            if not _kind(self._strategy)[0]:
                # The first beat before the job's body runs: a worker that dies at
                # once must read stalled too (a Heartbeats rides on `started`).
                await self._beat_once(beat)
            self._arm(beat)

    def _arm(self, beat: Callable[..., Awaitable[Any]]) -> None:
        if not self._ended:
            self._next_beat = asyncio.get_running_loop().call_later(
                self._options.heartbeat_interval, self._due, beat
            )

    def _due(self, beat: Callable[..., Awaitable[Any]]) -> None:
        self._next_beat = None
        self._heartbeat = self._leftovers.spawn(
            self._beat(beat), name=f"immortus: heartbeat of job {self.job_id}", wait=False
        )

    async def _beat_once(self, beat: Callable[..., Awaitable[Any]]) -> None:
        try:
            async with asyncio.timeout(self._options.write_timeout):
                await beat(self.job_id, self.attempt, stalled_after=self._options.stalled_after)
        except Exception as exc:
            # A missed beat is what readers should see; the next one tries again.
            logger.debug("heartbeat of job %s failed: %r", self.job_id, exc)

    async def _beat(self, beat: Callable[..., Awaitable[Any]]) -> None:
        await self._beat_once(beat)
        self._arm(beat)

    async def _end(self, status: JobStatus, error: str | None = None, result: Any = None) -> None:
        span, self._span = self._span, None
        tracing.finish(span, status.value, error)
        await self.stop()
        await self._send(
            JobUpdate(
                job_id=self.job_id, status=status, attempt=self.attempt, error=error, result=result
            )
        )

    async def _settle(self, reader: StateReader, *, wait: float, error: str) -> None:
        """Record the outcome the queue holds for this attempt, waiting up to ``wait`` s.

        A read Redis does not answer (within the write deadline) is tried again
        with backoff for up to ``retry_for`` s.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        delay = _SETTLE_POLL
        try:
            while True:
                try:
                    async with asyncio.timeout(self._options.write_timeout):
                        state = await reader.status(self.job_id)
                except UNREACHABLE as exc:
                    if loop.time() - began >= max(wait, self._options.retry_for):
                        logger.warning(
                            "cannot read %s's outcome of job %s: %s",
                            self._queue,
                            self.job_id,
                            self._options.why(exc),
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
                "tracking job %s: the worker stopped before %s's outcome of it was recorded",
                self.job_id,
                self._queue,
            )
            raise
        except Exception as exc:
            logger.warning("cannot read %s's outcome of job %s: %s", self._queue, self.job_id, exc)
            return
        if state.status is JobStatus.UNKNOWN:
            update = JobUpdate(
                job_id=self.job_id, status=JobStatus.FAILED, attempt=self.attempt, error=error
            )
        elif state.completed or state.status is JobStatus.RETRYING:
            update = JobUpdate.from_state(state)
        else:
            return
        await self._send(update)

    # Writing, whatever Redis does

    def _post(self, update: JobUpdate) -> bool:
        """Write ``started`` on the strategy's pipe, and go on without its reply.

        Why: waiting for it cost the job a wake-up and a turn of the loop before its
        body ran, for a reply the body does not need; the job's next write shares
        that wait instead. The write is on the connection before the body runs (a
        body that holds the loop does not hold it back). Bounded and noticed as any
        write: at ``write_timeout`` it is cancelled (which costs the pipe its
        connection, as a write past its deadline does), and a failure goes to the
        background redelivery, logged, as in :meth:`_send`, whether or not the job
        writes again. The next write takes the outcome over (:meth:`_take_posted`),
        so that updates reach the redelivery in the order they were made. False: the
        strategy has no pipe (another kind, a cluster), and nothing was written.
        """
        strategy = self._strategy
        if not _kind(strategy)[2]:
            return False
        write = cast(RedisPubSubStrategy, strategy)._queued(
            update, stalled_after=self._beats_with(update)
        )
        if write is None:
            return False
        self._posted = (update, write)
        deadline = asyncio.get_running_loop().call_later(self._options.write_timeout, write.cancel)
        write.add_done_callback(lambda done: self._posted_done(done, deadline))
        return True

    def _posted_done(self, write: asyncio.Future[Any], deadline: asyncio.TimerHandle) -> None:
        deadline.cancel()
        posted = self._posted
        if posted is not None and posted[1] is write:
            self._posted = None
            self._outcome(*posted)

    async def _take_posted(self) -> None:
        """The posted write's outcome, handled before the next write's: it is known
        by then (a pipe answers in order), or by its own deadline (a write sent
        again after ``NOSCRIPT`` is answered after those sent behind it)."""
        posted = self._posted
        if posted is None:
            return
        if not posted[1].done():
            # wait(), not await: a write cancelled at its deadline would raise
            # CancelledError here, read as the job's own cancellation. Left posted
            # meanwhile: if this wait is cancelled, its done callback takes it.
            await asyncio.wait([posted[1]])
        if self._posted is posted:
            self._posted = None
            self._outcome(*posted)

    def _outcome(self, update: JobUpdate, write: asyncio.Future[Any]) -> None:
        if write.cancelled():
            self._defer(update, TimeoutError())
        elif (exc := write.exception()) is None:
            return
        elif isinstance(exc, UNREACHABLE):
            self._defer(update, exc)
        else:
            logger.error(
                "tracking job %s failed; the job goes on without it", self.job_id, exc_info=exc
            )

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
            # A posted started is taken over after this write is queued, so that the
            # two share one wait: the pipe answers in order.
            try:
                async with asyncio.timeout(self._options.write_timeout):
                    await self._deliver(update)
            except UNREACHABLE as exc:
                await self._take_posted()
                self._defer(update, exc)
            else:
                await self._take_posted()

    def _defer(self, update: JobUpdate, exc: BaseException) -> None:
        """``update`` could not be written: to the background redelivery (one per job)."""
        if self._redelivery is not None:
            self._backlog = _merge(self._backlog, update)
            return
        logger.warning(
            "tracking job %s: %s; the job goes on, its state is written once Redis "
            "is back (retrying for up to %ss)",
            self.job_id,
            self._options.why(exc),
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
                metrics.write_retried()
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
                            self._options.why(exc),
                        )
                        self._backlog = None
                        metrics.write_given_up()
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

    def _beats_with(self, update: JobUpdate) -> float | None:
        """The ``stalled_after`` of a write that is a heartbeat too (a started or
        progress write of this attempt: one round trip), else None."""
        if update.status is JobStatus.STARTED and update.attempt == self.attempt:
            return self._options.stalled_after
        return None

    async def _deliver(self, update: JobUpdate) -> None:
        strategy = self._strategy
        beats_too, writes, quiet = _kind(strategy)
        try:
            if quiet:
                await cast(RedisPubSubStrategy, strategy)._applied(
                    update, stalled_after=self._beats_with(update)
                )
                return
            if beats_too:
                await cast(Heartbeats, strategy).apply(
                    update, stalled_after=self._beats_with(update)
                )
                return
            if writes:
                await cast(StateWriter, strategy).apply(update)
                return
            name, args = _callback(update)
            method = getattr(strategy, name, None)
            if method is not None:
                await method(update.job_id, *args)
        except UNREACHABLE:
            raise
        except Exception:
            logger.exception("tracking job %s failed; the job goes on without it", self.job_id)


async def begin_job(
    job_id: str,
    attempt: int,
    *,
    redis: Client | None,
    spec: StrategySpec,
    options: JobOptions,
    function: str | None = None,
    leftovers: Leftovers = UNOWNED,
    reader: StateReader | None = None,
    queue: str = "the queue",
) -> JobContext:
    """Begin an attempt of a job: record ``started``, start beating, return its context.

    Args:
        job_id: the queue's job id.
        attempt: which run this is, 1 for the first.
        redis: where the strategy ``spec`` names is built (once per client); None
            (a job called outside a worker) records nothing.
        spec: the job's strategy, usually ``config.strategy_for(function, ...)``.
        options: the job side's timings.
        function: the job function's name, as the queue knows it.
        leftovers: the worker that owns the job's background work.
        reader: the queue's own records, for :meth:`JobContext.settle`.
        queue: the queue's name, for log messages (``"arq"``).

    Never raises for tracking: a strategy that cannot be built is logged and the
    job runs untracked; a write Redis does not take goes to the background.
    """
    context = JobContext(job_id, attempt, function=function)
    context._options, context._leftovers = options, leftovers
    context._reader, context._queue = reader, queue
    if redis is None:
        return context
    try:
        context._strategy = _strategy_on(redis, spec)
    except Exception:
        logger.exception("cannot build tracking strategy %r; job %s runs untracked", spec, job_id)
        return context
    context._span = tracing.processing(job_id, attempt, queue=queue, function=function)
    await context._start()
    await tracing.link(context._span, context._strategy, job_id, timeout=options.write_timeout)
    return context
