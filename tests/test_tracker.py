"""The Tracker against a real Redis: waking, races, shared subscriptions, outages."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from redis.asyncio import Connection, Redis

from immortus_async import (
    InvalidStateError,
    JobLost,
    JobNotFound,
    JobState,
    JobStatus,
    JobUpdate,
    RedisPubSubStrategy,
    RedisServer,
    RedisUnavailable,
    Tracker,
    TrackerClosed,
)

from .conftest import NOT_INSTALLED
from .strategies_for_tests import OnlyCompleted
from .utils import SCALE, Watcher, WriteEndingAsCancelled, closed_while_cancelled, wait_until

S = JobStatus


@pytest.fixture
async def writer(redis_server: RedisServer) -> AsyncIterator[RedisPubSubStrategy]:
    """The job side: a strategy on its own client, as a worker process would have."""
    strategy = RedisPubSubStrategy(redis_server.url)  # from a URL: retries stale sockets
    yield strategy
    await strategy.aclose()


async def queue(writer: RedisPubSubStrategy, *job_ids: str) -> None:
    for job_id in job_ids:
        await writer.apply(JobUpdate(job_id=job_id, status=S.QUEUED, attempt=0))


async def finish(writer: RedisPubSubStrategy, job_id: str, status: JobStatus = S.FINISHED) -> None:
    error = None if status is S.FINISHED else f"{job_id} {status.value}"
    await writer.apply(JobUpdate(job_id=job_id, status=status, error=error))


async def follow_to_end(tracker: Tracker, job_id: str, snapshots: set[str]) -> JobState:
    """completed(), spelled out so a test knows when the waiter holds its snapshot."""
    async for state in tracker.watch(job_id):
        snapshots.add(job_id)
        if state.completed:
            return state
    raise AssertionError("watch ended before a terminal state")


async def pubsub_clients(redis: Redis) -> list[dict[str, object]]:
    """The server's clients that are in pub/sub mode."""
    return [c for c in await redis.client_list() if int(c.get("sub", 0)) > 0]


async def numsub(redis: Redis, writer: RedisPubSubStrategy, job_ids: list[str]) -> list[int]:
    channels = [writer.keys.channel(job_id) for job_id in job_ids]
    return [count for _, count in await redis.pubsub_numsub(*channels)]


async def test_completed_returns_terminal_state(
    tracker: Tracker, writer: RedisPubSubStrategy
) -> None:
    """A waiter wakes with the finished state, and a failed job returns, not raises."""
    await queue(writer, "ok", "bad")
    waiters = [asyncio.create_task(tracker.completed(j, timeout=10)) for j in ("ok", "bad")]
    await wait_until(lambda: tracker.strategy()._pubsub().channels == 2)  # type: ignore[attr-defined]
    await finish(writer, "ok")
    await finish(writer, "bad", S.FAILED)
    ok, bad = await asyncio.gather(*waiters)
    assert (ok.status, ok.completed, ok.progress) == (S.FINISHED, True, 1.0)
    assert (bad.status, bad.completed, bad.error) == (S.FAILED, True, "bad failed")


async def test_watch_yields_snapshot_then_each_change(
    tracker: Tracker, writer: RedisPubSubStrategy
) -> None:
    """watch() gives the current state first, then every change, and ends at the end."""
    await queue(writer, "w")
    seen: list[JobState] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for state in tracker.watch("w"):
            seen.append(state)
            first.set()

    task = asyncio.create_task(follow())
    await asyncio.wait_for(first.wait(), 10)
    for i in range(1, 4):
        await writer.apply(JobUpdate(job_id="w", status=S.STARTED, progress=i / 4, meta={"i": i}))
    await finish(writer, "w")
    await asyncio.wait_for(task, 10)
    assert [s.status for s in seen] == [S.QUEUED, S.STARTED, S.STARTED, S.STARTED, S.FINISHED]
    assert [s.seq for s in seen] == [1, 2, 3, 4, 5]
    assert [s.progress for s in seen[1:4]] == [0.25, 0.5, 0.75]
    assert seen[-1].meta == {"i": 3}


async def test_unknown_job_raises_job_not_found_at_once(tracker: Tracker) -> None:
    """completed() on an id seen nowhere raises JobNotFound instead of waiting."""
    with pytest.raises(JobNotFound, match="no-such-job"):
        await tracker.completed("no-such-job")
    assert (await tracker.status("no-such-job")).status is S.UNKNOWN


async def test_timeout_raises_timeout_error(tracker: Tracker, writer: RedisPubSubStrategy) -> None:
    """completed(timeout=...) raises the built-in TimeoutError when the job is not done."""
    await queue(writer, "slow")
    with pytest.raises(TimeoutError):
        await tracker.completed("slow", timeout=0.05)


async def test_custom_strategy_with_only_completed_is_polled(redis: Redis) -> None:
    """A strategy with nothing but completed() works: polled, optional methods never called."""
    strategy = OnlyCompleted()
    async with Tracker(redis, tracking_strategy=strategy, poll_interval=(0.005, 0.02)) as tracker:
        waiter = asyncio.create_task(tracker.completed("c", timeout=10))
        await wait_until(lambda: strategy.calls.count("completed") >= 2)
        assert not waiter.done()
        strategy.done.add("c")
        state = await waiter
    assert state.status is S.FINISHED and state.completed
    called = {c for c in strategy.calls if not c.startswith("getattr:")}
    assert called == {"completed"}


async def test_thousand_waiters_one_connection(
    tracker: Tracker, writer: RedisPubSubStrategy, redis: Redis
) -> None:
    """1,000 waiters on 1,000 jobs finishing in random order all wake right, on one connection."""
    job_ids = [f"job-{i}" for i in range(1000)]
    await queue(writer, *job_ids)
    waiters = {j: asyncio.create_task(tracker.completed(j, timeout=30)) for j in job_ids}
    hub = tracker.strategy()._pubsub()  # type: ignore[attr-defined]
    await wait_until(lambda: hub.channels == 1000 and not hub._ready, timeout=30)
    clients = [int(c["sub"]) for c in await pubsub_clients(redis)]  # type: ignore[call-overload]
    # One connection holds every channel; beside it at most client-side caching's
    # own, each on its one channel: ours, and a queue's reader's (arq's keys).
    assert clients.count(1000) == 1 and sorted(clients)[:-1] in ([], [1], [1, 1])
    endings = {j: random.choice([S.FINISHED, S.FAILED, S.ABORTED]) for j in job_ids}
    order = list(job_ids)
    random.shuffle(order)
    for job_id in order:
        await finish(writer, job_id, endings[job_id])
    results = dict(zip(waiters, await asyncio.gather(*waiters.values()), strict=True))
    assert {j: s.status for j, s in results.items()} == endings


async def test_readers_leave_half_of_a_small_pool_to_the_app(
    redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """Fifty reads at once on a client whose pool holds four connections (redis-py 8's
    holds 100 and refuses one more) take at most two: the application's own command,
    made meanwhile on the same client, still gets one."""
    job_ids = [f"job-{i}" for i in range(50)]
    await queue(writer, *job_ids)
    client = Redis.from_url(redis_server.url, max_connections=4)
    try:
        async with Tracker(client, tracking_strategy="redis_pub_sub") as tracker:
            *states, own = await asyncio.gather(
                *(tracker.status(job_id) for job_id in job_ids), client.set("app", "mine")
            )
        assert own is True
        assert {state.status for state in states} == {S.QUEUED}
    finally:
        await client.aclose()


class RacingStrategy(RedisPubSubStrategy):
    """Finishes the job right after the waiter read its snapshot, before it returns it."""

    finisher: RedisPubSubStrategy

    async def _read(self, job_id: str, **options: Any) -> tuple[JobState, float | None]:
        snapshot = await super()._read(job_id, **options)
        if snapshot[0].status is S.QUEUED:
            await finish(self.finisher, job_id)
        return snapshot


async def test_job_finishing_between_subscribe_and_snapshot(
    redis: Redis, writer: RedisPubSubStrategy
) -> None:
    """The race: finished is published after SUBSCRIBE, while the snapshot is stale."""
    strategy = RacingStrategy(redis)
    strategy.finisher = writer
    await queue(writer, "race")
    async with Tracker(redis, tracking_strategy=strategy) as tracker:
        state = await tracker.completed("race", timeout=10)
    assert state.status is S.FINISHED


class HeldSubscribe(Connection):
    """Once ``gate`` is cleared, a connection that holds every SUBSCRIBE of a job's
    channel until it is set again (client-side caching's own goes out): the
    subscription a waiter asked for is not live meanwhile."""

    gate: ClassVar[asyncio.Event]
    held: ClassVar[asyncio.Event]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        packed = b"".join(command) if isinstance(command, list) else bytes(command)
        if b"SUBSCRIBE" in packed and b"__redis__" not in packed:
            type(self).held.set()
            await type(self).gate.wait()
        await super().send_packed_command(command, check_health)


@pytest.fixture
async def held_subscribe(redis_server: RedisServer) -> AsyncIterator[Tracker]:
    """A Tracker whose SUBSCRIBEs can be held, its caching connections made by a
    first waiter."""
    HeldSubscribe.gate, HeldSubscribe.held = asyncio.Event(), asyncio.Event()
    HeldSubscribe.gate.set()
    client = Redis.from_url(redis_server.url, connection_class=HeldSubscribe)
    writer = RedisPubSubStrategy(client)
    await queue(writer, "warm")
    async with Tracker(client, tracking_strategy="redis_pub_sub") as tracker:
        warm = await Watcher(tracker, "warm").subscribed()
        await finish(writer, "warm")
        await warm.finished()
        HeldSubscribe.gate.clear()
        HeldSubscribe.held.clear()
        try:
            yield tracker
        finally:
            HeldSubscribe.gate.set()
    await writer.aclose()
    await client.aclose()


async def test_the_first_state_comes_before_the_subscription_and_misses_nothing(
    held_subscribe: Tracker, writer: RedisPubSubStrategy
) -> None:
    """A waiter's first state does not wait for its SUBSCRIBE (one round trip): it
    is read with client-side caching meanwhile, so the job's start and end, written
    before the subscription is live (their messages lost), still reach it."""
    await queue(writer, "j")
    watcher = await Watcher(held_subscribe, "j").subscribed()
    assert HeldSubscribe.held.is_set() and not HeldSubscribe.gate.is_set()
    assert [state.status for state in watcher.states] == [S.QUEUED]
    await writer.apply(JobUpdate(job_id="j", status=S.STARTED, attempt=1))
    await finish(writer, "j")
    await wait_until(lambda: watcher.has(S.FINISHED), message="the end, unsubscribed")
    HeldSubscribe.gate.set()
    assert (await watcher.finished())[-1].status is S.FINISHED


async def test_caching_lost_before_the_subscription_is_live_reads_the_job_again(
    held_subscribe: Tracker, writer: RedisPubSubStrategy, redis: Redis
) -> None:
    """The caching connections killed between the first state and the subscription,
    and the job ended meanwhile: that end's invalidation is lost with them, its
    message too; once subscribed, the waiter reads the job again and ends."""
    await queue(writer, "j")
    watcher = await Watcher(held_subscribe, "j").subscribed()
    for client in await redis.client_list():
        if "t" in str(client["flags"]):
            await redis.client_kill_filter(_id=client["id"])
    await finish(writer, "j")
    HeldSubscribe.gate.set()
    states = await watcher.finished()
    assert [state.status for state in states] == [S.QUEUED, S.FINISHED]


async def test_a_first_read_on_caching_s_connection_of_a_frozen_redis_gives_up_in_time(
    redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """Redis frozen (SIGSTOP) once client-side caching is connected: a waiter's first
    read, on caching's connection, is answered by nobody; the waiter raises
    RedisUnavailable at its unreachable_timeout instead of waiting for ever, and the
    next waiter, once Redis is back, gets its state."""
    await queue(writer, "warm", "j")
    client = Redis.from_url(redis_server.url)
    reader = RedisPubSubStrategy(client, unreachable_timeout=1 * SCALE)
    assert redis_server.pid is not None
    try:
        async with Tracker(client, tracking_strategy=reader) as tracker:
            warm = await Watcher(tracker, "warm").subscribed()
            await finish(writer, "warm")
            await warm.finished()
            assert reader._record_watch() is not None and reader._record_watch().ready()
            os.kill(redis_server.pid, signal.SIGSTOP)
            try:
                with pytest.raises(RedisUnavailable):
                    await asyncio.wait_for(tracker.completed("j"), 10 * SCALE)
            finally:
                os.kill(redis_server.pid, signal.SIGCONT)
            waiter = asyncio.create_task(tracker.completed("j", timeout=20 * SCALE))
            await finish(writer, "j")
            assert (await waiter).status is S.FINISHED
    finally:
        await reader.aclose()
        await client.aclose()


async def test_a_waiter_cancelled_as_its_snapshot_read_completes_ends_cancelled(
    redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """A waiter cancelled just as its snapshot's write to Redis completes, as
    ``asyncio.wait_for(tracker.completed(...), t)`` cancels it when ``t`` passes: it
    ends cancelled, instead of waiting on for ever (and ``wait_for`` with it)."""
    await queue(writer, "w")
    redis = Redis.from_url(
        redis_server.url, connection_class=WriteEndingAsCancelled, socket_timeout=30 * SCALE
    )
    # Without client-side caching: the snapshot is read on the client, not on
    # caching's connection (which has no socket_timeout).
    reader = RedisPubSubStrategy(redis, client_tracking=False)
    try:
        async with Tracker(redis, tracking_strategy=reader) as tracker:
            # Connected, scripts loaded: the next write is the waiter's snapshot read.
            assert (await tracker.status("w")).status is S.QUEUED
            WriteEndingAsCancelled.held = asyncio.Event()
            WriteEndingAsCancelled.armed = True
            waiter = asyncio.create_task(tracker.completed("w"))
            async with asyncio.timeout(10 * SCALE):
                await WriteEndingAsCancelled.held.wait()
            waiter.cancel()
            await asyncio.wait([waiter], timeout=10 * SCALE)
            assert waiter.cancelled()
    finally:
        WriteEndingAsCancelled.armed = False
        await reader.aclose()
        await redis.aclose()


async def test_numsub_is_one_per_channel_and_zero_after(
    tracker: Tracker, writer: RedisPubSubStrategy, redis: Redis
) -> None:
    """1,000 waiters on 10 jobs: one subscription per channel; none once they finish,
    time out or are cancelled."""
    job_ids = [f"n{i}" for i in range(10)]
    await queue(writer, *job_ids)
    hub = tracker.strategy()._pubsub()  # type: ignore[attr-defined]

    async def subscribed(expected: int) -> None:
        await wait_until(lambda: hub.channels == expected and not hub._ready)

    finishing = [asyncio.create_task(tracker.completed(j, timeout=30)) for j in job_ids[:4] * 100]
    cancelled = [asyncio.create_task(tracker.completed(j)) for j in job_ids[7:] * 100]
    await subscribed(7)
    assert await numsub(redis, writer, job_ids) == [1] * 4 + [0] * 3 + [1] * 3
    # Started once the others are in: on a loaded machine, 1 s may pass before all
    # 1,000 are subscribed, and these would leave before they were counted.
    timing_out = [asyncio.create_task(tracker.completed(j, timeout=1)) for j in job_ids[4:7] * 100]
    results = await asyncio.gather(*timing_out, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    await subscribed(7)

    for job_id in job_ids[:4]:
        await finish(writer, job_id)
    await asyncio.gather(*finishing)
    for task in cancelled:
        task.cancel()
    await asyncio.gather(*cancelled, return_exceptions=True)
    await subscribed(0)
    await wait_until(lambda: _all_zero(redis, writer, job_ids), message="NUMSUB to reach 0")


async def _all_zero(redis: Redis, writer: RedisPubSubStrategy, job_ids: list[str]) -> bool:
    return await numsub(redis, writer, job_ids) == [0] * len(job_ids)


async def test_redis_restart_without_data_ends_every_waiter_with_job_lost(
    tracker: Tracker, redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """Redis killed while 100 wait and restarted empty: each waiter raises JobLost at
    the resync instead of waiting for ever; a job written after is followed as usual."""
    job_ids = [f"r{i}" for i in range(100)]
    await queue(writer, *job_ids)
    snapshots: set[str] = set()
    waiters = [asyncio.create_task(follow_to_end(tracker, j, snapshots)) for j in job_ids]
    await wait_until(lambda: len(snapshots) == 100, message="every waiter's snapshot")
    redis_server.restart()
    async with asyncio.timeout(20 * SCALE):  # the resync follows the reconnection
        results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, JobLost) and r.job_id in job_ids for r in results), results
    await queue(writer, "after")
    after = asyncio.create_task(tracker.completed("after", timeout=10))
    await finish(writer, "after")
    assert (await after).status is S.FINISHED


async def test_state_written_while_disconnected_arrives_by_resync(
    tracker: Tracker, redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """A job that finished while the Tracker was away is delivered by the resync."""
    await queue(writer, "away")
    snapshots: set[str] = set()
    waiter = asyncio.create_task(follow_to_end(tracker, "away", snapshots))
    hub = tracker.strategy()._pubsub()  # type: ignore[attr-defined]
    await wait_until(lambda: snapshots == {"away"})
    gate = asyncio.Event()
    connect = hub._connect

    async def gated_connect():  # type: ignore[no-untyped-def]
        await gate.wait()
        return await connect()

    hub._connect = gated_connect
    redis_server.restart()
    await wait_until(lambda: not hub.connected.is_set())
    await finish(writer, "away")  # published to nobody: the tracker is not subscribed
    gate.set()
    state = await waiter
    assert state.status is S.FINISHED


async def test_garbage_message_fails_only_its_waiters(
    tracker: Tracker, writer: RedisPubSubStrategy, redis: Redis
) -> None:
    """A malformed message raises InvalidStateError for that job; others keep working."""
    await queue(writer, "garbled", "fine")
    garbled = asyncio.create_task(tracker.completed("garbled", timeout=10))
    fine = asyncio.create_task(tracker.completed("fine", timeout=10))
    hub = tracker.strategy()._pubsub()  # type: ignore[attr-defined]
    await wait_until(lambda: hub.channels == 2 and not hub._ready)
    await redis.publish(writer.keys.channel("garbled"), b'{"job_id": "garbled", "status": "?!"}')
    with pytest.raises(InvalidStateError, match="unknown job status"):
        await garbled
    await finish(writer, "fine")
    assert (await fine).status is S.FINISHED


async def test_closed_tracker_refuses_and_wakes_waiters(
    redis: Redis, writer: RedisPubSubStrategy
) -> None:
    """Closing a Tracker ends its waiters with TrackerClosed; later calls raise it too."""
    await queue(writer, "z")
    tracker = Tracker(redis)
    waiter = asyncio.create_task(tracker.completed("z", timeout=10))
    await wait_until(lambda: tracker.strategy()._pubsub().channels == 1)  # type: ignore[attr-defined]
    await tracker.aclose()
    with pytest.raises(TrackerClosed):
        await waiter
    with pytest.raises(TrackerClosed):
        await tracker.status("z")
    await tracker.aclose()  # idempotent


async def test_token_needs_a_long_secret(redis: Redis) -> None:
    """token() signs with the secret; no secret or a short one is a clear error."""
    async with Tracker(redis, secret="s" * 32) as tracker:
        assert tracker.token("j").count(".") == 2
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Tracker(redis, secret="short")
    async with Tracker(redis) as tracker:
        with pytest.raises(ValueError, match="IMMORTUS_SECRET"):
            tracker.token("j")


def test_a_cluster_as_queue_redis_is_refused() -> None:
    """queue_redis is the queue's one server: a Redis Cluster there is refused, saying
    where it goes (else no reader of the queue's records would be built, silently)."""
    with pytest.raises(TypeError, match="give the cluster as the Tracker's redis"):
        Tracker("redis://127.0.0.1:1", queue_redis="redis+cluster://127.0.0.1:7000")


async def test_arq_fallback_shares_the_one_pubsub_connection(
    redis: Redis, redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """With keyspace events on, following an arq-only job and one of ours uses one connection."""
    connections = pytest.importorskip("arq.connections", reason=NOT_INSTALLED)
    create_pool, RedisSettings = connections.create_pool, connections.RedisSettings

    await redis.config_set("notify-keyspace-events", "KEA")
    # Client-side caching refused (as by a managed service): keyspace events carry it.
    await redis.execute_command("ACL", "SETUSER", "default", "-client|tracking")
    pool = await create_pool(RedisSettings.from_dsn(redis_server.url))
    try:
        plain = await pool.enqueue_job("never_decorated")
        assert plain is not None
        await queue(writer, "ours")
        async with Tracker(redis) as tracker:
            waiters = [
                asyncio.create_task(tracker.completed(job_id, timeout=10))
                for job_id in (plain.job_id, "ours")
            ]
            hub = tracker.strategy()._pubsub()  # type: ignore[attr-defined]
            # Each job: its own channel, plus arq's four keys (arq may end any job).
            await wait_until(lambda: hub.channels == 10 and not hub._ready)
            assert len(await pubsub_clients(redis)) == 1
            await finish(writer, "ours")
            await finish(writer, plain.job_id, S.ABORTED)
            states = await asyncio.gather(*waiters)
            assert [s.status for s in states] == [S.ABORTED, S.FINISHED]
    finally:
        await pool.aclose()


async def test_waiter_leaving_while_disconnected_leaves_nothing_behind(
    tracker: Tracker, redis_server: RedisServer, writer: RedisPubSubStrategy
) -> None:
    """A waiter that gives up while Redis is away leaves no pending subscription state."""
    await queue(writer, "left")
    hub = tracker.strategy()._pubsub()  # type: ignore[attr-defined]
    redis_server.stop()
    waiter = asyncio.create_task(tracker.completed("left"))
    await wait_until(lambda: hub.channels == 1, message="the waiter's subscription")
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert hub.channels == 0 and not hub._ready and not hub._decoders
    redis_server.start()
    await queue(writer, "back")
    assert (await tracker.status("back")).status is S.QUEUED


async def test_a_closer_cancelled_while_it_closes_still_closes_every_connection(
    redis_server: RedisServer, redis: Redis
) -> None:
    """A Tracker whose closer is cancelled meanwhile closes every connection all the
    same (its pub/sub connection, its own client's), then lets the cancellation through."""
    await RedisPubSubStrategy(redis).apply(JobUpdate(job_id="c", status=S.QUEUED, attempt=0))
    before = await _connections(redis)
    tracker = Tracker(redis_server.url, tracking_strategy="redis_pub_sub")
    watcher = await Watcher(tracker, "c").subscribed()
    assert await _connections(redis) > before
    assert await closed_while_cancelled(tracker.aclose)
    with pytest.raises(TrackerClosed):
        await watcher.finished()
    await wait_until(
        lambda: _connections_are(redis, before), message="every connection of the tracker closed"
    )


async def _connections(redis: Redis) -> int:
    return len(await redis.client_list())


async def _connections_are(redis: Redis, count: int) -> bool:
    return await _connections(redis) == count
