"""The pub/sub hub under hostile input and faults: what one channel brings stays there."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from immortus_async import (
    ImmortusError,
    InvalidStateError,
    JobState,
    JobStatus,
    JobUpdate,
    RedisPubSubStrategy,
    RedisServer,
    RedisUnavailable,
    SubscriptionRefused,
    Tracker,
)
from immortus_async._buffer import RESYNC, StateBuffer
from immortus_async._pubsub import PubSubHub, connection_factory

from .conftest import NOT_INSTALLED
from .utils import SCALE, free_port, hub_closed_while_cancelled, run_worker, wait_until

S = JobStatus

HOSTILE = {
    "huge-progress": b'{"job_id": "x", "status": "started", "progress": ' + b"9" * 400 + b"}",
    "deep-json": b"[" * 200_000 + b"]" * 200_000,
    "year-zero": b'{"job_id": "x", "status": "queued", "enqueued_at": "0001-01-01T00:00:00+01:00"}',
    "not-utf8": b"\xff\xfe",
    "not-json": b"{",
    "nan-result": b'{"job_id": "x", "status": "finished", "result": [1, NaN]}',
}


@pytest.fixture
async def writer(redis_server: RedisServer) -> AsyncIterator[RedisPubSubStrategy]:
    """The job side: a strategy on its own client, as a worker process would have."""
    strategy = RedisPubSubStrategy(redis_server.url)
    yield strategy
    await strategy.aclose()


async def queue(writer: RedisPubSubStrategy, *job_ids: str) -> None:
    for job_id in job_ids:
        await writer.apply(JobUpdate(job_id=job_id, status=S.QUEUED, attempt=0))


async def finish(writer: RedisPubSubStrategy, job_id: str) -> None:
    await writer.apply(JobUpdate(job_id=job_id, status=S.FINISHED))


def hub_of(tracker: Tracker) -> Any:
    return tracker.strategy()._pubsub()  # type: ignore[attr-defined]


async def test_hostile_payloads_fail_their_job_only_and_the_hub_lives_on(
    tracker: Tracker, writer: RedisPubSubStrategy, redis: Redis
) -> None:
    """Payloads whose decoding raises OverflowError, RecursionError, ... fail only their
    job's waiter with InvalidStateError; a bystander still gets its terminal state."""
    await queue(writer, "bystander", *HOSTILE)
    bystander = asyncio.create_task(tracker.completed("bystander", timeout=20))
    victims = {job: asyncio.create_task(tracker.completed(job, timeout=20)) for job in HOSTILE}
    hub = hub_of(tracker)
    await wait_until(lambda: hub.channels == len(HOSTILE) + 1 and not hub._ready)
    for job_id, payload in HOSTILE.items():
        await redis.publish(writer.keys.channel(job_id), payload)
        with pytest.raises(InvalidStateError):
            await victims[job_id]
    await finish(writer, "bystander")
    assert (await bystander).status is S.FINISHED
    # A waiter that comes after is served as well: nothing died.
    await queue(writer, "later")
    later = asyncio.create_task(tracker.completed("later", timeout=20))
    await wait_until(lambda: hub.channels == 1 and not hub._ready)
    await finish(writer, "later")
    assert (await later).status is S.FINISHED
    assert tracker.healthy


def test_every_hostile_payload_decodes_to_invalid_state_error() -> None:
    """JobState.from_json answers InvalidStateError for each payload, never another error."""
    for payload in HOSTILE.values():
        with pytest.raises(InvalidStateError):
            JobState.from_json(payload)


async def test_an_unencodable_channel_fails_its_subscriber_only(
    tracker: Tracker, writer: RedisPubSubStrategy
) -> None:
    """A job id with a lone surrogate fails its own waiter with SubscriptionRefused;
    subscriptions made after it are still answered (the writer lives on)."""
    await queue(writer, "fine")
    with pytest.raises(SubscriptionRefused, match="cannot subscribe"):
        await tracker.completed("\ud800x", timeout=20)
    fine = asyncio.create_task(tracker.completed("fine", timeout=20))
    hub = hub_of(tracker)
    await wait_until(lambda: hub.channels == 1 and not hub._ready)
    await finish(writer, "fine")
    assert (await fine).status is S.FINISHED


@pytest.fixture
async def acl_user(redis: Redis, redis_server: RedisServer) -> str:
    """The URL of an ACL user allowed every key and command, but only the channel of job
    "allowed" (Redis 7's default for channels is none: resetchannels)."""
    await redis.execute_command(
        "ACL", "SETUSER", "limited", "on", ">secret", "~*", "+@all", "resetchannels",
        "&immortus:events:{allowed}",
    )  # fmt: skip
    return f"redis://limited:secret@127.0.0.1:{redis_server.port}/0"


async def test_a_refused_subscribe_fails_its_waiter_with_subscription_refused(
    acl_user: str, writer: RedisPubSubStrategy
) -> None:
    """NOPERM on SUBSCRIBE ends that job's waiter with SubscriptionRefused at once; a job
    whose SUBSCRIBE went out in the same command and is allowed is followed as usual."""
    await queue(writer, "allowed", "denied")
    async with Tracker(acl_user, tracking_strategy="redis_pub_sub") as tracker:
        # Both subscribed at once: one SUBSCRIBE command carries both channels.
        allowed = asyncio.create_task(tracker.completed("allowed", timeout=20))
        denied = asyncio.create_task(tracker.completed("denied", timeout=20))
        with pytest.raises(SubscriptionRefused, match="denied"):
            await denied
        hub = hub_of(tracker)
        await wait_until(lambda: hub.channels == 1 and not hub._ready)
        await finish(writer, "allowed")
        assert (await allowed).status is S.FINISHED
        assert tracker.healthy


async def test_an_unreachable_redis_raises_redis_unavailable() -> None:
    """completed() and status() on a Redis nobody listens at raise RedisUnavailable after
    unreachable_timeout, naming the Redis, instead of waiting for ever."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    async with Tracker(url, unreachable_timeout=0.2) as tracker:
        with pytest.raises(RedisUnavailable, match=r"127\.0\.0\.1") as raised:
            await tracker.completed("j")
        assert "hunter2" not in str(raised.value)
        # The reason is what Redis did (the refused connect), not the deadline.
        with pytest.raises(RedisUnavailable, match=r"connecting to 127\.0\.0\.1"):
            await tracker.status("j")


async def test_a_frozen_redis_raises_redis_unavailable(
    redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """A Redis that accepts connections but answers nothing (SIGSTOP) makes status() and
    completed() raise RedisUnavailable after unreachable_timeout, not hang."""
    await queue(writer, "frozen")
    assert redis_server.pid is not None
    async with Tracker(redis_server.url, unreachable_timeout=0.3) as tracker:
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RedisUnavailable):
                await tracker.status("frozen")
            with pytest.raises(RedisUnavailable):
                await tracker.completed("frozen")
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)


async def test_a_redis_gone_mid_wait_raises_redis_unavailable(
    redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """A waiter whose Redis goes away and stays away raises RedisUnavailable after
    unreachable_timeout; meanwhile the Tracker reads unhealthy, and healthy once back."""
    await queue(writer, "mid")
    async with Tracker(redis_server.url, unreachable_timeout=0.5) as tracker:
        snapshot = asyncio.Event()

        async def follow() -> None:
            async for _ in tracker.watch("mid"):
                snapshot.set()

        waiter = asyncio.create_task(follow())
        await snapshot.wait()
        assert tracker.healthy
        redis_server.stop()
        await wait_until(lambda: not tracker.healthy, message="the Tracker to read unhealthy")
        with pytest.raises(RedisUnavailable, match=r"0\.5s"):
            await waiter
        redis_server.start()
        await queue(writer, "back")
        back = asyncio.create_task(tracker.completed("back", timeout=20))
        await wait_until(lambda: hub_of(tracker).channels == 1 and not hub_of(tracker)._ready)
        assert tracker.healthy
        await finish(writer, "back")
        assert (await back).status is S.FINISHED


class Raising:
    """A sink whose push raises: what a bug in a sink would do to the reader task."""

    def push(self, item: Any) -> None:
        raise RuntimeError("a sink that breaks")

    def fail(self, error: BaseException) -> None:
        pass

    def request_resync(self) -> None:
        pass


async def test_a_dying_hub_task_is_logged_fails_its_waiters_and_restarts(
    tracker: Tracker, writer: RedisPubSubStrategy, caplog: pytest.LogCaptureFixture
) -> None:
    """If the reader dies anyway, it is logged at ERROR with the traceback, every waiter
    fails with ImmortusError, and the restarted hub serves new waiters."""
    await queue(writer, "waiting", "after")
    waiting = asyncio.create_task(tracker.completed("waiting", timeout=20))
    hub = hub_of(tracker)
    await hub.subscribe("breaks", Raising(), bytes)
    await wait_until(lambda: hub.channels == 2 and not hub._ready)
    await writer.redis.publish("breaks", b"anything")
    with pytest.raises(ImmortusError, match="restarted"):
        await waiting
    died = [r for r in caplog.records if r.levelno == logging.ERROR and "reader" in r.message]
    assert died and died[0].exc_info is not None
    after = asyncio.create_task(tracker.completed("after", timeout=20))
    await wait_until(lambda: hub.channels == 1 and not hub._ready)
    await finish(writer, "after")
    assert (await after).status is S.FINISHED
    assert tracker.healthy


async def test_aclose_does_not_raise_what_a_hub_task_met(
    redis: Redis, writer: RedisPubSubStrategy
) -> None:
    """Closing a Tracker whose hub saw a hostile message and a failing task returns."""
    tracker = Tracker(redis)
    hub = hub_of(tracker)
    buffer = StateBuffer()
    await hub.subscribe("breaks", Raising(), bytes)
    await hub.subscribe(writer.keys.channel("h"), buffer, JobState.from_json)
    await redis.publish(writer.keys.channel("h"), HOSTILE["huge-progress"])
    await redis.publish("breaks", b"anything")
    with pytest.raises(ImmortusError):
        async with asyncio.timeout(20 * SCALE):
            while True:
                await buffer.get()
    await tracker.aclose()


async def plain(ctx: dict[str, Any]) -> int:
    """An arq job that never heard of tracking."""
    return 42


async def test_queue_redis_reads_arq_records_on_their_own_redis(
    redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """Tracking on one Redis, arq on another: Tracker(queue_redis=) follows a plain arq
    job that a real worker runs on the queue's Redis to its end."""
    connections = pytest.importorskip("arq.connections", reason=NOT_INSTALLED)
    create_pool, RedisSettings = connections.create_pool, connections.RedisSettings
    with RedisServer() as queue_server:
        arq_pool = await create_pool(RedisSettings.from_dsn(queue_server.url))
        try:
            job = await arq_pool.enqueue_job("plain")
            assert job is not None
            async with Tracker(redis_server.url, queue_redis=queue_server.url) as tracker:
                assert (await tracker.status(job.job_id)).status is S.QUEUED
                waiter = asyncio.create_task(tracker.completed(job.job_id, timeout=20))
                await wait_until(lambda: hub_of(tracker).channels == 1)
                await run_worker(arq_pool, [plain])
                state = await waiter
                assert state.status is S.FINISHED
        finally:
            await arq_pool.aclose()


async def _pings(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


async def test_pings_with_and_without_channels_keep_one_connection(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """PING answered as ["pong", ""] (channels subscribed) and as PONG (none left) are
    matched to their command: the connection stays, and messages still arrive."""
    # Two intervals without an answer count as a frozen Redis: the interval is long
    # enough that a loaded machine's slow reply is not taken for one.
    hub = PubSubHub(connection_factory(redis), ping_interval=0.5)
    buffer = StateBuffer()
    try:
        await hub.subscribe("c", buffer, JobState.from_json)
        conn = hub._conn
        start = await _pings(redis)
        await wait_until(lambda: _more_pings(redis, start), message="pings while subscribed")
        hub.unsubscribe("c", buffer)
        await wait_until(lambda: hub.channels == 0)
        start = await _pings(redis)
        await wait_until(lambda: _more_pings(redis, start), message="pings with no channel")
        await hub.subscribe("c", buffer, JobState.from_json)
        await redis.publish("c", JobState(job_id="j", seq=1).to_json())
        async with asyncio.timeout(10 * SCALE):
            assert (await buffer.get()) == JobState(job_id="j", seq=1)
        assert hub._conn is conn
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await hub.aclose()


async def _more_pings(redis: Redis, start: int) -> bool:
    return await _pings(redis) >= start + 3


async def test_a_closer_cancelled_while_it_closes_still_closes_the_hub(redis: Redis) -> None:
    """A closer cancelled while it waits for the hub's tasks is cancelled, and the hub
    is closed all the same: its waiters fail with TrackerClosed, its connection goes."""
    await hub_closed_while_cancelled(PubSubHub(connection_factory(redis)))
    await wait_until(lambda: _no_subscriber(redis), message="the hub's connection closed")


async def _no_subscriber(redis: Redis) -> bool:
    return not any(int(client["sub"]) for client in await redis.client_list())


async def test_a_frozen_redis_is_left_when_the_hubs_ping_goes_unanswered(
    redis_server: RedisServer, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Subscribed, then Redis frozen (SIGSTOP): the hub's silence deadline sends a PING,
    and one more interval without an answer drops the connection; once Redis is back
    the hub subscribes again and messages arrive."""
    assert redis_server.pid is not None
    hub = PubSubHub(connection_factory(redis), ping_interval=0.3)
    buffer = StateBuffer()
    try:
        await hub.subscribe("c", buffer, JobState.from_json)
        conn = hub._conn
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            await wait_until(lambda: hub._conn is not conn, message="the frozen connection left")
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        assert any("no answer to PING" in r.getMessage() for r in caplog.records)
        await wait_until(lambda: hub.channels == 1 and hub._conn is not None and not hub._ready)
        await redis.publish("c", JobState(job_id="j", seq=1).to_json())
        async with asyncio.timeout(10 * SCALE):
            assert (await buffer.get()) is RESYNC  # what was published meanwhile is lost
            assert (await buffer.get()) == JobState(job_id="j", seq=1)
    finally:
        await hub.aclose()
