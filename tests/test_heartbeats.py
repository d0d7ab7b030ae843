"""Heartbeats on RedisPubSubStrategy: stalled after silence, seen by a watcher unpolled."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from immortus_async import JobState, JobStatus, JobUpdate, RedisPubSubStrategy

from .utils import SCALE, wait_until

S = JobStatus


async def started(strategy: RedisPubSubStrategy, job_id: str, attempt: int = 1) -> None:
    await strategy.apply(JobUpdate(job_id=job_id, status=S.STARTED, attempt=attempt))


async def test_heartbeat_only_for_the_running_attempt(redis: Redis) -> None:
    """A beat for a job not started at that attempt writes nothing."""
    strategy = RedisPubSubStrategy(redis)
    assert not await strategy.heartbeat("none", 1, stalled_after=1)
    await started(strategy, "j", attempt=2)
    assert not await strategy.heartbeat("j", 1, stalled_after=1)
    assert await strategy.heartbeat("j", 2, stalled_after=1)
    await strategy.apply(JobUpdate(job_id="j", status=S.FINISHED, attempt=2))
    assert not await strategy.heartbeat("j", 2, stalled_after=1)


async def test_silence_past_the_threshold_reads_stalled_until_the_next_beat(redis: Redis) -> None:
    """stalled after stalled_after s without a beat; a beat or a progress update clears it."""
    strategy = RedisPubSubStrategy(redis)
    await started(strategy, "s")
    assert not (await strategy.status("s")).stalled  # a job that never beat is not stalled
    await strategy.heartbeat("s", 1, stalled_after=0.1 * SCALE)
    assert not (await strategy.status("s")).stalled
    stalled = await wait_until(lambda: _stalled(strategy, "s"), message="stalled")
    assert stalled.status is S.STARTED
    await strategy.heartbeat("s", 1, stalled_after=0.1 * SCALE)
    assert not (await strategy.status("s")).stalled
    await wait_until(lambda: _stalled(strategy, "s"), message="stalled again")
    await strategy.apply(JobUpdate(job_id="s", status=S.STARTED, progress=0.5))
    assert not (await strategy.status("s")).stalled


async def _stalled(strategy: RedisPubSubStrategy, job_id: str) -> JobState | None:
    state = await strategy.status(job_id)
    return state if state.stalled else None


async def test_watcher_sees_stalled_at_the_deadline_without_polling(redis: Redis) -> None:
    """A watcher gets stalled=True once the beat is stale, after a handful of reads."""
    strategy = RedisPubSubStrategy(redis)
    stalled_after = 0.3 * SCALE
    await started(strategy, "w")
    await strategy.heartbeat("w", 1, stalled_after=stalled_after)
    beat_at = time.monotonic()
    await redis.config_resetstat()
    seen: list[JobState] = []

    async def watch() -> None:
        async for state in strategy.watch("w"):
            seen.append(state)

    watching = asyncio.create_task(watch())
    await wait_until(lambda: seen and seen[-1].stalled, message="a stalled state")
    assert stalled_after <= time.monotonic() - beat_at < stalled_after + 0.2 * SCALE
    stats = await redis.info("commandstats")
    assert stats["cmdstat_hmget"]["calls"] <= 3  # the snapshot and the deadline's read
    await strategy.heartbeat("w", 1, stalled_after=stalled_after)
    await wait_until(lambda: not seen[-1].stalled, timeout=5, message="stalled to clear")
    await strategy.apply(JobUpdate(job_id="w", status=S.FINISHED))
    await asyncio.wait_for(watching, 5 * SCALE)
    assert [s.stalled for s in seen] == [False, True, False, False]
    await strategy.aclose()


async def test_the_deadline_travels_with_started(redis: Redis) -> None:
    """A watcher learns the heartbeat's deadline from the started message: it reads
    nothing for a job that ends before it, and sees one that goes silent stalled."""
    writer, reader = RedisPubSubStrategy(redis), RedisPubSubStrategy(redis)
    for job_id in ("quick", "silent"):
        await writer.apply(JobUpdate(job_id=job_id, status=S.QUEUED, attempt=0))
    seen: list[JobState] = []

    async def follow() -> None:
        async for state in reader.watch("quick"):
            seen.append(state)

    following = asyncio.create_task(follow())
    await wait_until(lambda: seen, message="the watcher's snapshot")
    await redis.config_resetstat()  # what the watcher costs from here on
    started = JobUpdate(job_id="quick", status=S.STARTED, attempt=1)
    await writer.apply(started, stalled_after=600)
    await wait_until(lambda: seen[-1].status is S.STARTED, message="started pushed")
    # Long past the old first look for a heartbeat (50 ms after started): a second
    # of the record's TTL gone, read with TTL (a watcher's reads use PTTL).
    record, full = writer.keys.record("quick"), await redis.ttl(writer.keys.record("quick"))
    await wait_until(lambda: _ttl_below(redis, record, full), message="a second to pass")
    await writer.apply(JobUpdate(job_id="quick", status=S.FINISHED, attempt=1))
    await asyncio.wait_for(following, 10 * SCALE)
    stats = await redis.info("commandstats")
    # The writer's script runs HMGET inside Redis; only a read of ours sends PTTL.
    assert "cmdstat_pttl" not in stats, stats
    assert [state.status for state in seen] == [S.QUEUED, S.STARTED, S.FINISHED]

    silent = reader.watch("silent")
    assert (await anext(silent)).status is S.QUEUED
    await writer.apply(
        JobUpdate(job_id="silent", status=S.STARTED, attempt=1), stalled_after=0.2 * SCALE
    )
    assert (await anext(silent)).status is S.STARTED
    stalled = await asyncio.wait_for(anext(silent), 10 * SCALE)
    assert stalled.stalled and stalled.status is S.STARTED
    await silent.aclose()
    await reader.aclose()
    await writer.aclose()


async def _ttl_below(redis: Redis, key: str, ttl: int) -> bool:
    return bool(await redis.ttl(key) < ttl)
