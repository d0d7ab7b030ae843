"""One contract every state-keeping strategy honours, run against each of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from immortus_async import JobState, JobStatus, JobUpdate, MemoryStrategy, RedisPubSubStrategy

S = JobStatus


class StrategyContract:
    """Subclasses provide a ``strategy`` fixture; every test here runs against it."""

    async def test_unknown_until_written(self, strategy: Any) -> None:
        """A job never written reads unknown and is not completed."""
        state = await strategy.status("nobody")
        assert (state.status, state.seq, state.completed) == (S.UNKNOWN, 0, False)
        assert await strategy.completed("nobody") is False

    async def test_forward_only_and_seq(self, strategy: Any) -> None:
        """Backward updates are dropped; each accepted one bumps seq by one."""
        accepted = []
        for status, attempt in [
            (S.QUEUED, 0),
            (S.STARTED, 1),
            (S.QUEUED, 0),
            (S.FINISHED, 1),
            (S.STARTED, 1),
        ]:
            result = await strategy.apply(JobUpdate(job_id="f", status=status, attempt=attempt))
            accepted.append(None if result is None else result.seq)
        assert accepted == [1, 2, None, 3, None]
        assert await strategy.completed("f") is True

    async def test_meta_merges(self, strategy: Any) -> None:
        """meta() is the merge of every update's meta."""
        await strategy.apply(JobUpdate(job_id="m", status=S.STARTED, meta={"a": 1}))
        await strategy.apply(JobUpdate(job_id="m", status=S.STARTED, meta={"b": [1]}))
        assert await strategy.meta("m") == {"a": 1, "b": [1]}

    async def test_watch_follows_to_the_end(self, strategy: Any) -> None:
        """watch() yields the snapshot, each change in order, and stops at the end."""
        await strategy.apply(JobUpdate(job_id="w", status=S.QUEUED, attempt=0))
        states: list[JobState] = []
        got_first = asyncio.Event()

        async def follow() -> None:
            async for state in strategy.watch("w"):
                states.append(state)
                got_first.set()

        task = asyncio.create_task(follow())
        await asyncio.wait_for(got_first.wait(), 10)
        for i in range(1, 11):
            await strategy.apply(JobUpdate(job_id="w", status=S.STARTED, progress=i / 10))
        await strategy.apply(JobUpdate(job_id="w", status=S.FAILED, error="x"))
        await asyncio.wait_for(task, 10)
        assert [s.seq for s in states] == list(range(1, 13))
        assert states[-1].status is S.FAILED and states[-1].error == "x"


class TestMemoryStrategy(StrategyContract):
    @pytest.fixture
    def strategy(self) -> MemoryStrategy:
        return MemoryStrategy()


class TestRedisPubSubStrategy(StrategyContract):
    @pytest.fixture
    async def strategy(self, redis: Redis) -> AsyncIterator[RedisPubSubStrategy]:
        strategy = RedisPubSubStrategy(redis)
        yield strategy
        await strategy.aclose()
