"""The arq poller: one task looks at every watched job's records in batches."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
import logging

from arq.constants import default_queue_name, result_key_prefix
from redis.asyncio import Redis

from immortus_async import (
    ArqStrategy,
    ImmortusError,
    RedisServer,
    RedisUnavailable,
    TrackerClosed,
)
from immortus_async._buffer import StateBuffer
from immortus_async.adapters.arq._poller import ArqPoller

from .utils import SCALE, WriteEndingAsCancelled, closed_while_cancelled


class Sink:
    """Counts the nudges; an event per nudge count reached; keeps the failure."""

    def __init__(self) -> None:
        self.nudges = 0
        self.changed = asyncio.Event()
        self.failed: BaseException | None = None
        self.failure = asyncio.Event()

    def request_resync(self) -> None:
        self.nudges += 1
        self.changed.set()

    def fail(self, error: BaseException) -> None:
        self.failed = error
        self.failure.set()


class Breaking(Sink):
    """A sink whose nudge raises: what a bug would do to the poller's task."""

    def request_resync(self) -> None:
        raise RuntimeError("a sink that breaks")


async def test_many_jobs_registering_at_once_share_a_few_script_calls(redis: Redis) -> None:
    """600 jobs registering together: their first fingerprints take three script calls."""
    poller = ArqPoller(redis, default_queue_name, interval=60, max_interval=60)
    sinks = {f"job-{n}": Sink() for n in range(600)}
    await redis.config_resetstat()
    try:
        async with asyncio.timeout(10 * SCALE):
            await asyncio.gather(*(poller.register(j, sink) for j, sink in sinks.items()))
        stats = await redis.info("commandstats")
    finally:
        await poller.aclose()
    assert all(sink.nudges == 0 for sink in sinks.values())
    calls = stats["cmdstat_evalsha"]["calls"] + stats.get("cmdstat_eval", {}).get("calls", 0)
    assert calls <= 3 + 2  # 250 jobs a call (a NOSCRIPT retry may add one)


async def test_only_the_job_whose_records_changed_is_nudged(redis: Redis) -> None:
    """A result written by arq after registration nudges that job's watchers alone."""
    poller = ArqPoller(redis, default_queue_name, interval=0.01, max_interval=0.02)
    ended, quiet = Sink(), Sink()
    try:
        await poller.register("ended", ended)
        await poller.register("quiet", quiet)
        await redis.set(result_key_prefix + "ended", b"result")
        async with asyncio.timeout(10 * SCALE):
            await ended.changed.wait()
        # And back: every change is seen, not only the first.
        ended.changed.clear()
        await redis.delete(result_key_prefix + "ended")
        async with asyncio.timeout(10 * SCALE):
            await ended.changed.wait()
    finally:
        await poller.aclose()
    assert ended.nudges == 2
    assert quiet.nudges == 0


async def test_a_job_nobody_watches_any_more_is_not_looked_at(redis: Redis) -> None:
    """The last watcher out stops the looks at its job."""
    poller = ArqPoller(redis, default_queue_name, interval=0.01, max_interval=0.02)
    sink = Sink()
    try:
        await poller.register("job", sink)
        poller.unregister("job", sink)
        assert poller.jobs == 0
        poller.unregister("job", sink)  # idempotent
    finally:
        await poller.aclose()
    await poller.aclose()  # idempotent
    assert sink.nudges == 0


async def test_a_closed_poller_refuses_new_jobs(redis: Redis) -> None:
    """Registering with a closed poller raises TrackerClosed instead of waiting forever."""
    poller = ArqPoller(redis, default_queue_name, interval=0.01, max_interval=0.02)
    await poller.aclose()
    with pytest.raises(TrackerClosed):
        await poller.register("job", Sink())


async def test_a_watcher_cancelled_while_registering_leaves_nothing_behind(redis: Redis) -> None:
    """A watcher cancelled before its job's first look unregisters (the strategy's side)."""
    strategy = ArqStrategy(redis, notifications=False)
    buffer = StateBuffer()
    try:

        async def watch() -> None:
            async with strategy.changes("job", buffer):
                await asyncio.Event().wait()

        task = asyncio.create_task(watch())
        await asyncio.sleep(0)  # registered, first look not read yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert strategy._poller().jobs == 0
    finally:
        await strategy.aclose()


async def test_a_dying_poller_is_logged_fails_its_watchers_and_restarts(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """If the poller's task dies anyway, it is logged at ERROR with the traceback, every
    watcher fails with ImmortusError, and the restarted poller serves new watchers."""
    poller = ArqPoller(redis, default_queue_name, interval=0.01, max_interval=0.02)
    breaking, bystander, later = Breaking(), Sink(), Sink()
    try:
        await poller.register("breaks", breaking)
        await poller.register("bystander", bystander)
        await redis.set(result_key_prefix + "breaks", b"result")
        async with asyncio.timeout(10 * SCALE):
            await bystander.failure.wait()
        assert isinstance(bystander.failed, ImmortusError)
        died = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert died and died[0].exc_info is not None
        async with asyncio.timeout(10 * SCALE):
            await poller.register("later", later)
        await redis.set(result_key_prefix + "later", b"result")
        async with asyncio.timeout(10 * SCALE):
            await later.changed.wait()
        assert poller.healthy and later.failed is None
    finally:
        await poller.aclose()


async def test_watchers_fail_with_redis_unavailable_when_looks_fail_too_long(
    redis: Redis, redis_server: RedisServer
) -> None:
    """While Redis stays away longer than unreachable_timeout, the watchers of the jobs
    the poller cannot look at fail with RedisUnavailable rather than wait for ever."""
    poller = ArqPoller(
        redis, default_queue_name, interval=0.01, max_interval=0.02, unreachable_timeout=0.3
    )
    sink = Sink()
    try:
        await poller.register("job", sink)
        redis_server.stop()
        async with asyncio.timeout(10 * SCALE):
            await sink.failure.wait()
        assert isinstance(sink.failed, RedisUnavailable)
        assert poller.jobs == 0
    finally:
        await poller.aclose()


async def test_closing_ends_the_poller_as_its_redis_write_completes(
    redis_server: RedisServer,
) -> None:
    """The poller is closed just as its write to Redis completes: it stops all the same."""
    redis = Redis.from_url(
        redis_server.url, connection_class=WriteEndingAsCancelled, socket_timeout=30 * SCALE
    )
    await redis.ping()  # connected: the write held is the first look's script call
    poller = ArqPoller(redis, default_queue_name, interval=60, max_interval=60)
    closing = None
    try:
        held = WriteEndingAsCancelled.arm()
        registering = asyncio.create_task(poller.register("job", Sink()))
        async with asyncio.timeout(10 * SCALE):
            await held.wait()
        # Not `async with asyncio.timeout(): await poller.aclose()`: a close that
        # swallows cancellations would swallow that timeout's too.
        closing = asyncio.create_task(poller.aclose())
        await asyncio.wait([closing], timeout=10 * SCALE)
        assert closing.done(), "the poller's task went on after aclose()"
        closing.result()
        async with asyncio.timeout(10 * SCALE):
            await registering
    finally:
        WriteEndingAsCancelled.armed = False
        if closing is not None and not closing.done():
            closing.cancel()  # the write is no longer held: this one is delivered
            await asyncio.wait([closing])
        await poller.aclose()
        await redis.aclose()


async def test_a_closer_cancelled_while_it_closes_sees_its_cancellation(redis: Redis) -> None:
    """A closer cancelled while it waits for the poller's task is cancelled: aclose does
    not take that CancelledError for the task's, and the poller is closed all the same."""
    poller = ArqPoller(redis, default_queue_name, interval=60, max_interval=60)
    await poller.register("job", Sink())
    assert await closed_while_cancelled(poller.aclose)
    assert poller.jobs == 0
    with pytest.raises(TrackerClosed):
        await poller.register("job", Sink())
