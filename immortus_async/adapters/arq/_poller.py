"""One poller for all the jobs a process watches in arq's records, when Redis cannot push.

Without keyspace notifications, the only way to learn that arq ended a job on its own
(retries exhausted, aborted before it started, expired, function not found) is to look
at arq's records. Each watcher looking for itself costs a full read per watcher per
interval: ten thousand watchers on one bridge were ten thousand reads every two
seconds, more than a Python process can do. Here one task looks at every watched job
in one script call per few hundred jobs, reading only a fingerprint of arq's records
(which of them exist, the try count), and tells a job's watchers to re-read (the same
"resync" a keyspace event gives them) only when that fingerprint changed.

A job's first fingerprint is read as its first watcher registers, before that watcher
reads its snapshot (registrations made together share one script call), so any later
change shows as a different fingerprint. The job is then looked at after ``interval``
seconds, then less and less often while nothing changes (half as long again each time,
up to ``max_interval``), and again ``interval`` after a change.

A failed read is tried again later. If the task dies anyway (a bug, not Redis), it
is logged with its traceback, every watcher fails with :class:`ImmortusError`
rather than wait for looks that never come, and the task starts again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from redis.asyncio import Redis

from ..._stoppable import Stoppable
from ...exceptions import ImmortusError, RedisUnavailable, TrackerClosed

__all__ = ["ArqPoller"]

logger = logging.getLogger("immortus_async.adapters.arq")

# KEYS: the queue, then per job its result, in-progress, job and retry keys.
# ARGV: the job ids. Returns one number per job: which records exist, and the tries.
_FINGERPRINTS = """
local out = {}
for i, job_id in ipairs(ARGV) do
  local k = 1 + (i - 1) * 4
  local code = redis.call('EXISTS', KEYS[k + 1]) * 8 + redis.call('EXISTS', KEYS[k + 2]) * 4
             + redis.call('EXISTS', KEYS[k + 3]) * 2
  if redis.call('ZSCORE', KEYS[1], job_id) then code = code + 1 end
  out[i] = code * 1000000 + (tonumber(redis.call('GET', KEYS[k + 4])) or 0)
end
return out
"""
_BATCH = 250  # jobs per script call
_COALESCE = 0.05  # jobs due this soon are looked at with the ones due now


class Sink(Protocol):
    """A watcher's buffer: told to re-read the job, or that watching it failed."""

    def request_resync(self) -> None: ...
    def fail(self, error: BaseException) -> None: ...


@dataclass
class _Job:
    sinks: set[Sink] = field(default_factory=set)
    interval: float = 0.0
    due: float = 0.0
    fingerprint: int | None = None  # None: unknown, the next look nudges
    since: float = 0.0  # loop time it was registered
    version: int = 0  # bumped when rescheduled: older heap entries are stale
    ready: asyncio.Future[None] | None = None  # done once the first fingerprint is read


class ArqPoller:
    """Looks at arq's records of every registered job, in batches, from one task.

    Args:
        redis: arq's Redis.
        queue_name: arq's queue.
        interval: seconds before a job's first look, and after a change.
        max_interval: the longest wait between two looks at a quiet job.
        unreachable_timeout: seconds the looks may fail (Redis unreachable) before
            the watchers of the jobs they concern fail with
            :class:`~immortus_async.RedisUnavailable`; None: never.
        where: names the server in that error (no password).
    """

    def __init__(
        self,
        redis: Redis,
        queue_name: str,
        *,
        interval: float,
        max_interval: float,
        unreachable_timeout: float | None = None,
        where: str = "Redis",
    ) -> None:
        self._redis = redis
        self._queue = queue_name
        self._interval = interval
        self._max_interval = max(interval, max_interval)
        self._script = redis.register_script(_FINGERPRINTS)
        self._jobs: dict[str, _Job] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._unread: list[str] = []  # registered, first fingerprint not read yet
        self._wakeup = asyncio.Event()
        self._task: Stoppable | None = None
        self._restarting = False
        self._unreachable_timeout = unreachable_timeout
        self._where = where
        self._failing_since: float | None = None  # loop time the looks began to fail
        self._closed = False

    @property
    def jobs(self) -> int:
        """How many jobs are watched."""
        return len(self._jobs)

    @property
    def healthy(self) -> bool:
        """False while the task is being restarted after it failed."""
        return not self._restarting

    async def register(self, job_id: str, sink: Sink) -> None:
        """Tell ``sink`` to re-read whenever arq's records of ``job_id`` change.

        Returns once the job's first fingerprint is read: a snapshot the watcher
        reads after this sees everything before it, and the poller every change
        after it. If Redis cannot be read, returns all the same, and the job's
        first look tells its watchers to re-read. The sink is registered even if
        this is cancelled: the caller unregisters it in any case.

        Raises:
            TrackerClosed: the poller is closed.
            ImmortusError: the poller's task failed meanwhile (it is restarted).
        """
        if self._closed:
            raise TrackerClosed("the strategy's arq poller is closed")
        job = self._jobs.get(job_id)
        if job is None:
            job = self._jobs[job_id] = _Job(
                interval=self._interval, since=asyncio.get_running_loop().time()
            )
            job.ready = asyncio.get_running_loop().create_future()
            self._unread.append(job_id)
        job.sinks.add(sink)
        if self._task is None:
            self._task = Stoppable(self._supervise(), "immortus-arq-poller")
        self._wakeup.set()
        if job.ready is not None and not job.ready.done():
            await asyncio.shield(job.ready)

    def unregister(self, job_id: str, sink: Sink) -> None:
        """Stop telling ``sink``; the last one out stops looking at the job."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.sinks.discard(sink)
        if not job.sinks:
            del self._jobs[job_id]

    def _schedule(self, job_id: str, job: _Job, delay: float) -> None:
        job.version += 1
        job.due = asyncio.get_running_loop().time() + delay
        heapq.heappush(self._heap, (job.due, job.version, job_id))
        self._wakeup.set()

    async def _supervise(self) -> None:
        """Run the loop for ever: if it dies, log it, fail every watcher, start again."""
        loop = asyncio.get_running_loop()
        delay = self._interval
        while True:
            started = loop.time()
            try:
                await self._run()
            except Exception as exc:
                logger.exception("the arq poller failed; restarting it")
                self._restarting = True
                error = ImmortusError(
                    f"the arq poller failed ({exc!r}) and is restarted: wait again"
                )
                jobs, self._jobs = self._jobs, {}
                self._heap.clear()
                self._unread.clear()
                for job in jobs.values():
                    if job.ready is not None and not job.ready.done():
                        job.ready.set_exception(error)
                        job.ready.exception()  # retrieved: its awaiters may be gone
                    for sink in job.sinks:
                        sink.fail(error)
                if loop.time() - started > self._max_interval:
                    delay = self._interval
                try:
                    await asyncio.sleep(delay)
                finally:
                    self._restarting = False
                delay = min(delay * 2, self._max_interval)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._unread:
                batch, self._unread = self._unread[:_BATCH], self._unread[_BATCH:]
                await self._first_look(batch)
                continue
            # Drop heap entries of jobs no longer watched or rescheduled since.
            while self._heap:
                _, version, job_id = self._heap[0]
                job = self._jobs.get(job_id)
                if job is not None and job.version == version:
                    break
                heapq.heappop(self._heap)
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            delay = self._heap[0][0] - loop.time()
            if delay > 0:
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                continue
            horizon = loop.time() + _COALESCE
            due_ids: list[str] = []
            while self._heap and self._heap[0][0] <= horizon:
                _, version, job_id = heapq.heappop(self._heap)
                job = self._jobs.get(job_id)
                if job is not None and job.version == version:
                    due_ids.append(job_id)
            for start in range(0, len(due_ids), _BATCH):
                await self._look(due_ids[start : start + _BATCH])

    async def _first_look(self, job_ids: list[str]) -> None:
        try:
            fingerprints = await self._fingerprints(job_ids)
        except Exception as exc:
            logger.debug("reading arq's records failed (%s); looking again later", exc)
            fingerprints = [None] * len(job_ids)
        for job_id, fingerprint in zip(job_ids, fingerprints, strict=True):
            job = self._jobs.get(job_id)
            if job is None:
                continue
            job.fingerprint = None if fingerprint is None else int(fingerprint)
            self._schedule(job_id, job, job.interval)
            if job.ready is not None and not job.ready.done():
                job.ready.set_result(None)

    async def _fingerprints(self, job_ids: Sequence[str]) -> list[Any]:
        keys: list[str] = [self._queue]
        for job_id in job_ids:
            keys += [
                result_key_prefix + job_id,
                in_progress_key_prefix + job_id,
                job_key_prefix + job_id,
                retry_key_prefix + job_id,
            ]
        result: list[Any] = await self._script(keys=keys, args=list(job_ids))
        return result

    async def _look(self, job_ids: Sequence[str]) -> None:
        try:
            fingerprints = await self._fingerprints(job_ids)
        except Exception as exc:
            # Redis is away: look again later, until the watchers waited long enough.
            logger.debug("reading arq's records failed (%s); looking again later", exc)
            now = asyncio.get_running_loop().time()
            if self._failing_since is None:
                self._failing_since = now
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is None:
                    continue
                waited = now - max(self._failing_since, job.since)
                if self._unreachable_timeout is None or waited < self._unreachable_timeout:
                    self._schedule(job_id, job, job.interval)
                    continue
                del self._jobs[job_id]
                error = RedisUnavailable(
                    f"cannot reach {self._where} for {self._unreachable_timeout:g}s "
                    f"to look at arq's records of job {job_id!r}: {exc}"
                )
                for sink in job.sinks:
                    sink.fail(error)
            return
        self._failing_since = None
        for job_id, fingerprint in zip(job_ids, fingerprints, strict=True):
            job = self._jobs.get(job_id)
            if job is None:
                continue
            if fingerprint != job.fingerprint:
                job.fingerprint = int(fingerprint)
                job.interval = self._interval
                for sink in list(job.sinks):
                    sink.request_resync()
            else:
                job.interval = min(job.interval * 1.5, self._max_interval)
            self._schedule(job_id, job, job.interval)

    async def aclose(self) -> None:
        """Stop looking, and return once the task has ended. Idempotent.

        Raises:
            asyncio.CancelledError: the caller was cancelled meanwhile; the task
                ends all the same, and every registration returns.
        """
        self._closed = True
        task, self._task = self._task, None
        try:
            if task is not None:
                await task.aclose()
        finally:
            for job in self._jobs.values():
                if job.ready is not None and not job.ready.done():
                    job.ready.set_result(None)
            self._jobs.clear()
            self._heap.clear()
            self._unread.clear()
