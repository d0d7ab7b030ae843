"""The arq side of the benchmarks: job functions, a worker, and waiters, as child roles.

Every job returns ``time.monotonic()`` taken on its last line; it is read back from
arq's result afterwards, so recording it adds nothing to the path being measured.
CLOCK_MONOTONIC is one clock for every process on the machine.

Roles:

- ``worker``: a real arq worker (``burst=True``) over ``plain`` and ``tracked_job``;
  says ``started`` and, once the queue is empty and every job has ended, ``done``.
- ``waiters``: waits for every job of ``config["jobs"]`` at once, the way
  ``config["method"]`` says (``tracker``: ``Tracker.completed()``; ``arq``:
  ``Job.result(poll_delay=...)``), says ``subscribed`` once every waiter is in place
  and ``done`` with the time each one woke.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import psutil
from _common import Child, child_main, cpu_seconds, say
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.jobs import Job
from arq.worker import Worker

from immortus_async import Tracker, tracked


async def plain(ctx: dict[str, Any], pause: float = 0.0) -> float:
    """An untracked job: sleeps ``pause`` seconds, returns its last line's time."""
    if pause:
        await asyncio.sleep(pause)
    return time.monotonic()


@tracked
async def tracked_job(ctx: dict[str, Any], pause: float = 0.0) -> float:
    """The same job, tracked."""
    if pause:
        await asyncio.sleep(pause)
    return time.monotonic()


FUNCTIONS = [plain, tracked_job]


def settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


async def worker(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """Run every queued job, then exit."""
    arq_worker = Worker(
        functions=FUNCTIONS,  # type: ignore[arg-type]
        redis_settings=settings(config["redis"]),
        burst=True,
        handle_signals=False,
        max_jobs=config.get("max_jobs", 10),
        poll_delay=config.get("poll_delay", 0.5),
        keep_result=3600,
    )
    say("started")
    began = time.monotonic()
    try:
        await arq_worker.main()
    finally:
        await arq_worker.close()
    say(
        "done",
        seconds=time.monotonic() - began,
        complete=arq_worker.jobs_complete,
        failed=arq_worker.jobs_failed,
    )


async def waiters(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """Wait for every job at once; report when each waiter woke."""
    jobs: list[str] = config["jobs"]
    method: str = config["method"]
    woke: dict[str, float] = {}
    proc = psutil.Process()
    if method == "tracker":
        async with Tracker(config["redis"]) as tracker:
            strategy = tracker.strategy()
            snapshots_read = _after_calls(strategy, "_read", len(jobs))  # the snapshot read

            async def wait_tracker(job_id: str) -> None:
                await tracker.completed(job_id, timeout=600)
                woke[job_id] = time.monotonic()

            tasks = [asyncio.create_task(wait_tracker(job_id)) for job_id in jobs]
            # Every waiter has subscribed and read its snapshot: only a push wakes it now.
            await snapshots_read.wait()
            await _report(tasks, woke, proc)
    else:
        pool = await create_pool(settings(config["redis"]))
        poll_delay: float = config["poll_delay"]

        async def wait_arq(job_id: str) -> None:
            await Job(job_id, pool).result(timeout=600, poll_delay=poll_delay)
            woke[job_id] = time.monotonic()

        tasks = [asyncio.create_task(wait_arq(job_id)) for job_id in jobs]
        await asyncio.sleep(0.1)  # every waiter has made its first poll
        await _report(tasks, woke, proc)
        await pool.aclose()


async def _report(tasks: list[asyncio.Task[None]], woke: dict[str, float], proc: Any) -> None:
    before = cpu_seconds(proc)
    say("subscribed")
    await asyncio.gather(*tasks)
    say("done", woke=woke, cpu=cpu_seconds(proc) - before)


def _after_calls(obj: object, name: str, count: int) -> asyncio.Event:
    """An event set once ``obj.name`` has returned for ``count`` different first
    arguments (job ids): instrumentation only, off the measured path."""
    reached = asyncio.Event()
    seen: set[Any] = set()
    method: Callable[..., Awaitable[Any]] = getattr(obj, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        result = await method(*args, **kwargs)
        seen.add(args[0] if args else None)
        if len(seen) >= count:
            reached.set()
        return result

    setattr(obj, name, counted)
    return reached


# The parent's helpers


async def enqueue(
    pool: ArqRedis, function: str, count: int, *, pause: float = 0.0, tracker: Tracker | None = None
) -> list[str]:
    """Enqueue ``count`` jobs of ``function`` (through ``tracker.enqueue`` when given)."""
    ids = []
    for _ in range(count):
        if tracker is not None:
            job = await tracker.enqueue(pool, function, pause)
        else:
            job = await pool.enqueue_job(function, pause)
        assert job is not None
        ids.append(job.job_id)
    return ids


async def last_lines(pool: ArqRedis, jobs: Iterable[str]) -> dict[str, float]:
    """Each job's result: the time of its last line."""
    return {job_id: float(await Job(job_id, pool).result(timeout=60)) for job_id in jobs}


async def run_worker(redis_url: str, **config: Any) -> Child:
    """Start the worker role; returns once it is about to run jobs."""
    child = await Child.start("_arqjobs.py", "worker", {"redis": redis_url, **config})
    await child.expect("started", timeout=60)
    return child


if __name__ == "__main__":
    child_main({"worker": worker, "waiters": waiters})
