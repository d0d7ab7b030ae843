"""Client-side caching of arq's records: each mode for real, the storm, the cost of waiting."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

from immortus_async import JobState, JobStatus, JobUpdate, RedisPubSubStrategy, RedisServer, Tracker
from immortus_async._key_watch import KeyWatch, Untracked
from immortus_async._pubsub import connection_factory

from .utils import SCALE, Watcher, closed_while_cancelled, run_worker, wait_until

S = JobStatus


async def known(ctx: dict[str, Any]) -> None:
    """The one function the worker knows: the watched job's is not, so arq ends it."""


@pytest.fixture
async def arq_pool(redis_server: RedisServer) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_server.url))
    yield pool
    await pool.aclose()


async def arq_ends_it(tracker: Tracker, pool: ArqRedis) -> JobState:
    """A job enqueued by plain arq, ended by arq alone (function not found): the
    waiter gets that ending. Returns it."""
    job = await pool.enqueue_job("never_decorated")
    assert job is not None
    watcher = await Watcher(tracker, job.job_id).subscribed()
    await run_worker(pool, [known])
    final = (await watcher.finished())[-1]
    assert final.status is S.FAILED and "never_decorated" in (final.error or "")
    return final


async def stats_once_arq_ended_a_job(client: Redis, pool: ArqRedis) -> dict[str, Any]:
    """What a Tracker on ``client`` says of itself once arq ended a job on its own."""
    async with Tracker(client) as tracker:
        await arq_ends_it(tracker, pool)
        return tracker.stats()


async def test_client_tracking_carries_arqs_own_ending(redis: Redis, arq_pool: ArqRedis) -> None:
    """By default arq's own endings come as invalidations, and the mode says so."""
    assert await stats_once_arq_ended_a_job(redis, arq_pool) == {"watching": "client-tracking"}


async def test_acl_denying_client_falls_back_to_the_batched_look(
    redis: Redis, redis_server: RedisServer, arq_pool: ArqRedis
) -> None:
    """A user denied every CLIENT command (no keyspace events either): the batched look."""
    await redis.execute_command(
        "ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", "+@all", "-client"
    )
    limited = Redis.from_url(redis_server.url.replace("redis://", "redis://limited:pw@"))
    stats = await stats_once_arq_ended_a_job(limited, arq_pool)
    await limited.aclose()
    assert stats["watching"] == "batched-look" and "CLIENT" in stats["client_tracking_off"]


async def test_renamed_client_command_falls_back_to_keyspace_events() -> None:
    """CLIENT renamed away (as some hosts do), keyspace events on: they carry it."""
    args = ("--rename-command", "CLIENT", "", "--notify-keyspace-events", "Kg$x")
    with RedisServer(args=args) as server:
        pool = await create_pool(RedisSettings.from_dsn(server.url))
        redis = Redis.from_url(server.url)
        stats = await stats_once_arq_ended_a_job(redis, pool)
        await redis.aclose()
        await pool.aclose()
    assert stats["watching"] == "keyspace-events"
    assert "unknown command" in stats["client_tracking_off"]


@pytest.mark.parametrize("config", ["readable", "denied"])
async def test_eviction_storm_is_detected_and_its_waiters_handed_over(
    redis: Redis, redis_server: RedisServer, arq_pool: ArqRedis, config: str
) -> None:
    """tracking-table-max-keys below the keys tracked makes an endless storm of
    invalidations: caching is turned off, and waiters get arq's ending by the
    batched look. Seen in the limit where CONFIG is readable, else in the rate."""
    await redis.config_set("tracking-table-max-keys", 1)
    await redis.execute_command(
        "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all",
        *(["-config"] if config == "denied" else []),
    )  # fmt: skip
    app = Redis.from_url(redis_server.url.replace("redis://", "redis://app:pw@"))
    jobs = [await arq_pool.enqueue_job("never_decorated") for _ in range(3)]
    try:
        async with Tracker(app) as tracker:
            watchers = [await Watcher(tracker, job.job_id).subscribed() for job in jobs if job]
            await wait_until(
                lambda: tracker.stats()["watching"] == "batched-look",
                timeout=30,
                message="the storm detected",
            )
            assert "storm" in tracker.stats()["client_tracking_off"]
            await run_worker(arq_pool, [known])
            for watcher in watchers:
                assert (await watcher.finished())[-1].status is S.FAILED
    finally:
        await app.aclose()


async def test_waiters_cost_nothing_while_they_wait(redis: Redis) -> None:
    """Forty waiters on queued and running jobs send no command while they wait.

    The window is what the process costs anyway: until each of its five idle
    connections (the channels', caching's two for arq's records and two for ours)
    has sent its PING, every ``ping_interval``. Counted by the server, ``INFO
    commandstats``.
    """
    writer = RedisPubSubStrategy(redis)
    queued = [f"q{i}" for i in range(20)]
    running = [f"r{i}" for i in range(20)]
    for job_id in queued + running:
        await writer.apply(JobUpdate(job_id=job_id, status=S.QUEUED, attempt=0))
    for job_id in running:
        started = JobUpdate(job_id=job_id, status=S.STARTED, attempt=1)
        await writer.apply(started, stalled_after=600)
    async with Tracker(redis) as tracker:
        waiters = [
            asyncio.create_task(tracker.completed(job_id, timeout=60 * SCALE))
            for job_id in queued + running
        ]
        watchers = [await Watcher(tracker, job_id).subscribed() for job_id in queued + running]
        assert tracker.stats()["watching"] == "client-tracking"
        await redis.config_resetstat()
        stats = await wait_until(
            lambda: _pinged(redis), timeout=30, message="each connection's PING"
        )
        assert set(stats) <= {"cmdstat_ping", "cmdstat_info", "cmdstat_config|resetstat"}, stats
        for job_id in queued + running:
            await writer.apply(JobUpdate(job_id=job_id, status=S.FINISHED))
        assert {(await w).status for w in waiters} == {S.FINISHED}
        for watcher in watchers:
            assert (await watcher.finished())[-1].status is S.FINISHED
    await writer.aclose()


class _Counted:
    """A watcher that counts its nudges."""

    def __init__(self) -> None:
        self.nudges = 0

    def request_resync(self) -> None:
        self.nudges += 1


async def _run_here(redis: Redis) -> dict[str, int]:
    """Commands Redis ran since its statistics were reset, by name (INFO itself left out)."""
    stats = await redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    return calls


async def test_a_watchers_reads_track_its_keys_and_watching_sends_nothing(redis: Redis) -> None:
    """Watching sends nothing; a read of the subject's own, on the tracking
    connection, tracks what it reads: its next change is announced once, and a read
    again tracks it again."""
    watch = KeyWatch(connection_factory(redis), on_off=lambda subjects: None)
    sink, other = _Counted(), _Counted()
    assert await watch.watch("job", ["k1"], sink)
    await redis.config_resetstat()
    assert await watch.watch("other", ["k2"], other)
    assert await _run_here(redis) == {}
    with pytest.raises(Untracked):
        await watch.read("nobody", "GET", "k1")  # only a subject's watchers read here
    assert await watch.read("job", "GET", "k1") is None
    assert await watch.read("other", "GET", "k2") is None
    await redis.set("k1", "a")
    await wait_until(lambda: sink.nudges == 1, message="the change's nudge")
    await redis.set("k1", "b")  # forgotten by Redis since its change: no nudge
    await redis.set("k2", "c")  # announced on the same connection after k1's would be
    await wait_until(lambda: other.nudges == 1, message="the other subject's nudge")
    assert sink.nudges == 1
    assert await watch.read("job", "GET", "k1") == b"b"
    await redis.set("k1", "d")
    await wait_until(lambda: sink.nudges == 2, message="the key read again is announced again")
    assert (await _run_here(redis)).get("exists") is None
    await watch.aclose()


async def test_a_read_redis_refuses_is_handed_back_and_the_connection_stays(
    redis: Redis,
) -> None:
    """An error reply to a watcher's read (a wrong type here) is Untracked, for the
    reader to read another way; the connection goes on tracking."""
    watch = KeyWatch(connection_factory(redis), on_off=lambda subjects: None)
    sink = _Counted()
    await redis.set("k1", "a")
    assert await watch.watch("job", ["k1"], sink)
    with pytest.raises(Untracked, match="WRONGTYPE"):
        await watch.read("job", "HGET", "k1", "field")
    assert await watch.read("job", "GET", "k1") == b"a"
    await redis.set("k1", "b")
    await wait_until(lambda: sink.nudges == 1, message="the change's nudge")
    assert watch.connected and watch.off is None
    await watch.aclose()


async def _pinged(redis: Redis) -> dict[str, Any] | None:
    stats = await redis.info("commandstats")
    return stats if stats.get("cmdstat_ping", {}).get("calls", 0) >= 5 else None


@pytest.mark.parametrize("flag", ["t", "P"])
async def test_either_connection_lost_reconnects_both_and_nudges_everyone(
    redis: Redis, arq_pool: ArqRedis, flag: str
) -> None:
    """The tracking connection (flag t) or the invalidation subscriber (P) is killed
    as arq ends the job: both are made again, and the waiter still gets the end."""
    job = await arq_pool.enqueue_job("never_decorated")
    assert job is not None
    async with Tracker(redis) as tracker:
        watcher = await Watcher(tracker, job.job_id).subscribed()
        clients = await redis.client_list()
        # Caching of arq's records, and of ours (a waiter's first read).
        tracking = [c for c in clients if "t" in str(c["flags"])]
        assert len(tracking) == 2
        for client in tracking:
            victim = client["id"] if flag == "t" else str(client["redir"])
            await redis.client_kill_filter(_id=victim)
        await run_worker(arq_pool, [known])
        assert (await watcher.finished())[-1].status is S.FAILED
        await wait_until(
            lambda: _tracking_clients(redis), message="client-side caching reconnected"
        )
        assert tracker.stats() == {"watching": "client-tracking"}


async def _tracking_clients(redis: Redis) -> bool:
    return any("t" in str(c["flags"]) for c in await redis.client_list())


async def test_a_closer_cancelled_while_it_closes_sees_its_cancellation(redis: Redis) -> None:
    """A closer cancelled while it waits for the watch's task is cancelled: aclose does
    not take that CancelledError for the task's; both connections close all the same."""
    watch = KeyWatch(connection_factory(redis), on_off=lambda subjects: None)
    assert await watch.watch("job", ["k1"], _Counted())
    assert await closed_while_cancelled(watch.aclose)
    assert watch.subjects == 0
    await wait_until(lambda: _no_tracking_client(redis), message="client-side caching disconnected")


async def _no_tracking_client(redis: Redis) -> bool:
    return not await _tracking_clients(redis)


class _Monitor:
    """The commands Redis is sent, with the address of the client that sent each
    (``MONITOR``, on a raw connection of its own)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lines: list[tuple[str, str]] = []  # (client address, command name)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Monitor:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(b"MONITOR\r\n")
        assert await reader.readline() == b"+OK\r\n"
        self._task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        # +1700000000.123456 [0 127.0.0.1:50000] "SUBSCRIBE" "imm:..."
        while line := await reader.readline():
            parts = line.decode(errors="replace").split(" ", 3)
            if len(parts) == 4 and parts[2].endswith("]"):
                self.lines.append((parts[2][:-1], parts[3].split('"')[1].lower()))

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self._writer.close()


async def test_a_waiter_sends_four_commands_while_its_job_runs(
    redis_server: RedisServer, redis: Redis
) -> None:
    """A waiter on a running job, by the job's end: its SUBSCRIBE, the snapshot of
    our record and of arq's (each one script on a client-side caching connection,
    which registers the keys it reads), and its UNSUBSCRIBE; nothing while the job
    runs. The process's own setup (caching's connections) is made by a first
    waiter before the count starts."""
    writer = RedisPubSubStrategy(redis)
    for job_id in ("warm", "job"):
        await writer.apply(JobUpdate(job_id=job_id, status=S.QUEUED, attempt=0))
        started = JobUpdate(job_id=job_id, status=S.STARTED, attempt=1)
        await writer.apply(started, stalled_after=600)
    waiter_client = Redis.from_url(redis_server.url, client_name="waiter")
    async with Tracker(waiter_client) as tracker:
        warm = await Watcher(tracker, "warm").subscribed()
        await writer.apply(JobUpdate(job_id="warm", status=S.FINISHED))
        await warm.finished()
        async with _Monitor(redis_server.port) as monitor:
            watcher = await Watcher(tracker, "job").subscribed()
            await writer.apply(JobUpdate(job_id="job", status=S.STARTED, attempt=1, progress=0.5))
            await writer.apply(JobUpdate(job_id="job", status=S.FINISHED))
            assert (await watcher.finished())[-1].status is S.FINISHED

            async def unsubscribed() -> bool:
                return any(name == "unsubscribe" for _, name in monitor.lines)

            await wait_until(unsubscribed, message="the waiter's UNSUBSCRIBE")
            ours = {c["addr"] for c in await redis.client_list() if c["name"] == "waiter"}
            sent = sorted(name for addr, name in monitor.lines if addr in ours)
    await waiter_client.aclose()
    await writer.aclose()
    assert sent == ["eval", "eval", "subscribe", "unsubscribe"], sent
