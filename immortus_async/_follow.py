"""The waiting loop every push strategy shares: subscribe, snapshot, newer seq only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import TypeVar

from ._buffer import RESYNC, StateBuffer, _Resync
from ._redis import REFUSED, UNREACHABLE
from .exceptions import JobLost, RedisUnavailable
from .state import JobState
from .status import JobStatus

__all__ = ["follow", "history_lost", "poll", "retrying"]

logger = logging.getLogger("immortus_async.tracker")

_T = TypeVar("_T")


async def retrying(
    read: Callable[[], Awaitable[_T]],
    job_id: str,
    *,
    unreachable_timeout: float | None,
    where: str = "Redis",
) -> _T:
    """Read a snapshot, waiting out a Redis outage (the caller's timeout still applies).

    Raises:
        RedisUnavailable: Redis could not be reached, or did not answer, for
            ``unreachable_timeout`` seconds (None: never raised, the outage is
            waited out).
        redis.exceptions.AuthenticationError, NoPermissionError: at once, when
            Redis refuses (see :data:`~immortus_async._redis.REFUSED`).
    """
    loop = asyncio.get_running_loop()
    give_up_at = None if unreachable_timeout is None else loop.time() + unreachable_timeout
    delay = 0.05
    # What Redis last did wrong: the deadline's own TimeoutError says nothing of it.
    cause: BaseException | None = None
    task = asyncio.current_task()
    while True:
        try:
            # A server that stops answering (SIGSTOP) raises nothing: the deadline
            # bounds a read that hangs as well as one that fails.
            async with asyncio.timeout_at(give_up_at):
                asked = 0 if task is None else task.cancelling()
                value = await read()
                if task is not None and task.cancelling() > asked:
                    # Python 3.11's asyncio.wait_for, which redis-py sends through
                    # when a client has a socket_timeout (redis-py 8: always),
                    # returns the reply of a command that completes as the cancel
                    # arrives, and the cancel is lost: raised here, or the caller's
                    # waiter would wait on for ever (and the deadline would not end).
                    raise asyncio.CancelledError
                return value
        except REFUSED:
            raise
        except UNREACHABLE as exc:
            left = None if give_up_at is None else give_up_at - loop.time()
            if left is not None and left <= 0:
                cause = cause if isinstance(exc, TimeoutError) and cause is not None else exc
                raise RedisUnavailable(
                    f"cannot reach {where} for {unreachable_timeout:g}s to read job "
                    f"{job_id!r}: {str(cause) or type(cause).__name__}"
                ) from cause
            cause = exc
            logger.info("reading job %s failed (%s); retrying in %.2fs", job_id, exc, delay)
            await asyncio.sleep(delay if left is None else min(delay, left))
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
    unreachable_timeout: float | None = None,
    where: str = "Redis",
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

    A read that cannot reach Redis is retried for ``unreachable_timeout`` seconds
    (None: for ever), then raises :class:`RedisUnavailable` naming ``where``.

    Raises:
        JobLost: a re-read found no record of a job whose states were seen (Redis
            lost its data): its end will never come.
        RedisUnavailable: see above.
    """

    async def read_now() -> JobState:
        return await retrying(read, job_id, unreachable_timeout=unreachable_timeout, where=where)

    async with subscription:
        state = await read_now()
        buffer.seen(state)
        yield state
        while not state.completed:
            item = await _next(buffer, recheck(state) if recheck is not None else None)
            if item is RESYNC:
                fresh = await read_now()
                if history_lost(state, fresh):
                    if fresh.status is JobStatus.UNKNOWN:
                        # Redis lost the record and nothing has written it since:
                        # the end may never come (its worker's writes may have gone
                        # with the data), so the loss is the answer, not a wait.
                        raise JobLost(job_id)
                    # Redis lost the record (a restart without persistence), and it
                    # is written anew: from now on seq counts from 1 again.
                    buffer.seen(fresh, reset=True)
                elif fresh.seq > state.seq or fresh.stalled != state.stalled:
                    # Changes pushed while the snapshot was read and older than it
                    # come first: a recheck must not skip a change it raced with.
                    for older in buffer.pop_older(fresh.seq):
                        if older.seq > state.seq:
                            state = older
                            yield state
                    buffer.seen(fresh)
                else:
                    continue
                item = fresh
            assert isinstance(item, JobState)
            state = item
            yield state


def history_lost(known: JobState, fresh: JobState) -> bool:
    """Whether ``fresh``, read again, starts a new history of the job that ``known``
    was seen in: Redis lost the record (a restart without persistence) and the job
    was written anew, so its seq counts from 1 again."""
    return fresh.seq < known.seq or (fresh.seq == known.seq and fresh.status != known.status)


async def poll(
    job_id: str,
    read: Callable[[], Awaitable[JobState]],
    *,
    min_interval: float = 0.01,
    max_interval: float = 1.0,
    unreachable_timeout: float | None = None,
) -> AsyncIterator[JobState]:
    """Follow a job by reading it again and again, for strategies that cannot push.

    The interval starts at ``min_interval`` and grows by half each quiet read up to
    ``max_interval``; a change resets it. Each change is yielded with ``seq`` bumped
    by one when the strategy does not count ``seq`` itself. Redis outages: as in
    :func:`follow`.
    """

    async def read_now() -> JobState:
        return await retrying(read, job_id, unreachable_timeout=unreachable_timeout)

    state = await read_now()
    yield state
    interval = min_interval
    while not state.completed:
        await asyncio.sleep(interval)
        fresh = await read_now()
        if fresh.to_dict() | {"seq": 0} == state.to_dict() | {"seq": 0}:
            interval = min(interval * 1.5, max_interval)
            continue
        if fresh.seq <= state.seq:
            fresh = replace(fresh, seq=state.seq + 1)
        state = fresh
        interval = min_interval
        yield state
