"""ArqStrategy on jobs nobody decorated: arq's records only, pushed or polled."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
import sys
import types
from collections.abc import Iterator
from typing import Any

from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from arq.jobs import serialize_result
from redis.asyncio import Redis

from immortus_async import (
    ArqStrategy,
    JobNotFound,
    JobState,
    JobStatus,
    RedisPubSubStrategy,
    RedisServer,
    Tracker,
)

from .utils import SCALE, run_worker, wait_until

S = JobStatus


async def gated(ctx: dict[str, Any]) -> str:
    await ctx["gate"].wait()
    return "done"


async def broken(ctx: dict[str, Any]) -> None:
    raise ValueError("boom")


@pytest.fixture(params=[False, True], ids=["polling", "keyspace-events"])
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The test's Redis, without and with keyspace notifications."""
    args = ("--notify-keyspace-events", "KEA") if request.param else ()
    with RedisServer(args=args) as server:
        yield server


@pytest.fixture
def pushed(redis_server: RedisServer) -> bool:
    """Whether the server publishes keyspace events."""
    return bool(redis_server.args)


async def test_plain_job_reads_queued_started_finished(pool: ArqRedis, pushed: bool) -> None:
    """A job enqueued with plain enqueue_job: queued, started, finished, as it happens."""
    # With events on, a minute between polls proves that the changes are pushed.
    strategy = ArqStrategy(pool, poll_interval=60 if pushed else 0.1)
    job = await pool.enqueue_job("gated")
    assert job is not None
    queued = await strategy.status(job.job_id)
    assert (queued.status, queued.attempt, queued.function) == (S.QUEUED, 0, "gated")
    assert queued.enqueued_at is not None and not await strategy.completed(job.job_id)
    seen: list[JobState] = []

    async def watch() -> None:
        async for state in strategy.watch(job.job_id):
            seen.append(state)

    watching = asyncio.create_task(watch())
    await wait_until(lambda: seen, message="the first state")
    gate = asyncio.Event()
    worker = asyncio.create_task(run_worker(pool, [gated], ctx={"gate": gate}))
    await wait_until(lambda: seen[-1].status is S.STARTED, message="started")
    assert await strategy.notifications_enabled() is pushed
    gate.set()
    await worker
    await asyncio.wait_for(watching, 10 * SCALE)
    assert [(s.status, s.attempt) for s in seen] == [(S.QUEUED, 0), (S.STARTED, 1), (S.FINISHED, 1)]
    assert [s.seq for s in seen] == sorted(s.seq for s in seen)
    final = await strategy.status(job.job_id)
    assert (final.status, final.progress, final.error) == (S.FINISHED, 1.0, None)
    assert final.started_at is not None and final.finished_at is not None
    assert await strategy.completed(job.job_id) and await strategy.meta(job.job_id) == {}
    await strategy.aclose()


async def test_failed_result_reads_failed_not_complete(pool: ArqRedis) -> None:
    """arq calls a failed job "complete"; the strategy says failed, with the error."""
    strategy = ArqStrategy(pool)
    job = await pool.enqueue_job("broken")
    assert job is not None
    await run_worker(pool, [broken])
    state = await strategy.status(job.job_id)
    assert (state.status, state.error, state.attempt) == (S.FAILED, "ValueError: boom", 1)
    assert state.completed


async def test_unknown_job_is_unknown_never_completed(pool: ArqRedis) -> None:
    """A job arq has no record of is unknown, not completed; a Tracker says JobNotFound."""
    strategy = ArqStrategy(pool)
    state = await strategy.status("never-enqueued")
    assert (state.status, state.seq) == (S.UNKNOWN, 0)
    assert not await strategy.completed("never-enqueued")
    async with Tracker(pool, tracking_strategy="arq") as tracker:
        assert isinstance(tracker.strategy(), ArqStrategy)
        with pytest.raises(JobNotFound):
            await tracker.completed("never-enqueued", timeout=5)


async def test_redis_pub_sub_answers_for_a_plain_job_from_arq(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """The default strategy wakes a waiter on a job that has no record of ours."""
    assert isinstance(tracker.strategy(), RedisPubSubStrategy)
    job = await pool.enqueue_job("broken")
    assert job is not None
    assert (await tracker.status(job.job_id)).status is S.QUEUED
    waiter = asyncio.create_task(tracker.completed(job.job_id, timeout=10 * SCALE))
    await run_worker(pool, [broken])
    state = await waiter
    assert (state.status, state.error, state.function) == (S.FAILED, "ValueError: boom", "broken")


async def test_exception_class_the_reader_cannot_import(redis: Redis) -> None:
    """A result whose exception class only the worker has still reads "Class: message"."""
    module = types.ModuleType("worker_only_errors")

    class LostRow(Exception):
        pass

    LostRow.__module__, LostRow.__qualname__ = module.__name__, "LostRow"
    module.LostRow = LostRow  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        raw = serialize_result("f", (), {}, 2, 0, False, LostRow("row 7"), 0, 0, "r", "q", "x")
    finally:
        del sys.modules[module.__name__]
    assert raw is not None
    await redis.set(result_key_prefix + "x", raw)
    state = await ArqStrategy(redis).status("x")
    assert (state.status, state.error, state.attempt) == (S.FAILED, "LostRow: row 7", 2)


async def test_bad_arguments_are_refused() -> None:
    """A decoding client or a non-positive interval is refused with a clear message."""
    with pytest.raises(ValueError, match="decode_responses=False"):
        ArqStrategy(Redis(decode_responses=True))
    with pytest.raises(ValueError, match="poll_interval"):
        ArqStrategy(Redis(), poll_interval=0)


async def test_many_watchers_starting_at_once_ask_redis_about_keyspace_events_once(
    redis: Redis,
) -> None:
    """Concurrent first calls of notifications_enabled() share one CONFIG GET."""
    strategy = ArqStrategy(redis)
    await redis.config_resetstat()
    answers = await asyncio.gather(*(strategy.notifications_enabled() for _ in range(50)))
    assert len(set(answers)) == 1
    stats = await redis.info("commandstats")
    assert stats["cmdstat_config|get"]["calls"] == 1
