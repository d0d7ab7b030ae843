"""Helpers shared by the tests: waiting on conditions, never on fixed sleeps."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from arq.connections import ArqRedis
from arq.worker import Worker

T = TypeVar("T")

# One unit for every unavoidable delay, scaled on slow machines: IMMORTUS_TEST_SCALE=3.
SCALE = float(os.environ.get("IMMORTUS_TEST_SCALE", "1"))


async def wait_until(
    condition: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 10.0,
    interval: float = 0.005,
    message: str = "condition",
) -> T:
    """Re-check ``condition`` until it returns something truthy; fail after ``timeout``.

    For state that offers no event to wait on (a TTL passing in Redis, a client
    count); everything that has an event is awaited directly instead.
    """
    deadline = asyncio.get_running_loop().time() + timeout * SCALE
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout * SCALE:.1f}s waiting for {message}")
        await asyncio.sleep(interval)


async def run_worker(pool: ArqRedis, functions: Sequence[Any], **settings: Any) -> Worker:
    """Run a real arq worker in this loop until its queue is empty (burst mode, as arq's
    own tests do) and return it; ``settings`` are more ``Worker`` arguments."""
    worker = Worker(
        functions=functions,
        redis_pool=pool,
        burst=True,
        poll_delay=settings.pop("poll_delay", 0),
        handle_signals=False,
        **settings,
    )
    await worker.main()
    return worker
