"""The strategy's pipelined writes (ScriptPipe) against a real Redis and real faults:
concurrent writes in order, a flushed script cache, a killed connection, a frozen Redis."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from redis.asyncio import Redis

from immortus_async import JobStatus, JobUpdate, RedisPubSubStrategy, RedisServer

S = JobStatus


def update(job_id: str, status: JobStatus, **fields: object) -> JobUpdate:
    return JobUpdate(job_id=job_id, status=status, attempt=1, **fields)  # type: ignore[arg-type]


async def test_concurrent_writes_land_in_the_order_each_job_made_them(redis: Redis) -> None:
    """Writes of 50 jobs made at once share round trips; each job's stay in its order."""
    strategy = RedisPubSubStrategy(redis)
    jobs = [f"job-{i}" for i in range(50)]

    async def lifecycle(job_id: str) -> None:
        await strategy.apply(update(job_id, S.STARTED))
        for step in range(1, 5):
            await strategy.apply(update(job_id, S.STARTED, progress=step / 10, meta={"n": step}))
        await strategy.apply(update(job_id, S.FINISHED))

    await asyncio.gather(*(lifecycle(job_id) for job_id in jobs))
    states = [await strategy.status(job_id) for job_id in jobs]
    await strategy.aclose()
    assert {(s.status, s.seq, s.meta["n"]) for s in states} == {(S.FINISHED, 6, 4)}


async def test_a_flushed_script_cache_is_answered_by_sending_the_script(redis: Redis) -> None:
    """NOSCRIPT (a restarted or flushed Redis) costs a write nothing but a round trip."""
    strategy = RedisPubSubStrategy(redis)
    await strategy.apply(update("a", S.STARTED))
    await redis.script_flush()
    applied = await asyncio.gather(
        strategy.apply(update("a", S.FINISHED)), strategy.heartbeat("b", 1, stalled_after=5)
    )
    state = await strategy.status("a")
    await strategy.aclose()
    assert applied[0] is not None and state.status is S.FINISHED


async def test_a_killed_connection_is_replaced_and_the_write_sent_again(
    redis_server: RedisServer, redis: Redis
) -> None:
    """CLIENT KILL of the writes' connection: the next write opens another and lands."""
    strategy = RedisPubSubStrategy(redis_server.url)
    await strategy.apply(update("a", S.STARTED))
    assert await redis.client_kill_filter(_type="normal", skipme=True) >= 1
    assert await strategy.apply(update("a", S.FINISHED)) is not None
    state = await strategy.status("a")
    await strategy.aclose()
    assert state.status is S.FINISHED


@pytest.mark.timeout(30)
async def test_a_write_past_its_deadline_costs_the_connection_not_the_next_write() -> None:
    """Redis frozen: a write given up at its deadline fails the ones sent with it (as
    TimeoutError, for their callers to redeliver); once Redis is back, writes land."""
    with RedisServer() as server:
        assert server.pid is not None
        strategy = RedisPubSubStrategy(server.url)
        await strategy.apply(update("a", S.STARTED))
        os.kill(server.pid, signal.SIGSTOP)
        try:
            other = asyncio.ensure_future(strategy.apply(update("b", S.STARTED)))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await strategy.apply(update("a", S.STARTED, progress=0.5))
            with pytest.raises(TimeoutError):
                await other
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert await strategy.apply(update("a", S.FINISHED)) is not None
        state = await strategy.status("a")
        await strategy.aclose()
    assert state.status is S.FINISHED


async def test_a_write_made_now_leaves_with_those_queued_before_it_in_order(
    redis: Redis,
) -> None:
    """call(now=True) writes at once, not a turn of the loop later, and what was queued
    before it goes first: the job's writes land in the order they were made."""
    strategy = RedisPubSubStrategy(redis)
    await strategy.apply(update("warm", S.STARTED))  # the writes' connection is open
    pipe = strategy._pipe
    assert pipe is not None
    queued = pipe.call(strategy._script, *strategy._call(update("a", S.STARTED), None))
    now = pipe.call(strategy._script, *strategy._call(update("a", S.FINISHED), None), now=True)
    assert not pipe._queue
    replies = [await queued, await now]
    state = await strategy.status("a")
    await strategy.aclose()
    assert all(replies) and (state.status, state.seq) == (S.FINISHED, 2)
