"""The taskiq app whose real workers the tests run.

``taskiq worker tests.adapters.taskiq_worker:broker`` starts one.

Configured from the environment, so that a test and its worker processes build the
same broker: ``IMMORTUS_TEST_REDIS`` (the test's Redis URL), ``IMMORTUS_TEST_BROKER``
(``stream``: taskiq-redis's ``RedisStreamBroker``, the default, which hands the
task of a killed worker to the next one after ``IDLE_MS``; ``list``:
``ListQueueBroker``, which loses it) and ``IMMORTUS_TEST_TRACKED`` (``0``: no
middleware of ours, a worker that never heard of us).

One task per kind of job of :mod:`tests.adapters.drivers`, named by its kind, and
a few more for tests/adapters/test_taskiq.py. A task that waits for its test
blocks on the Redis list ``gate:<task id>``, never on a sleep.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from redis.asyncio import Redis
from taskiq import AsyncBroker, Context, SimpleRetryMiddleware, TaskiqDepends, TaskiqEvents
from taskiq.depends.progress_tracker import ProgressTracker, TaskState
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from immortus_async import JobContext
from immortus_async.adapters.taskiq import TrackingMiddleware, tracking

from .drivers import HEARTBEAT_INTERVAL, MAX_RESULT_BYTES, READY, RESULT_VALUE, STALLED_AFTER

# A default that declares a dependency is how taskiq's injection is written.
# ruff: noqa: B008

URL = os.environ.get("IMMORTUS_TEST_REDIS", "redis://127.0.0.1:6379/0")
KIND = os.environ.get("IMMORTUS_TEST_BROKER", "stream")
TRACKED = os.environ.get("IMMORTUS_TEST_TRACKED", "1") == "1"
# Where the middleware tracks; default the broker's own Redis.
TRACKING_URL = os.environ.get("IMMORTUS_TEST_TRACKING_REDIS") or None
IDLE_MS = 1000
"""How long the stream broker leaves a task a worker took unacknowledged before the
next worker takes it (taskiq-redis's default is 10 minutes)."""


def make_broker(url: str, kind: str, *, tracked: bool, tracking: str | None = None) -> AsyncBroker:
    """The broker of this app on ``url``: the workers' and, to send tasks, the tests'."""
    queue: AsyncBroker
    if kind == "stream":
        # xread_block: how long a worker waits for new tasks before it looks for
        # the ones a dead worker left; short, so that the handover is quick.
        # unacknowledged_lock_timeout: a worker killed while it holds the lock of the
        # handover (taskiq-redis's default: no timeout) would stop it for good.
        queue = RedisStreamBroker(
            url, idle_timeout=IDLE_MS, xread_block=100, unacknowledged_lock_timeout=5
        )
    else:
        queue = ListQueueBroker(url)
    queue = queue.with_result_backend(RedisAsyncResultBackend(url))
    middlewares: list[Any] = [SimpleRetryMiddleware(default_retry_count=3)]
    if tracked:
        middlewares.append(
            TrackingMiddleware(
                tracking,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                stalled_after=STALLED_AFTER,
                report_result=True,
                max_result_bytes=MAX_RESULT_BYTES,
            )
        )
    return queue.with_middlewares(*middlewares)


broker = make_broker(URL, KIND, tracked=TRACKED, tracking=TRACKING_URL)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
def _ready(state: Any) -> None:
    print(READY, flush=True)


_gates: list[Redis] = []


async def _gate(task_id: str) -> None:
    if not _gates:
        _gates.append(Redis.from_url(URL))
    await _gates[0].blpop([f"gate:{task_id}"])


@broker.task(task_name="finish")
async def finish() -> str:
    """Returns."""
    return "done"


@broker.task(task_name="fail")
async def fail() -> None:
    """Raises."""
    raise ValueError("bad row")


@broker.task(task_name="retry", retry_on_error=True, max_retries=3)
async def retry(job: JobContext = TaskiqDepends(tracking)) -> str:
    """Fails on its first attempt (taskiq's retry middleware runs it again); returns on the next."""
    if job.attempt == 1:
        raise RuntimeError("first attempt fails")
    return "done"


@broker.task(task_name="wait")
async def wait(job: JobContext = TaskiqDepends(tracking)) -> None:
    """Runs until it is cancelled."""
    await job.update(progress=0.1)
    await asyncio.Event().wait()


@broker.task(task_name="progress")
async def progress(job: JobContext = TaskiqDepends(tracking)) -> str:
    """Two progress updates with meta, then returns."""
    await job.update(progress=0.5, rows=1)
    await job.update(progress=1.0, rows=2)
    return "done"


@broker.task(task_name="hang_once")
async def hang_once(job: JobContext = TaskiqDepends(tracking)) -> str:
    """Hangs on its first attempt (until its worker is killed); returns on the next."""
    if job.attempt == 1:
        await job.update(progress=0.1)
        await asyncio.Event().wait()
    return "done"


@broker.task(task_name="plain")
async def plain() -> int:
    """Never heard of tracking."""
    return 42


@broker.task(task_name="result")
async def result() -> dict[str, Any]:
    """Returns a result that goes in its state."""
    return RESULT_VALUE


@broker.task(task_name="big_result")
async def big_result() -> str:
    """Returns a result too large for its state."""
    return "x" * (2 * MAX_RESULT_BYTES)


@broker.task(task_name="doomed", retry_on_error=True, max_retries=2)
async def doomed() -> None:
    """Fails on every attempt: run again once, then failed for good."""
    raise RuntimeError("always fails")


@broker.task(task_name="gated")
async def gated(context: Context = TaskiqDepends()) -> str:
    """Waits at its gate."""
    await _gate(context.message.task_id)
    return "through"


@broker.task(task_name="own_progress")
async def own_progress(
    context: Context = TaskiqDepends(),
    progress: ProgressTracker[dict[str, Any]] = TaskiqDepends(),
) -> None:
    """Reports through taskiq's own ``ProgressTracker``, then waits at its gate."""
    await progress.set_progress(TaskState.STARTED, {"progress": 0.5, "rows": 5})
    await _gate(context.message.task_id)


@broker.task(task_name="requeue_once")
async def requeue_once(context: Context = TaskiqDepends()) -> str:
    """Puts itself back in the queue (``Context.requeue``) once, then returns."""
    if not context.message.labels.get("X-Taskiq-requeue"):
        await context.requeue()
    return "done"


@broker.task(task_name="too_slow", timeout=0.2)
async def too_slow(context: Context = TaskiqDepends()) -> None:
    """Waits at its gate, past its taskiq timeout."""
    await _gate(context.message.task_id)
