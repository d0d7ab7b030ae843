"""The streaQ worker of the tests: ``python -m tests.adapters.streaq_worker REDIS_URL
[TRACKING_URL]`` (tracking on the worker's own Redis, else on ``TRACKING_URL``).

One task per kind of job of :mod:`tests.adapters.drivers` (named after the kind),
and a few more that only ``test_streaq.py`` runs, on a worker built per test or
per worker process, tracked through our middleware unless ``tracked=False``
(``plain`` is one whose body never heard of us). Tasks that wait for the test
wait on a Redis list (``gate:<name>``) that the test pushes to, so the same tasks
work in the test's process and in a worker process.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from streaq import StreaqRetry, Worker

from immortus_async.adapters.streaq import job_context, track_worker

from .drivers import HEARTBEAT_INTERVAL, MAX_RESULT_BYTES, READY, RESULT_VALUE, STALLED_AFTER

# streaQ hands a task whose worker went silent to another worker after this
# (its default is 60 s).
IDLE_TIMEOUT = 1.0


def gate(name: str) -> str:
    """The list a task blocks on until the test pushes to it."""
    return f"gate:{name}"


@asynccontextmanager
async def _announce() -> AsyncIterator[None]:
    # streaQ enters the lifespan as it starts; jobs enqueued before wait in its stream.
    print(READY, flush=True)
    yield


def make_worker(
    url: str, *, tracked: bool = True, tracking: str | None = None, **options: Any
) -> Worker[Any]:
    """A streaQ worker on ``url`` with the test tasks, tracked unless ``tracked=False``:
    on ``url``, or on ``tracking`` (a cluster's ``redis+cluster://`` URL) with ``url``
    as the queue's Redis."""
    options.setdefault("idle_timeout", IDLE_TIMEOUT)
    options.setdefault("handle_signals", False)
    worker: Worker[Any] = Worker(redis_url=url, **options)
    if tracked:
        track_worker(
            worker,
            redis=tracking or url,
            queue_redis=url if tracking else None,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            stalled_after=STALLED_AFTER,
            report_result=True,
            max_result_bytes=MAX_RESULT_BYTES,
        )

    def tries(name: str) -> int:
        return worker.registry[name].context.tries

    async def wait_for(name: str) -> None:
        await worker.redis.blpop([gate(name)], timeout=60)

    # The kinds of the contract suite.

    @worker.task(name="finish")
    async def finish() -> str:
        return "done"

    @worker.task(name="fail")
    async def fail() -> None:
        raise ValueError("bad row")

    @worker.task(name="retry")
    async def retry() -> str:
        if tries("retry") == 1:
            raise StreaqRetry("not yet", delay=0)
        return "done"

    @worker.task(name="wait")
    async def wait() -> None:
        await job_context().update(progress=0.1)
        await anyio.sleep_forever()

    @worker.task(name="progress")
    async def progress() -> str:
        await job_context().update(progress=0.5, rows=1)
        await job_context().update(progress=1.0, rows=2)
        return "done"

    @worker.task(name="hang_once")
    async def hang_once() -> str:
        if tries("hang_once") == 1:
            await job_context().update(progress=0.1)
            await anyio.sleep_forever()
        return "done"

    @worker.task(name="plain")
    async def plain() -> int:
        return 42

    @worker.task(name="result")
    async def result() -> dict[str, Any]:
        return RESULT_VALUE

    @worker.task(name="big_result")
    async def big_result() -> str:
        return "x" * (2 * MAX_RESULT_BYTES)

    # The streaQ-only ones.

    @worker.task(name="retry_always", max_tries=2)
    async def retry_always() -> None:
        raise StreaqRetry("never", delay=0)

    @worker.task(name="retry_later")
    async def retry_later() -> None:
        raise StreaqRetry("in an hour", delay=3600)

    @worker.task(name="gated")
    async def gated(name: str) -> str:
        await wait_for(name)
        return name

    @worker.task(name="steps")
    async def steps(n: int) -> int:
        for i in range(n):
            await job_context().update(progress=(i + 1) / n, step=i + 1)
        return n

    @worker.task(name="sync_half")
    def sync_half() -> str:
        # A synchronous task runs in a thread: it reports through the event loop.
        anyio.from_thread.run(lambda: job_context().update(progress=0.5, half=True))
        return "done"

    @worker.task(name="no_result", ttl=0)
    async def no_result(name: str) -> None:
        await wait_for(name)

    @worker.task(name="slow", timeout=1)
    async def slow(name: str) -> None:
        await wait_for(name)

    return worker


if __name__ == "__main__":
    tracking = sys.argv[2] if len(sys.argv) > 2 else None
    make_worker(sys.argv[1], tracking=tracking, handle_signals=True, lifespan=_announce).run_sync()
