"""The taskiq app the tests run real workers of: ``taskiq worker tests.adapters.taskiq_app:broker``.

Configured from the environment, so that the test and its worker processes build
the same broker: ``IMMORTUS_TEST_REDIS`` (the test's Redis URL),
``IMMORTUS_TEST_BROKER`` (``list``: taskiq-redis's ``ListQueueBroker``, the
default; ``stream``: ``RedisStreamBroker``, which hands a task a dead worker held
to another after ``IMMORTUS_TEST_IDLE_MS``) and ``IMMORTUS_TEST_TRACKED`` (``0``:
no middleware of ours, a worker that never heard of us).

A task that must wait for the test blocks on the Redis list ``gate:<task id>``
(the test pushes to it), never on a sleep.
"""

from __future__ import annotations

import os
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker, Context, SimpleRetryMiddleware, TaskiqDepends
from taskiq.depends.progress_tracker import ProgressTracker, TaskState
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from immortus_async import JobContext
from immortus_async.adapters.taskiq import TrackingMiddleware, tracking

URL = os.environ.get("IMMORTUS_TEST_REDIS", "redis://127.0.0.1:6379/0")
KIND = os.environ.get("IMMORTUS_TEST_BROKER", "list")
TRACKED = os.environ.get("IMMORTUS_TEST_TRACKED", "1") == "1"
IDLE_MS = int(os.environ.get("IMMORTUS_TEST_IDLE_MS", "600000"))
# Short beats, so that a test sees a killed worker's task stall within seconds.
HEARTBEAT = float(os.environ.get("IMMORTUS_TEST_HEARTBEAT", "0.2"))
STALLED_AFTER = 5 * HEARTBEAT


def _broker() -> AsyncBroker:
    if KIND == "stream":
        # xread_block: how long a worker waits on new tasks before it looks for
        # ones a dead worker left; short, so a test's handover is quick.
        queue: AsyncBroker = RedisStreamBroker(URL, idle_timeout=IDLE_MS, xread_block=200)
    else:
        queue = ListQueueBroker(URL)
    queue = queue.with_result_backend(RedisAsyncResultBackend(URL))
    middlewares: list[Any] = [SimpleRetryMiddleware(default_retry_count=3)]
    if TRACKED:
        middlewares.append(
            TrackingMiddleware(heartbeat_interval=HEARTBEAT, stalled_after=STALLED_AFTER)
        )
    return queue.with_middlewares(*middlewares)


broker = _broker()

_gates: list[Redis] = []


async def _wait_gate(task_id: str) -> None:
    if not _gates:
        _gates.append(Redis.from_url(URL))
    await _gates[0].blpop([f"gate:{task_id}"])


# A default that declares a dependency is how taskiq's injection is written.
# ruff: noqa: B008


@broker.task
async def add(a: int, b: int) -> int:
    """Finishes at once."""
    return a + b


@broker.task
async def fail(text: str) -> None:
    """Fails with ``ValueError: <text>``."""
    raise ValueError(text)


@broker.task(retry_on_error=True, max_retries=3)
async def flaky(context: Context = TaskiqDepends()) -> str:
    """Fails on its first run (taskiq's retry middleware runs it again), then finishes."""
    if int(context.message.labels.get("_retries", 0)) < 1:
        raise RuntimeError("first run fails")
    return "ok"


@broker.task(retry_on_error=True, max_retries=2)
async def doomed() -> None:
    """Fails on every run: retried once, then failed for good."""
    raise RuntimeError("always fails")


@broker.task
async def report(steps: int, job: JobContext = TaskiqDepends(tracking)) -> int:
    """Reports progress and meta ``steps`` times, then finishes."""
    for step in range(1, steps + 1):
        await job.update(progress=step / steps, step=step)
    return steps


@broker.task
async def gated(context: Context = TaskiqDepends(), job: JobContext = TaskiqDepends(tracking)) -> str:
    """Reports that it waits, then waits at its gate."""
    await job.update(waiting=True)
    await _wait_gate(context.message.task_id)
    return "through"


@broker.task
async def own_progress(
    context: Context = TaskiqDepends(),
    progress: ProgressTracker[dict[str, Any]] = TaskiqDepends(),
) -> None:
    """Reports through taskiq's own ``ProgressTracker``, then waits at its gate."""
    await progress.set_progress(TaskState.STARTED, {"progress": 0.5, "rows": 5})
    await _wait_gate(context.message.task_id)
