"""``"taskiq"``: a task's state read from taskiq's result backend, with no callbacks.

Like Immortus's Delayed::Job strategy read the ``delayed_jobs`` table, this reads
what taskiq itself keeps in Redis through taskiq-redis's
``RedisAsyncResultBackend``, so it answers for tasks run by a worker that never
heard of us:

=================================================  ===================================
taskiq's records                                   state
=================================================  ===================================
a result (``<prefix_str>:<task_id>``, or the id)   ``finished``; ``failed`` with the
                                                   error text (``"ValueError: bad"``)
a progress record (the same key + ``__progress``,  ``started`` (``retrying`` for
written by ``ProgressTracker.set_progress``)       taskiq's ``RETRY``), with its meta
nothing                                            ``unknown`` (never "completed")
=================================================  ===================================

The attempt is taskiq's retry count plus one (the ``_retries`` label that
``SimpleRetryMiddleware`` and ``SmartRetryMiddleware`` stamp on a task they send
again), read from the result's labels.

What taskiq does not record, this cannot tell: a task still in the broker's queue
(taskiq keeps no record of a task per id until it has run), a running task that
reports no progress, and a task the worker dropped without running it (a task
name no worker knows is acknowledged and forgotten). A retry middleware made with
``no_result_on_retry=False`` stores the failed attempt's result before the task
runs again: that attempt reads ``failed`` until the next one ends.
"""

from __future__ import annotations

import asyncio
import io
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, ClassVar, Protocol

from redis.asyncio import ConnectionPool, Redis

from ..._buffer import StateBuffer
from ..._closing import close_all
from ..._follow import poll
from ..._key_watch import KeyWatching
from ..._key_watch import Sink as KeyWatchSink
from ..._records import Nudge
from ..._script import SharedScript
from ...state import JobState
from ...status import JobStatus
from ...strategies._connected import Connected

__all__ = ["PROGRESS_SUFFIX", "TaskiqStrategy", "client_of"]

PROGRESS_SUFFIX = "__progress"
"""What taskiq-redis appends to a task's result key for its progress record."""

# Steps of one attempt, as for arq's records: seq = 4 * attempt + step grows along
# every path a task takes (started, retrying, started again, end).
_STEP = {JobStatus.STARTED: 2, JobStatus.RETRYING: 3}
# A task read from taskiq's records alone is looked at this often at most.
_POLL_MAX = 2.0
# A task's result and progress in one step, as a transaction would read them.
_READ = "return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}"


class Serializer(Protocol):
    """What taskiq-redis decodes its records with (a ``TaskiqSerializer``)."""

    def loadb(self, value: bytes) -> Any:
        """The value ``value`` encodes."""
        ...


class _PlainUnpickler(pickle.Unpickler):
    """Loads what taskiq-redis's default serializer writes, refusing any class.

    taskiq dumps its records to JSON types (``model_dump(mode="json")``) before it
    pickles them, so a record needs no class at all; refusing every one means a
    record someone else wrote into the queue's Redis cannot run code here.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"taskiq records hold no classes; this one names {name!r}")


class _SafePickle:
    def loadb(self, value: bytes) -> Any:
        return _PlainUnpickler(io.BytesIO(value)).load()


def client_of(pool: Any) -> Redis:
    """A client of its own on the Redis that taskiq-redis's connection ``pool`` reaches.

    Not on that pool: taskiq-redis's pools are blocking ones, bounded, and a
    broker's listener holds its connections.
    """
    own = ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
    # from_pool: closing the client closes the pool too.
    return Redis.from_pool(own)


def _seq(status: JobStatus, attempt: int) -> int:
    return 4 * attempt + _STEP.get(status, 4)


def _attempt(labels: Any) -> int:
    try:
        retries = int(labels.get("_retries", 0)) if isinstance(labels, dict) else 0
    except (TypeError, ValueError):
        retries = 0
    return max(retries, 0) + 1


def _error_text(error: Any) -> str:
    """``"ValueError: bad row"`` from the form taskiq stores an exception in."""
    if not isinstance(error, dict):
        return "the task failed" if error is None else str(error)
    # taskiq stores the class's __qualname__; the error text names the class alone.
    name = str(error.get("exc_type") or "Exception").rpartition(".")[2]
    args = error.get("exc_message") or []
    message = str(args[0]) if len(args) == 1 else str(tuple(args)) if args else ""
    return f"{name}: {message}" if message else name


def _progress(meta: Any) -> tuple[float | None, dict[str, Any]]:
    """Progress and meta from a ``TaskProgress`` meta: a number in [0, 1] is the
    progress; a dict is meta, its ``"progress"`` key the progress when it is one."""
    if isinstance(meta, bool):
        return None, {}
    if isinstance(meta, int | float):
        return (float(meta), {}) if 0 <= meta <= 1 else (None, {"progress": meta})
    if not isinstance(meta, dict):
        return None, {} if meta is None else {"progress": meta}
    value = meta.get("progress")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value), {key: item for key, item in meta.items() if key != "progress"}
    return None, dict(meta)


class TaskiqStrategy(KeyWatching, Connected):
    """Reads a task's state from taskiq-redis's result backend records.

    Reading only: it never writes taskiq's keys and never deletes a result (even
    for a backend made with ``keep_results=False``, whose ``get_result`` would).
    taskiq announces none of its writes, so a watcher re-reads the records (see
    :meth:`watch`); as the fallback of ``"redis_pub_sub"`` it is read for tasks
    that no middleware of ours reports, or that ended without it.

    Args:
        redis: the Redis of taskiq's result backend: a ``redis.asyncio.Redis``
            (``decode_responses=False``) or a URL.
        prefix_str: the backend's ``prefix_str``, if it was given one.
        serializer: the backend's ``serializer`` if it is not the default
            (pickle, which is read here without loading any class).
        poll_interval: seconds between a watcher's first reads.
        unreachable_timeout: seconds a waiter rides out a Redis it cannot reach
            before it raises :class:`~immortus_async.RedisUnavailable`; None: for ever.

    Use :meth:`from_backend` to read what a given ``RedisAsyncResultBackend`` writes.
    """

    queue_adapter: ClassVar[str] = "taskiq"

    def __init__(
        self,
        redis: Redis | str,
        *,
        prefix_str: str | None = None,
        serializer: Serializer | None = None,
        poll_interval: float = 0.1,
        unreachable_timeout: float | None = 30.0,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be a positive number, got {poll_interval!r}")
        super().__init__(redis, decode=bytes, unreachable_timeout=unreachable_timeout)
        if self._standalone.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError(
                "TaskiqStrategy needs a Redis client with decode_responses=False: "
                "taskiq's records are bytes"
            )
        self.prefix_str = prefix_str
        self._serializer: Serializer = serializer or _SafePickle()
        self.poll_interval = poll_interval
        self._polling: dict[Nudge, asyncio.Future[None]] = {}
        self._reader = SharedScript(self._standalone, _READ)

    @classmethod
    def from_backend(cls, backend: Any, redis: Redis | str | None = None) -> TaskiqStrategy:
        """A strategy reading what ``backend`` (a ``RedisAsyncResultBackend``) writes.

        Its ``prefix_str`` is used, and its serializer when it is not taskiq's
        default pickle; ``redis`` defaults to a client of the backend's own URL.

        Raises:
            TypeError: ``backend`` keeps its records elsewhere than one Redis.
        """
        pool = getattr(backend, "redis_pool", None)
        if pool is None or not hasattr(pool, "connection_kwargs"):
            raise TypeError(
                "TaskiqStrategy reads taskiq-redis's RedisAsyncResultBackend; "
                f"{type(backend).__name__} keeps its results elsewhere"
            )
        serializer = getattr(backend, "serializer", None)
        if type(serializer).__name__ == "PickleSerializer":
            serializer = None
        client = redis if redis is not None else client_of(pool)
        strategy = cls(
            client, prefix_str=getattr(backend, "prefix_str", None), serializer=serializer
        )
        # A client made here from the backend's settings is the strategy's to close.
        strategy._owns_redis = strategy._owns_redis or redis is None
        return strategy

    def result_key(self, task_id: str) -> str:
        """The key of the task's result, as taskiq-redis names it."""
        return task_id if self.prefix_str is None else f"{self.prefix_str}:{task_id}"

    # Reading

    async def status(self, task_id: str) -> JobState:
        """The task's state as taskiq's records tell it; ``unknown`` when there are none.

        A record that cannot be decoded reads ``failed`` for a result (its outcome
        is unknown) and is ignored for progress.
        """
        key = self.result_key(task_id)
        result, progress = await self._tracked(
            task_id, self._reader, [key, key + PROGRESS_SUFFIX], [], self.reading
        )
        running = self._running(task_id, progress) if progress is not None else None
        if result is not None:
            ended = self._ended(task_id, result)
            # What the task reported of itself outlives its run.
            return ended if running is None else replace(ended, meta=running.meta)
        return running or JobState(job_id=task_id)

    def _load(self, raw: bytes) -> dict[str, Any] | None:
        try:
            data = self._serializer.loadb(raw)
        except Exception:
            return None
        return data if isinstance(data, dict) else None

    def _ended(self, task_id: str, raw: bytes) -> JobState:
        data = self._load(raw)
        error: str | None
        if data is None:
            status, attempt = JobStatus.FAILED, 1
            error = "taskiq's result record of the task could not be read"
        else:
            attempt = _attempt(data.get("labels"))
            status = JobStatus.FAILED if data.get("is_err") else JobStatus.FINISHED
            error = _error_text(data.get("error")) if data.get("is_err") else None
        return JobState(
            job_id=task_id,
            status=status,
            progress=1.0 if status is JobStatus.FINISHED else None,
            error=error,
            attempt=attempt,
            seq=_seq(status, attempt),
        )

    def _running(self, task_id: str, raw: bytes) -> JobState:
        data = self._load(raw) or {}
        status = JobStatus.RETRYING if data.get("state") == "RETRY" else JobStatus.STARTED
        progress, meta = _progress(data.get("meta"))
        # taskiq's progress record says nothing of the attempt: the first is assumed.
        return JobState(
            job_id=task_id,
            status=status,
            progress=progress,
            meta=meta,
            attempt=1,
            seq=_seq(status, 1),
        )

    async def completed(self, task_id: str) -> bool:
        """True once taskiq holds a result of the task (success or not)."""
        return (await self.status(task_id)).completed

    async def meta(self, task_id: str) -> dict[str, Any]:
        """The meta of the task's last ``ProgressTracker.set_progress`` (a dict's keys)."""
        return (await self.status(task_id)).meta

    # Pushing

    @asynccontextmanager
    async def changes(self, task_id: str, buffer: StateBuffer) -> AsyncIterator[float | None]:
        """Ask ``buffer`` to re-read the task whenever taskiq writes its records.

        taskiq announces none of its writes: the task's result and progress keys
        are read on a client-side caching connection, and Redis says when one
        changes (yields None: nothing to poll). Where Redis refuses
        ``CLIENT TRACKING``, yields ``poll_interval``, the interval at which the
        watcher must re-read the task; if caching turns off meanwhile (a storm),
        the watcher is nudged from ``poll_interval``, growing to 2 s.
        """
        nudge = Nudge(buffer)
        key = self.result_key(task_id)
        try:
            if await self._key_watch().watch(task_id, [key, key + PROGRESS_SUFFIX], nudge):
                yield None
            else:
                yield self.poll_interval
        finally:
            self._key_watch().unwatch(task_id, nudge)
            polling = self._polling.pop(nudge, None)
            if polling is not None:
                polling.cancel()

    @property
    def watching(self) -> str:
        """How watchers learn that taskiq wrote a task's records:
        ``"client-tracking"``, or ``"polling"`` where Redis refuses it."""
        off = self._watch is not None and self._watch.off is not None
        return "polling" if off else "client-tracking"

    def _hand_over(self, subjects: dict[str, set[KeyWatchSink]]) -> None:
        """Client-side caching turned off under these watchers: they are nudged instead."""
        for sinks in subjects.values():
            for sink in sinks:
                if isinstance(sink, Nudge):
                    self._polling[sink] = asyncio.ensure_future(self._nudge(sink))

    async def _nudge(self, sink: Nudge) -> None:
        interval = self.poll_interval
        while True:
            sink.request_resync()
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, max(self.poll_interval, _POLL_MAX))

    async def aclose(self) -> None:
        """Stop client-side caching, close the client if made here."""
        for polling in list(self._polling.values()):
            polling.cancel()
        watch = self._watch
        await close_all([None if watch is None else watch.aclose, super().aclose])

    def watch(self, task_id: str, **options: Any) -> AsyncIterator[JobState]:
        """Yield the task's state now, then each change, until a terminal one.

        The records are read from ``poll_interval``, growing by half with each read
        that finds nothing new, up to 2 s; a change starts again from
        ``poll_interval``. A change of progress is yielded too, its ``seq`` one more.
        """
        return poll(
            task_id,
            lambda: self.status(task_id),
            min_interval=self.poll_interval,
            max_interval=max(self.poll_interval, _POLL_MAX),
            unreachable_timeout=self.unreachable_timeout,
        )
