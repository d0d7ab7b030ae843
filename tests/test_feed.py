"""Owner feeds against a real Redis and a real arq worker: snapshot, changes, isolation."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# The feed's enqueues are arq's here; the contract suite runs every adapter's.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis

from immortus_async import (
    JobState,
    JobStatus,
    JobUpdate,
    Keys,
    RedisPubSubStrategy,
    Tracker,
    tracked,
)
from immortus_async._feed import OWNER_SNAPSHOT_LIMIT
from immortus_async.embedded import RedisServer

from .utils import SCALE, run_worker, wait_until

S = JobStatus


@tracked
async def double(ctx: dict[str, Any], n: int) -> int:
    await ctx["immortus"].update(progress=0.5)
    return 2 * n


class Feed:
    """An owner's feed read by a task of its own, each state kept as it comes."""

    def __init__(self, states: AsyncIterator[JobState]) -> None:
        self.states = states
        self.seen: list[JobState] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for state in self.states:
            async with self._changed:
                self.seen.append(state)
                self._changed.notify_all()

    async def until(self, job_id: str, status: JobStatus) -> JobState:
        async with asyncio.timeout(10 * SCALE), self._changed:
            while True:
                for state in self.seen:
                    if state.job_id == job_id and state.status is status:
                        return state
                await self._changed.wait()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.states.aclose()  # type: ignore[attr-defined]


async def test_a_feed_gets_each_job_of_its_owner_as_it_is_queued_changes_and_ends(
    tracker: Tracker, pool: ArqRedis
) -> None:
    """A feed opened before the enqueue sees the job queued, then finished."""
    feed = Feed(tracker.watch_owner("ada"))
    try:
        job = await tracker.enqueue(pool, "double", 21, owner="ada")
        await feed.until(job.job_id, S.QUEUED)
        await run_worker(pool, [double])
        end = await feed.until(job.job_id, S.FINISHED)
        assert end.completed and end.progress == 1
    finally:
        await feed.close()


async def test_the_snapshot_lists_the_owners_jobs_and_never_anothers(
    tracker: Tracker, pool: ArqRedis
) -> None:
    """A feed opened later starts with its owner's jobs, oldest first, and no one else's."""
    ada = [await tracker.enqueue(pool, "double", n, owner="ada") for n in range(3)]
    bob = await tracker.enqueue(pool, "double", 9, owner="bob")
    # The same id again for another owner: the job keeps its first owner.
    await tracker._queued(ada[0].job_id, "double", owner="bob")
    feed = Feed(tracker.watch_owner("bob"))
    try:
        await feed.until(bob.job_id, S.QUEUED)
        await run_worker(pool, [double])
        await feed.until(bob.job_id, S.FINISHED)
        assert {state.job_id for state in feed.seen} == {bob.job_id}
    finally:
        await feed.close()
    feed = Feed(tracker.watch_owner("ada"))
    try:
        for job in ada:
            await feed.until(job.job_id, S.FINISHED)
        assert [state.job_id for state in feed.seen] == [job.job_id for job in ada]
    finally:
        await feed.close()


async def test_a_job_whose_worker_wrote_first_still_joins_its_owner(tracker: Tracker) -> None:
    """The queued write comes after the worker's end: the feed still gets the job."""
    strategy = tracker.strategy()
    assert isinstance(strategy, RedisPubSubStrategy)
    feed = Feed(tracker.watch_owner("ada"))
    try:
        await strategy.apply(JobUpdate(job_id="early", status=S.STARTED))
        await strategy.apply(JobUpdate(job_id="early", status=S.FINISHED))
        await tracker._queued("early", None, owner="ada")
        assert (await feed.until("early", S.FINISHED)).seq == 2
    finally:
        await feed.close()


async def test_a_resync_yields_only_what_changed_meanwhile(tracker: Tracker, redis: Redis) -> None:
    """CLIENT KILL of the feed's connection: the snapshot read after the resubscription
    repeats no state the feed gave, an end least of all; what changed comes once."""
    strategy = tracker.strategy()
    assert isinstance(strategy, RedisPubSubStrategy)
    for job_id in ("ended", "running"):
        await tracker._queued(job_id, None, owner="ada")
    await strategy.apply(JobUpdate(job_id="ended", status=S.FINISHED))
    feed = Feed(tracker.watch_owner("ada"))
    try:
        await feed.until("running", S.QUEUED)
        await redis.client_kill_filter(_type="pubsub")
        # The old connection is gone (CLIENT KILL frees it before answering): a
        # subscriber again is the new one, whose confirmation asks for the resync
        # before the hub reads anything published after it.
        await wait_until(lambda: _owner_subscribed(redis, "ada"), message="the resubscription")
        await strategy.apply(JobUpdate(job_id="running", status=S.STARTED))
        await strategy.apply(JobUpdate(job_id="running", status=S.FINISHED))
        await feed.until("running", S.FINISHED)
        assert [(s.job_id, s.seq) for s in feed.seen if s.job_id == "ended"] == [("ended", 2)]
        seqs = [s.seq for s in feed.seen if s.job_id == "running"]
        assert seqs == sorted(set(seqs)) and seqs[0] == 1, seqs
    finally:
        await feed.close()


async def test_a_job_written_anew_after_a_restart_without_data_is_yielded_again(
    tracker: Tracker, redis_server: RedisServer
) -> None:
    """Redis restarted empty: the resync finds the job again with seq from 1, a new
    history that the feed gives from its start, its end included."""
    # The job side, on a client of its own: from a URL, it retries a stale socket.
    writer = RedisPubSubStrategy(redis_server.url)
    queued = JobUpdate(job_id="again", status=S.QUEUED, attempt=0)
    await writer.apply(queued, owner="ada")
    await writer.apply(JobUpdate(job_id="again", status=S.STARTED))
    feed = Feed(tracker.watch_owner("ada"))
    try:
        await feed.until("again", S.STARTED)
        redis_server.restart()
        await writer.apply(queued, owner="ada")
        await writer.apply(JobUpdate(job_id="again", status=S.FINISHED))
        assert (await feed.until("again", S.FINISHED)).seq == 2
    finally:
        await feed.close()
        await writer.aclose()


async def _owner_subscribed(redis: Redis, owner: str) -> bool:
    [(_, count)] = await redis.pubsub_numsub(Keys().owner_channel(owner))
    return bool(count)


async def test_the_snapshot_is_capped_to_the_newest_jobs(tracker: Tracker) -> None:
    """An owner with more jobs than the cap gets the newest in the snapshot."""
    for n in range(OWNER_SNAPSHOT_LIMIT + 5):
        await tracker._queued(f"job-{n}", None, owner="ada")
    strategy = tracker.strategy()
    assert isinstance(strategy, RedisPubSubStrategy)
    jobs = await strategy._owner_jobs("ada")
    assert [state.job_id for state in jobs] == [
        f"job-{n}" for n in range(5, OWNER_SNAPSHOT_LIMIT + 5)
    ]


async def test_an_owner_is_a_non_empty_string(tracker: Tracker, pool: ArqRedis) -> None:
    """A bad owner is refused before anything is enqueued."""
    with pytest.raises(ValueError, match="owner must be a non-empty string"):
        await tracker.enqueue(pool, "double", 1, owner="")
    assert await pool.queued_jobs() == []


async def test_a_jobs_owner_is_what_its_enqueue_said(tracker: Tracker, pool: ArqRedis) -> None:
    """Tracker.owner answers the owner of an enqueue; None for a job without one."""
    mine = await tracker.enqueue(pool, "double", 1, owner="ada")
    nobodys = await tracker.enqueue(pool, "double", 2)
    assert await tracker.owner(mine.job_id) == "ada"
    assert await tracker.owner(nobodys.job_id) is None
    assert await tracker.owner("never-seen") is None


async def test_a_feed_buffer_full_of_jobs_asks_for_the_snapshot_again() -> None:
    """One job more than the buffer holds drops what waits for a resync."""
    from immortus_async._buffer import RESYNC
    from immortus_async._feed import FeedBuffer, Reread

    buffer = FeedBuffer(max_jobs=2)
    buffer.push(JobState(job_id="a", status=S.QUEUED, seq=1))
    buffer.push(Reread("a"))  # a state waits: no read needed
    buffer.push(JobState(job_id="b", status=S.QUEUED, seq=1))
    assert isinstance(await buffer.get(), JobState)
    buffer.push(JobState(job_id="c", status=S.QUEUED, seq=1))
    buffer.push(JobState(job_id="d", status=S.QUEUED, seq=1))
    assert (await buffer.get(), buffer.resyncs) == (RESYNC, 1)
    buffer.push(JobState(job_id="e", status=S.QUEUED, seq=1))
    assert (await buffer.get()).job_id == "e"  # type: ignore[union-attr]
