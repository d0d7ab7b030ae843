"""The job side under real faults: a frozen Redis (SIGSTOP), a worker closing while a
tracking write is pending, and the options that bound both."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.worker import func
from redis.asyncio import Redis

from immortus_async import (
    JobStatus,
    RedisPubSubStrategy,
    RedisServer,
    Tracker,
    track_worker,
    tracked,
)

from .test_arq import Watcher, enqueue
from .utils import SCALE, run_worker, wait_until

S = JobStatus
# arq 0.28's Worker.close() calls redis-py's close(), deprecated since 5.0.1.
closes_arq_worker = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")


async def _frozen_body(ctx: dict[str, Any]) -> str:
    await ctx["immortus"].update(progress=0.5, step="frozen")
    ctx["returned"].set()
    return "ok"


@tracked(heartbeat_interval=0.2)
async def frozen_tracked(ctx: dict[str, Any]) -> str:
    return await _frozen_body(ctx)


async def frozen_plain(ctx: dict[str, Any]) -> str:
    return await _frozen_body(ctx)


async def quick(ctx: dict[str, Any]) -> str:
    return "quick"


def job_side_tasks() -> list[asyncio.Task[Any]]:
    """The tasks of the job side still running (redeliveries, settles, heartbeats)."""
    running = []
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if not task.done() and frame is not None:
            if frame.f_globals.get("__name__") == "immortus_async.jobside":
                running.append(task)
    return running


def with_tracked(freeze: Callable[..., Any]) -> dict[str, Any]:
    return {"functions": [func(frozen_tracked, timeout=2 * SCALE)], "on_job_start": freeze}


def with_track_worker(freeze: Callable[..., Any]) -> dict[str, Any]:
    settings = {"functions": [func(frozen_plain, timeout=2 * SCALE)], "on_job_start": freeze}
    return track_worker(settings, heartbeat_interval=0.2)


@pytest.mark.parametrize(
    ("function", "settings"),
    [("frozen_tracked", with_tracked), ("frozen_plain", with_track_worker)],
    ids=["tracked", "track_worker"],
)
async def test_jobs_finish_while_redis_is_frozen_past_their_timeout(
    redis_server: RedisServer,
    redis: Redis,
    pool: ArqRedis,
    caplog: pytest.LogCaptureFixture,
    function: str,
    settings: Callable[[Callable[..., Any]], dict[str, Any]],
) -> None:
    """Redis SIGSTOPped as the job starts: the job returns within its 2 s timeout."""
    caplog.set_level(logging.WARNING, logger="immortus_async.jobside")
    pid = redis_server.pid
    assert pid is not None

    async def freeze(ctx: dict[str, Any]) -> None:
        os.kill(pid, signal.SIGSTOP)

    # Our records only (no arq fallback): what the waiter gets is what the job wrote.
    strategy = RedisPubSubStrategy(redis)
    async with Tracker(redis, tracking_strategy=strategy) as tracker:
        job = await enqueue(tracker, pool, function)
        watcher = await Watcher(tracker, job.job_id).subscribed()
        gates = {"returned": asyncio.Event()}
        worker = asyncio.create_task(run_worker(pool, ctx=gates, **settings(freeze)))
        try:
            # Past the job's timeout: a job still held by tracking would have failed then.
            await asyncio.wait_for(gates["returned"].wait(), 2.5 * SCALE)
        finally:
            os.kill(pid, signal.SIGCONT)
        await worker
        assert await job.result(timeout=5) == "ok"
        states = await watcher.finished()
    assert all(s.status is not S.FAILED for s in states)
    final = states[-1]
    assert (final.status, final.progress, final.meta) == (S.FINISHED, 1.0, {"step": "frozen"})
    assert any("did not answer within 1s" in r.getMessage() for r in caplog.records)
    await wait_until(lambda: not job_side_tasks(), message="the redelivery to end")


@closes_arq_worker
async def test_worker_close_awaits_a_pending_write(pool: ArqRedis) -> None:
    """close() waits for a write Redis refused, until Redis is back; no task outlives it."""
    with RedisServer() as tracking:
        strategy = RedisPubSubStrategy(tracking.url)
        settings = track_worker({"functions": [quick]}, strategy=strategy, shutdown_grace=30)
        tracking.stop(kill=True)
        job = await pool.enqueue_job("quick")
        assert job is not None
        worker = await run_worker(pool, **settings)
        assert await job.result(timeout=5) == "quick"
        closing = asyncio.create_task(worker.close())
        # arq deletes its health key just before it calls on_shutdown.
        await wait_until(
            lambda: _gone(pool, worker.health_check_key), message="close to reach on_shutdown"
        )
        assert not closing.done()
        tracking.start()
        await asyncio.wait_for(closing, 20 * SCALE)
        state = await strategy.status(job.job_id)
        await strategy.aclose()
    assert (state.status, state.function) == (S.FINISHED, "quick")
    assert job_side_tasks() == []


@closes_arq_worker
async def test_worker_close_gives_up_a_write_after_the_grace(
    pool: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis still away, close() returns after shutdown_grace and logs the lost write."""
    with RedisServer() as tracking:
        strategy = RedisPubSubStrategy(tracking.url)
        settings = track_worker({"functions": [quick]}, strategy=strategy, shutdown_grace=0.2)
        tracking.stop(kill=True)
        job = await pool.enqueue_job("quick")
        assert job is not None
        worker = await run_worker(pool, **settings)
        await asyncio.wait_for(worker.close(), 10 * SCALE)
        await strategy.aclose()
    assert job_side_tasks() == []
    lost = [r for r in caplog.records if "that state is lost" in r.getMessage()]
    assert len(lost) == 1 and job.job_id in lost[0].getMessage()


async def _gone(pool: ArqRedis, key: str) -> bool:
    return not await pool.exists(key)


@pytest.mark.parametrize(
    "options",
    [
        {"write_timeout": 0},
        {"write_timeout": float("inf")},
        {"write_timeout": float("nan")},
        {"shutdown_grace": -1},
        {"shutdown_grace": float("nan")},
    ],
)
def test_deadlines_are_checked(options: dict[str, float]) -> None:
    """A write deadline must be positive and finite, a grace finite and not negative."""
    with pytest.raises(ValueError, match=next(iter(options))):
        track_worker(**options)
    if "write_timeout" in options:
        with pytest.raises(ValueError, match="write_timeout"):
            tracked(write_timeout=options["write_timeout"])
