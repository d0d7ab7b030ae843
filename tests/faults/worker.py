"""An arq worker process for the fault suite: ``python -m tests.faults.worker URL [options]``.

It runs two functions that do the same thing: ``tracked_job`` under ``@tracked``
(progress reported after every step) and ``untracked_job``, its twin without any
tracking. A fault that fails a tracked job but not its twin failed it because of
tracking. Outcomes are fixed by the arguments: a job given ``fail=True`` raises
``ValueError("bad <index>")``, any other returns ``index * 2``.

arq's own loop has no retry: a command that meets a dropped connection kills the
worker. Its Redis settings here retry such commands for a few seconds, as a
production worker's should, and the loop is resumed after an error it meets anyway,
so that a Redis restart tests tracking and not arq.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from immortus_async import tracked

READY = "faults worker ready"
"""The line a worker prints once it is connected and about to take jobs."""
RESUMED = "faults worker: arq's loop stopped on a Redis error; resumed"
"""The line a worker prints each time it resumes arq's loop."""

HEARTBEAT_INTERVAL = 0.2
STALLED_AFTER = 0.6


async def _steps(steps: int, step_s: float, ctx: dict[str, Any] | None) -> None:
    for step in range(steps):
        await asyncio.sleep(step_s)
        if ctx is not None:
            await ctx["immortus"].update(progress=(step + 1) / steps, step=step + 1)


def _outcome(index: int, fail: bool) -> int:
    if fail:
        raise ValueError(f"bad {index}")
    return index * 2


@tracked(heartbeat_interval=HEARTBEAT_INTERVAL, stalled_after=STALLED_AFTER)
async def tracked_job(
    ctx: dict[str, Any], index: int, steps: int, step_s: float, fail: bool
) -> int:
    """``steps`` steps of ``step_s`` seconds, each reported; then the fixed outcome."""
    await _steps(steps, step_s, ctx)
    return _outcome(index, fail)


async def untracked_job(
    ctx: dict[str, Any], index: int, steps: int, step_s: float, fail: bool
) -> int:
    """The twin of :func:`tracked_job`, tracked by nothing."""
    await _steps(steps, step_s, None)
    return _outcome(index, fail)


RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=40)
"""Retries of a command over about 20 s: longer than a restart of Redis takes."""
# OSError: redis-py retries a refused connect only when told so.
RETRY_ON_ERROR: list[type[Exception]] = [RedisConnectionError, RedisTimeoutError, OSError]


def settings(url: str) -> RedisSettings:
    """arq's settings for ``url``, retrying commands across a Redis restart."""
    return dataclasses.replace(
        RedisSettings.from_dsn(url), retry_on_error=RETRY_ON_ERROR, retry=RETRY
    )


async def _ready(ctx: dict[str, Any]) -> None:
    print(READY, flush=True)


async def main(arguments: argparse.Namespace) -> None:
    worker = Worker(
        functions=[
            func(tracked_job, timeout=arguments.job_timeout),
            func(untracked_job, timeout=arguments.job_timeout),
        ],
        redis_settings=settings(arguments.url),
        max_jobs=arguments.max_jobs,
        poll_delay=0.02,
        handle_signals=False,
        on_startup=_ready,
    )
    # How long a job's in-progress key outlives a killed worker before another
    # worker runs the job again (arq's default is the timeout plus 10 s).
    worker.in_progress_timeout_s = arguments.in_progress
    while True:
        try:
            await worker.main()
        except (RedisError, OSError) as exc:
            # arq's loop stops on an error its poll meets (a WATCH cut by a restart),
            # while the jobs it started go on: resume the loop, so that they end and
            # write their states as a worker kept alive by its supervisor would not.
            print(f"{RESUMED} ({exc!r})", flush=True)
            # The loop's backoff, not a wait for a condition.
            await asyncio.sleep(0.05)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.worker")
    parser.add_argument("url")
    parser.add_argument("--job-timeout", type=float, default=10.0)
    parser.add_argument("--in-progress", type=float, default=20.0)
    parser.add_argument("--max-jobs", type=int, default=25)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
