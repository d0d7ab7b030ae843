"""``"streaq"``: a task's state read from streaQ's own records, with no callbacks.

streaQ keeps, under ``streaq:<queue>:``, what this reads with our own redis-py
client (streaQ itself talks through coredis), so it works for tasks enqueued and
run by code that never heard of us:

==============================================  ====================================
streaQ's records                                state
==============================================  ====================================
a result (``task:results:<id>``)                ``finished``; ``failed`` with the
                                                error text (a timeout, a missing
                                                function, the retries exhausted, a
                                                failed dependency); ``aborted`` for
                                                ``abort()``
in the running set (``index:running``)          ``started``, attempt from
                                                ``task:retry:<id>``
the task (``task:data:<id>``), tried before     ``retrying`` when it waits in a
                                                delayed queue, else ``started``
                                                (picked up, not yet marked running)
the task, never tried                           ``queued`` (delayed, scheduled or
                                                waiting for a dependency included)
nothing                                         ``unknown`` (never "completed")
==============================================  ====================================

Push: streaQ publishes every result on the task's own channel
(``channels:<id>``), so the end of a task, however streaQ ends it, wakes a
watcher at once. What streaQ announces nowhere (a task picked up, a retry
scheduled) is read every ``poll_interval``, growing by half each quiet read up to
2 s, by a watcher of this strategy alone; as the fallback of ``"redis_pub_sub"``
(:meth:`StreaqStrategy.changes`) it is not polled at all, the job side writes
those changes itself.

Where streaQ keeps nothing: a task with ``ttl=0`` (no result is stored), one whose
result has expired, and one aborted while it waited in a delayed queue (a retry
or ``delay``: streaQ deletes it and publishes nothing) leave no record. A watcher
of this strategy that saw the task before ends ``failed`` with an error saying
its outcome is unknown; ``"redis_pub_sub"`` keeps what the job side last wrote.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import logging
import pickle
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from redis.asyncio import Redis
from streaq import Worker
from streaq.constants import (
    REDIS_CHANNEL,
    REDIS_DEPENDENCIES,
    REDIS_PREFIX,
    REDIS_QUEUE,
    REDIS_RESULT,
    REDIS_RETRY,
    REDIS_RUNNING_SET,
    REDIS_TASK,
)

from ..._buffer import StateBuffer
from ..._describe import describe_error
from ..._follow import follow
from ..._records import Nudge, lifecycle_seq, ms_time, text, unpickle
from ...state import JobState
from ...status import JobStatus
from ...strategies._connected import Connected

__all__ = ["StreaqStrategy"]

logger = logging.getLogger("immortus_async.adapters.streaq")

# A quiet task's records are read this often at least by a watcher of this
# strategy alone (what streaQ does not publish: picked up, retry scheduled).
_POLL_MAX = 2.0
# streaQ's default priorities: one queue, "normal".
_PRIORITIES = ("normal",)
# streaQ names the function of a task failed for its dependency so.
_NO_FUNCTION = "Unknown"
_UNREADABLE = "streaQ's result record of the task could not be read"
_VANISHED = (
    "the task left streaQ without a result (its ttl=0 keeps none, the result has "
    "expired, or it was aborted while it waited in a delayed queue), so its outcome "
    "is unknown"
)


def _outcome(data: dict[str, Any]) -> tuple[JobStatus, str | None]:
    if data.get("s"):
        return JobStatus.FINISHED, None
    result = data.get("r")
    if not isinstance(result, BaseException):
        return JobStatus.FAILED, str(result)
    # streaQ's own exception for abort(), before or during the run; matched by name
    # so that a record unpickled without streaQ's classes reads the same.
    if type(result).__name__ == "StreaqCancelled":
        return JobStatus.ABORTED, describe_error(result, default="task aborted")
    return JobStatus.FAILED, describe_error(result)


def _function(data: dict[str, Any]) -> str | None:
    name = text(data.get("f"))
    return None if name == _NO_FUNCTION else name


@dataclass
class _Quiet:
    """How long a watcher of this strategy alone waits before reading again."""

    interval: float
    last: JobState | None = None
    reads: int = 0

    def next(self, state: JobState) -> float | None:
        if state.completed:
            return None
        if self.last is None or (state.status, state.attempt) != (
            self.last.status,
            self.last.attempt,
        ):
            self.reads = 0
        self.last = state
        self.reads += 1
        return min(self.interval * 1.5 ** (self.reads - 1), max(self.interval, _POLL_MAX))


class StreaqStrategy(Connected):
    """Reads a task's state from streaQ's records; pushes its end through streaQ's channel.

    ``seq`` is derived from the lifecycle (``4 * attempt`` plus the step within the
    attempt), so it grows as streaQ moves a task along and two readers agree on it.

    Args:
        redis: streaQ's Redis: a ``redis.asyncio.Redis`` with
            ``decode_responses=False`` (streaQ pickles) or a URL.
        worker: the ``streaq.Worker`` whose tasks these are: its queue name,
            priorities, deserializer and signing secret are used, so records are
            read the way that worker reads them. It need not be running (nor
            entered: only its settings are read).
        queue_name: the queue, when no ``worker`` is given (streaQ's default
            ``"default"``, priority ``"normal"``, pickle, no signing).
        poll_interval: seconds between reads of a task whose change streaQ does
            not publish, while watched through this strategy alone.
        buffer_size: states kept per waiter that has not read them yet.
        unreachable_timeout: seconds a waiter rides out a Redis it cannot reach
            (at its first read or mid-wait) before it raises
            :class:`~immortus_async.RedisUnavailable`; None: for ever.

    Records are unpickled tolerantly: an exception class that only the worker can
    import still gives its name and message in ``error``. A worker with its own
    ``deserializer`` has its records read with it.
    """

    queue_adapter: ClassVar[str] = "streaq"

    def __init__(
        self,
        redis: Redis | str,
        *,
        worker: Worker[Any] | None = None,
        queue_name: str | None = None,
        # Reading
        poll_interval: float = 0.1,
        buffer_size: int = 64,
        unreachable_timeout: float | None = 30.0,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be a positive number, got {poll_interval!r}")
        if worker is not None and queue_name is not None and queue_name != worker.queue_name:
            raise ValueError(
                f"queue_name {queue_name!r} differs from the worker's {worker.queue_name!r}: "
                "give one of them"
            )
        super().__init__(redis, decode=bytes, unreachable_timeout=unreachable_timeout)
        if self._standalone.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError(
                "StreaqStrategy needs a Redis client with decode_responses=False: "
                "streaQ's records are pickles"
            )
        self.queue_name: str = (
            worker.queue_name if worker is not None else (queue_name or "default")
        )
        self._prefix: str = REDIS_PREFIX + self.queue_name
        # streaQ keeps its priorities lowest first, reversed: any order does here.
        self._priorities = tuple(worker.priorities) if worker is not None else _PRIORITIES
        self._secret = worker.signing_secret if worker is not None else None
        self._loads: Callable[[bytes], Any] = unpickle
        if worker is not None and worker.deserializer is not pickle.loads:
            self._loads = worker.deserializer
        self.poll_interval = poll_interval
        self._buffer_size = buffer_size

    def _key(self, part: str, task_id: str = "") -> str:
        return self._prefix + part + task_id

    # Reading

    async def status(self, job_id: str) -> JobState:
        """The task's state as streaQ's records tell it; ``unknown`` when streaQ has none."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self._key(REDIS_RESULT, job_id))
            pipe.sismember(self._key(REDIS_RUNNING_SET), job_id)
            pipe.get(self._key(REDIS_TASK, job_id))
            pipe.get(self._key(REDIS_RETRY, job_id))
            for priority in self._priorities:
                pipe.zscore(self._key(REDIS_QUEUE, priority), job_id)
            pipe.exists(self._key(REDIS_DEPENDENCIES, job_id))
            result, running, task, tries, *delayed, waits = await pipe.execute()
        if result is not None:
            return await self._ended(job_id, result)
        if task is None and not running and not waits:
            return JobState(job_id=job_id)
        tries = int(tries or 0)
        if running:
            status, attempt = JobStatus.STARTED, max(tries, 1)
        elif not tries:
            status, attempt = JobStatus.QUEUED, 0
        elif any(score is not None for score in delayed):
            status, attempt = JobStatus.RETRYING, tries
        else:
            # streaQ counts the try, then marks the task running: in between (or
            # when a worker let it go to be run again at once) it is at this try.
            status, attempt = JobStatus.STARTED, tries
        data = await self._load(job_id, task) if task is not None else {}
        return JobState(
            job_id=job_id,
            status=status,
            attempt=attempt,
            seq=lifecycle_seq(status, attempt),
            function=_function(data),
            enqueued_at=ms_time(data.get("t")),
        )

    async def _load(self, job_id: str, raw: bytes) -> dict[str, Any]:
        try:
            if self._secret is not None:
                raw, signature = raw[:-32], raw[-32:]
                expected = hmac.digest(self._secret, raw, "sha256")
                if not hmac.compare_digest(signature, expected):
                    raise ValueError("its signature does not match the worker's signing secret")
            data = self._loads(raw)
            if inspect.isawaitable(data):
                data = await data
            if not isinstance(data, dict):
                raise TypeError(f"expected a dict, got {type(data).__name__}")
            return data
        except Exception as exc:
            logger.warning("cannot read streaQ's record of task %s: %s", job_id, exc)
            return {}

    async def _ended(self, job_id: str, raw: bytes) -> JobState:
        data = await self._load(job_id, raw)
        if data:
            status, error = _outcome(data)
        else:
            status, error = JobStatus.FAILED, _UNREADABLE
        attempt = data.get("t")
        attempt = attempt if isinstance(attempt, int) and attempt > 0 else 1
        return JobState(
            job_id=job_id,
            status=status,
            progress=1.0 if status is JobStatus.FINISHED else None,
            error=error,
            attempt=attempt,
            seq=lifecycle_seq(status, attempt),
            function=_function(data),
            enqueued_at=ms_time(data.get("et") or data.get("ct")),
            started_at=ms_time(data.get("st")),
            finished_at=ms_time(data.get("ft")),
        )

    async def completed(self, job_id: str) -> bool:
        """True once streaQ holds a result for the task (success or not)."""
        return (await self.status(job_id)).completed

    async def meta(self, job_id: str) -> dict[str, Any]:
        """Always empty: streaQ records no progress or meta of a task."""
        return {}

    # Pushing

    @contextlib.asynccontextmanager
    async def changes(self, job_id: str, buffer: StateBuffer) -> AsyncIterator[float | None]:
        """Ask ``buffer`` to re-read the task whenever streaQ publishes its result.

        Yields None: the end of a task is pushed; the changes streaQ does not
        publish are the job side's to write (see the module's notes).
        """
        channel = self._key(REDIS_CHANNEL, job_id)
        async with self._pubsub().subscription(channel, Nudge(buffer), self._decode):
            yield None

    def watch(self, job_id: str, **options: Any) -> AsyncIterator[JobState]:
        """Yield the task's state now, then each change, until a terminal state.

        Its end is pushed; the rest is read every ``poll_interval`` (growing to 2 s
        while nothing changes). A task that disappears from streaQ while watched
        ends the watch as ``failed`` with an error saying its outcome is unknown,
        rather than leaving it waiting. Keyword options: ``buffer_size`` overrides the
        strategy's per-waiter buffer.
        """
        buffer = StateBuffer(options.get("buffer_size", self._buffer_size))
        quiet = _Quiet(self.poll_interval)
        seen: list[JobState] = []

        async def read() -> JobState:
            state = await self.status(job_id)
            if state.status is JobStatus.UNKNOWN and seen and not seen[-1].completed:
                # Gone without a word: no end will ever be published.
                last = seen[-1]
                state = JobState(
                    job_id=job_id,
                    status=JobStatus.FAILED,
                    error=_VANISHED,
                    attempt=max(last.attempt, 1),
                    seq=lifecycle_seq(JobStatus.FAILED, max(last.attempt, 1)),
                    function=last.function,
                    enqueued_at=last.enqueued_at,
                )
            if state.status is not JobStatus.UNKNOWN:
                seen[:] = [state]
            return state

        @contextlib.asynccontextmanager
        async def subscription() -> AsyncIterator[None]:
            async with self.changes(job_id, buffer):
                yield

        return follow(
            job_id,
            subscription(),
            buffer,
            read,
            recheck=quiet.next,
            unreachable_timeout=self.unreachable_timeout,
            where=self.where,
        )
