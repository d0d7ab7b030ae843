"""``"arq"``: a job's state read from arq's own records, with no callbacks.

Like Immortus's Delayed::Job strategy read the ``delayed_jobs`` table, this reads
what arq itself keeps in Redis, so it works for jobs enqueued and run by code that
never heard of us:

===========================================  ======================================
arq's records                                state
===========================================  ======================================
a result (``arq:result:<id>``)               ``finished``; ``failed`` with the error
                                             text (arq calls a failed job
                                             "complete"); ``aborted`` for an abort
in progress (``arq:in-progress:<id>``)       ``started``, attempt from ``arq:retry:``
the job (``arq:job:<id>`` or the queue)      ``queued``; ``retrying`` once tried
nothing                                      ``unknown`` (never "completed")
===========================================  ======================================

Push: a watcher's job's four keys are read on a client-side caching connection
(:mod:`immortus_async._key_watch`), and Redis says when one changes: no command
while nothing does. Where Redis refuses ``CLIENT TRACKING`` (or it storms), when
the server publishes keyspace notifications for generic, string and expiry events
(``notify-keyspace-events`` containing ``K`` and ``g$x``, or ``KA``, e.g.
``CONFIG SET notify-keyspace-events Kg$x``), a watcher subscribes to the four keys
of its job and re-reads only when one changes. Otherwise, or when ``CONFIG`` is not
allowed (some managed services), one poller looks at every watched job's records
in batches, from every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ... import metrics
from ..._buffer import StateBuffer
from ..._closing import close_all
from ..._describe import describe_error
from ..._follow import follow
from ..._key_watch import KeyWatching
from ..._key_watch import Sink as KeyWatchSink
from ..._records import Nudge as _Nudge
from ..._records import lifecycle_seq as _seq
from ..._records import ms_time as _time
from ..._records import text as _text
from ..._records import unpickle as _unpickle
from ..._script import SharedScript
from ...state import JobState
from ...status import JobStatus
from ...strategies._connected import Connected
from ._poller import ArqPoller

__all__ = ["ArqStrategy"]

logger = logging.getLogger("immortus_async.adapters.arq")

_NEEDED_EVENTS = frozenset("g$x")
# How a watcher learns of changes to arq's records (the fallback_mode metric).
_MODES = ("client-tracking", "keyspace", "poll")
# Without keyspace events, a quiet job's records are looked at this often at least.
_POLL_MAX = 2.0
# Every key whose change moves a job: written, deleted, incremented or expired.
_PREFIXES = (job_key_prefix, in_progress_key_prefix, retry_key_prefix, result_key_prefix)
_READ_PREFIXES = (result_key_prefix, in_progress_key_prefix, job_key_prefix, retry_key_prefix)
_VANISHED = (
    "the job left arq without a result (the worker keeps none with keep_result=0, "
    "or it has expired), so its outcome is unknown"
)

# A job's records in one command (its snapshot, and every re-read), as atomic as
# the MULTI/EXEC transactions in which arq moves them. The queue's shared sorted set
# is looked at only for a job with none of its own keys (one whose key expired while
# it waits): a watcher's read tracks every key it reads (_key_watch), and that one
# changes with every job.
_READ = """
local result, running = redis.call('GET', KEYS[1]), redis.call('EXISTS', KEYS[2])
local job, tries = redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4])
local score = false
if not result and running == 0 and not job then score = redis.call('ZSCORE', KEYS[5], ARGV[1]) end
return {result, running, job, tries, score}
"""


def _outcome(data: dict[str, Any]) -> tuple[JobStatus, str | None]:
    if data.get("s"):
        return JobStatus.FINISHED, None
    result = data.get("r")
    if isinstance(result, asyncio.CancelledError):
        return JobStatus.ABORTED, describe_error(result, default="job aborted")
    if isinstance(result, TimeoutError):
        return JobStatus.FAILED, describe_error(result, default="job timed out")
    if isinstance(result, BaseException):
        return JobStatus.FAILED, describe_error(result)
    return JobStatus.FAILED, str(result)


@dataclass
class _Polling:
    interval: float | None = None


class ArqStrategy(KeyWatching, Connected):
    """Reads a job's state from arq's records; pushes through keyspace notifications.

    ``seq`` is derived from the lifecycle (``4 * attempt`` plus the step within the
    attempt), so it grows as arq moves a job along and two readers agree on it.
    A job that disappears from arq while watched (no result was kept) ends the
    watch as ``failed`` with an error saying so, rather than leaving it waiting.

    Args:
        redis: arq's Redis: an ``arq.ArqRedis`` (whose queue name and job
            deserializer are then used), a ``redis.asyncio.Redis`` or a URL.
        queue_name: the queue to look for a waiting job in; default the pool's, else
            ``arq:queue``. A job's own key is looked at too, so jobs of other queues
            read ``queued`` as well.
        deserializer: arq's ``job_deserializer`` if the worker uses one; default
            pickle, tolerant of classes this process cannot import.
        client_tracking: False to go without client-side caching; None (default)
            uses it where the server allows it (Redis 6 or later, ``CLIENT`` not
            denied), else falls back to the next way (see :meth:`changes`).
        notifications: True or False to force keyspace events or polling when
            client-side caching is not used; None (default) asks the server once
            (``CONFIG GET notify-keyspace-events``).
        poll_interval: seconds between reads while polling.
        buffer_size: states kept per waiter that has not read them yet.
        unreachable_timeout: seconds a waiter rides out a Redis it cannot reach
            (at its first read or mid-wait) before it raises
            :class:`~immortus_async.RedisUnavailable`; None: for ever.
    """

    queue_adapter: ClassVar[str] = "arq"
    """Reads arq's records: built on arq's Redis (a Tracker's ``queue_redis``)."""

    def __init__(
        self,
        redis: Redis | str,
        *,
        queue_name: str | None = None,
        deserializer: Callable[[bytes], dict[str, Any]] | None = None,
        # Push or poll
        client_tracking: bool | None = None,
        notifications: bool | None = None,
        poll_interval: float = 0.1,
        buffer_size: int = 64,
        unreachable_timeout: float | None = 30.0,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be a positive number, got {poll_interval!r}")
        # A keyspace event carries only the command's name: any one means "re-read".
        super().__init__(redis, decode=bytes, unreachable_timeout=unreachable_timeout)
        if self._standalone.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("ArqStrategy needs a Redis client with decode_responses=False, as arq")
        pool_queue: str = getattr(self.redis, "default_queue_name", default_queue_name)
        self.queue_name = queue_name or pool_queue
        self._loads = deserializer or getattr(self.redis, "job_deserializer", None) or _unpickle
        self._reader = SharedScript(self._standalone, _READ)
        self._notifications = notifications
        self._asking: asyncio.Future[bool] | None = None
        self._arq_poller: ArqPoller | None = None
        self._tracking = client_tracking
        self._handovers: dict[_Nudge, asyncio.Future[None]] = {}
        self.poll_interval = poll_interval
        self._buffer_size = buffer_size

    # Reading

    async def status(self, job_id: str) -> JobState:
        """The job's state as arq's records tell it; ``unknown`` when arq has none."""
        keys = [prefix + job_id for prefix in _READ_PREFIXES] + [self.queue_name]
        result, in_progress, job, tries, score = await self._tracked(
            job_id, self._reader, keys, [job_id], self.reading
        )
        if result is not None:
            return self._ended(job_id, result)
        tries = int(tries or 0)
        if in_progress:
            status, attempt = JobStatus.STARTED, max(tries, 1)
        elif job is not None or score is not None:
            status, attempt = (JobStatus.RETRYING, tries) if tries else (JobStatus.QUEUED, 0)
        else:
            return JobState(job_id=job_id)
        data = self._load(job_id, job) if job is not None else {}
        return JobState(
            job_id=job_id,
            status=status,
            attempt=attempt,
            seq=_seq(status, attempt),
            function=_text(data.get("f")),
            enqueued_at=_time(data.get("et")),
        )

    def _load(self, job_id: str, raw: bytes) -> dict[str, Any]:
        try:
            return self._loads(raw)
        except Exception as exc:
            logger.warning("cannot read arq's record of job %s: %s", job_id, exc)
            return {}

    def _ended(self, job_id: str, raw: bytes) -> JobState:
        data = self._load(job_id, raw)
        if data:
            status, error = _outcome(data)
        else:
            status, error = JobStatus.FAILED, "arq's result record of the job could not be read"
        attempt = data.get("t")
        attempt = attempt if isinstance(attempt, int) and attempt > 0 else 1
        return JobState(
            job_id=job_id,
            status=status,
            progress=1.0 if status is JobStatus.FINISHED else None,
            error=error,
            attempt=attempt,
            seq=_seq(status, attempt),
            function=_text(data.get("f")),
            enqueued_at=_time(data.get("et")),
            started_at=_time(data.get("st")),
            finished_at=_time(data.get("ft")),
        )

    async def completed(self, job_id: str) -> bool:
        """True once arq holds a result for the job (success or not)."""
        return (await self.status(job_id)).completed

    async def meta(self, job_id: str) -> dict[str, Any]:
        """Always empty: arq records no progress or meta of a job."""
        return {}

    # Pushing

    @property
    def healthy(self) -> bool:
        """False while the pub/sub hub has waiters and no connection, or while a
        failed task (the hub's or the poller's) is being restarted."""
        return super().healthy and (self._arq_poller is None or self._arq_poller.healthy)

    def _poller(self) -> ArqPoller:
        if self._arq_poller is None:
            self._arq_poller = ArqPoller(
                self._standalone,
                self.queue_name,
                interval=self.poll_interval,
                max_interval=_POLL_MAX,
                unreachable_timeout=self.unreachable_timeout,
                where=self.where,
            )
        return self._arq_poller

    async def aclose(self) -> None:
        """Stop the poller, close the pub/sub connection, and the client if made here."""
        for handover in list(self._handovers.values()):
            handover.cancel()
        watch, poller = self._watch, self._arq_poller
        await close_all(
            [
                None if watch is None else watch.aclose,
                None if poller is None else poller.aclose,
                super().aclose,
            ]
        )

    async def notifications_enabled(self) -> bool:
        """Whether the server publishes the keyspace events a watcher needs.

        Asked once (``CONFIG GET notify-keyspace-events``) unless forced in the
        constructor; a server that refuses ``CONFIG`` counts as no. While Redis is
        unreachable the answer is no, and it is asked again next time.
        """
        if self._notifications is not None:
            return self._notifications
        # A thousand watchers starting at once ask once: the first asks, the rest
        # wait for its answer (they used to send a CONFIG GET each).
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._ask_notifications())
            # Retrieved even if every asker was cancelled meanwhile.
            self._asking.add_done_callback(lambda f: f.cancelled() or f.exception())
        asking = self._asking
        try:
            return await asyncio.shield(asking)
        finally:
            if asking.done() and self._asking is asking:
                self._asking = None

    async def _ask_notifications(self) -> bool:
        try:
            reply = await self.redis.config_get("notify-keyspace-events")
        except ResponseError as exc:
            logger.info("CONFIG GET refused (%s); watching arq jobs by polling", exc)
            self._notifications = False
        except (RedisError, OSError) as exc:
            logger.info("cannot ask Redis about keyspace events (%s); polling", exc)
            return False
        else:
            flags = set(_text(next(iter(reply.values()), None)) or "")
            self._notifications = "K" in flags and ("A" in flags or _NEEDED_EVENTS <= flags)
            logger.info(
                "watching arq's records by %s",
                "keyspace events" if self._notifications else "a batched look",
            )
        return self._notifications

    @contextlib.asynccontextmanager
    async def changes(self, job_id: str, buffer: StateBuffer) -> AsyncIterator[float | None]:
        """Ask ``buffer`` to re-read the job whenever arq's records of it may change.

        The first way that works here carries the changes (:attr:`watching`):
        client-side caching (``CLIENT TRACKING``, one invalidation per change of
        the job's own keys); else keyspace notifications where the server sends
        them; else one poller per strategy looks at the fingerprints of every
        watched job's records in batches, from ``poll_interval`` growing by half
        each quiet look up to 2 s, and nudges only the jobs that changed. Yields
        None: the caller need not re-read by itself (the yielded value is the
        interval at which it would have to).
        """
        nudge = _Nudge(buffer)
        try:
            if self._tracking is not False:
                keys = [prefix + job_id for prefix in _PREFIXES]
                ends = [result_key_prefix + job_id]
                if await self._key_watch().watch(job_id, keys, nudge, ends=ends):
                    metrics.fallback_mode("arq", "client-tracking", _MODES)
                    yield None
                    return
            if not await self.notifications_enabled():
                metrics.fallback_mode("arq", "poll", _MODES)
                # One poller looks at every watched job in batches and nudges only
                # the watchers whose job changed (see _poller).
                await self._poller().register(job_id, nudge)
                yield None
                return
            metrics.fallback_mode("arq", "keyspace", _MODES)
            hub = self._pubsub()
            db = self._standalone.connection_pool.connection_kwargs.get("db", 0)
            async with contextlib.AsyncExitStack() as stack:
                for prefix in _PREFIXES:
                    channel = f"__keyspace@{db}__:{prefix}{job_id}"
                    await stack.enter_async_context(hub.subscription(channel, nudge, self._decode))
                yield None
        finally:
            if self._watch is not None:
                self._watch.unwatch(job_id, nudge)
            handover = self._handovers.pop(nudge, None)
            if handover is not None:
                handover.cancel()
            if self._arq_poller is not None:
                self._arq_poller.unregister(job_id, nudge)

    @property
    def watching(self) -> str:
        """How watchers learn that arq changed a job's records: ``"client-tracking"``,
        ``"keyspace-events"``, ``"batched-look"``, or ``"undecided"`` before the
        first watcher."""
        if self._tracking is not False and (self._watch is None or self._watch.off is None):
            return "client-tracking" if self._watch is not None else "undecided"
        if self._notifications is None and self._arq_poller is None:
            return "undecided"
        return "keyspace-events" if self._notifications else "batched-look"

    def _hand_over(self, subjects: dict[str, set[KeyWatchSink]]) -> None:
        """Client-side caching turned off under these watchers: the poller takes them."""
        metrics.fallback_mode("arq", "poll", _MODES)
        poller = self._poller()
        for job_id, sinks in subjects.items():
            for sink in sinks:
                if isinstance(sink, _Nudge):
                    task = asyncio.ensure_future(self._take_over(poller, job_id, sink))
                    self._handovers[sink] = task

    async def _take_over(self, poller: ArqPoller, job_id: str, sink: _Nudge) -> None:
        try:
            await poller.register(job_id, sink)
        finally:
            self._handovers.pop(sink, None)
            # What changed between the last invalidation and the first look.
            sink.request_resync()

    def watch(self, job_id: str, **options: Any) -> AsyncIterator[JobState]:
        """Yield the job's state now, then each change, until a terminal state.

        Keyword options: ``buffer_size`` overrides the strategy's per-waiter buffer.
        """
        buffer = StateBuffer(options.get("buffer_size", self._buffer_size))
        polling = _Polling()
        seen: list[JobState] = []

        async def read() -> JobState:
            state = await self.status(job_id)
            if seen and 0 < state.seq < seen[-1].seq:
                # In progress before arq counted the try (it counts just after): the
                # attempt looks like the last one's. Nothing to report yet.
                return seen[-1]
            if state.status is JobStatus.UNKNOWN and seen and not seen[-1].completed:
                last = seen[-1]
                state = JobState(
                    job_id=job_id,
                    status=JobStatus.FAILED,
                    error=_VANISHED,
                    attempt=last.attempt,
                    seq=_seq(JobStatus.FAILED, last.attempt),
                    function=last.function,
                    enqueued_at=last.enqueued_at,
                )
            if state.status is not JobStatus.UNKNOWN:
                seen[:] = [state]
            return state

        @contextlib.asynccontextmanager
        async def subscription() -> AsyncIterator[None]:
            async with self.changes(job_id, buffer) as interval:
                polling.interval = interval
                yield

        return follow(
            job_id,
            subscription(),
            buffer,
            read,
            recheck=lambda _: polling.interval,
            unreachable_timeout=self.unreachable_timeout,
            where=self.where,
        )
