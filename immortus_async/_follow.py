"""The waiting loop every push strategy shares: subscribe, snapshot, newer seq only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

from ._buffer import RESYNC, StateBuffer, _Resync
from ._redis import UNREACHABLE
from .state import JobState
from .status import JobStatus

__all__ = ["follow", "poll"]

logger = logging.getLogger("immortus_async.tracker")


async def _retrying(read: Callable[[], Awaitable[JobState]], job_id: str) -> JobState:
    """Read a snapshot, waiting out a Redis outage (the caller's timeout still applies)."""
    delay = 0.05
    while True:
        try:
            return await read()
        except UNREACHABLE as exc:
            logger.info("reading job %s failed (%s); retrying in %.2fs", job_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _next(buffer: StateBuffer, timeout: float | None) -> JobState | _Resync:
    """The buffer's next item, or :data:`RESYNC` once ``timeout`` seconds pass."""
    if timeout is None:
        return await buffer.get()
    deadline = asyncio.timeout(max(timeout, 0.0))
    try:
        async with deadline:
            return await buffer.get()
    except TimeoutError:
        if deadline.expired():
            return RESYNC
        raise


async def follow(
    job_id: str,
    subscription: AbstractAsyncContextManager[None],
    buffer: StateBuffer,
    read: Callable[[], Awaitable[JobState]],
    *,
    recheck: Callable[[JobState], float | None] | None = None,
) -> AsyncIterator[JobState]:
    """Yield the job's current state, then every newer one, until a terminal one.

    ``subscription`` must feed ``buffer`` with every state published for the job and
    return from ``__aenter__`` only once it is live: the snapshot is read after it,
    so a change made in between arrives as a message and none is lost. States not
    newer than the one last yielded are skipped.

    ``recheck``, given the current state before each wait, returns the seconds
    after which the job is read again though nothing was pushed (None: wait for a
    push): for what no message announces, such as a heartbeat going stale or a
    queue that cannot push.
    """
    async with subscription:
        state = await _retrying(read, job_id)
        buffer.seen(state)
        yield state
        while not state.completed:
            item = await _next(buffer, recheck(state) if recheck is not None else None)
            if item is RESYNC:
                fresh = await _retrying(read, job_id)
                if _history_lost(state, fresh):
                    # Redis lost the record (a restart without persistence): what
                    # is written from now on counts from seq 1 again.
                    buffer.seen(fresh, reset=True)
                    if fresh.status is JobStatus.UNKNOWN:
                        continue
                elif fresh.seq > state.seq or fresh.stalled != state.stalled:
                    buffer.seen(fresh)
                else:
                    continue
                item = fresh
            assert isinstance(item, JobState)
            state = item
            yield state


def _history_lost(known: JobState, fresh: JobState) -> bool:
    return fresh.seq < known.seq or (fresh.seq == known.seq and fresh.status != known.status)


async def poll(
    job_id: str,
    read: Callable[[], Awaitable[JobState]],
    *,
    min_interval: float = 0.01,
    max_interval: float = 1.0,
) -> AsyncIterator[JobState]:
    """Follow a job by reading it again and again, for strategies that cannot push.

    The interval starts at ``min_interval`` and grows by half each quiet read up to
    ``max_interval``; a change resets it. Each change is yielded with ``seq`` bumped
    by one when the strategy does not count ``seq`` itself.
    """
    state = await _retrying(read, job_id)
    yield state
    interval = min_interval
    while not state.completed:
        await asyncio.sleep(interval)
        fresh = await _retrying(read, job_id)
        if fresh.to_dict() | {"seq": 0} == state.to_dict() | {"seq": 0}:
            interval = min(interval * 1.5, max_interval)
            continue
        if fresh.seq <= state.seq:
            fresh = replace(fresh, seq=state.seq + 1)
        state = fresh
        interval = min_interval
        yield state
