"""One websocket connection against a real bridge and Redis: following jobs, bad input."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from immortus_async import (
    InvalidStateError,
    JobLost,
    JobState,
    JobStatus,
    RedisPubSubStrategy,
    RedisServer,
    RedisUnavailable,
)
from immortus_async.bridge import Bridge, serve

from ..utils import SCALE, WriteEndingAsCancelled, wait_until
from .helpers import (
    SECRET,
    advance,
    http_get,
    open_client,
    receive,
    receive_until_completed,
    still_served,
    subscribe,
    token,
)

S = JobStatus


async def test_client_follows_a_job_from_snapshot_to_finished(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """Snapshot on subscribe, then each change to finished, seq rising; /verify agrees."""
    await advance(strategy, "job-1", S.QUEUED)
    async with await open_client(bridge) as client:
        await client.send(subscribe("job-1"))
        snapshot = await receive(client)
        assert (snapshot["type"], snapshot["status"], snapshot["seq"]) == ("state", "queued", 1)
        # Each change is awaited before the next: a client that reads late is sent
        # only the newest of several non-terminal states (the outbox coalesces them).
        await advance(strategy, "job-1", S.STARTED)
        frames = [await receive(client)]
        await advance(strategy, "job-1", S.STARTED, progress=0.5, meta={"rows": 5})
        frames.append(await receive(client))
        await advance(strategy, "job-1", S.FINISHED)
        frames += await receive_until_completed(client, "job-1")
    assert [f["status"] for f in frames] == ["started", "started", "finished"]
    assert [f["seq"] for f in frames] == [2, 3, 4]
    assert frames[1]["progress"] == 0.5 and frames[1]["meta"] == {"rows": 5}
    status, headers, body = await http_get(bridge, f"/verify/job-1?token={token('job-1')}")
    assert status == 200 and headers["content-type"] == "application/json"
    final = frames[-1]
    del final["type"]
    assert json.loads(body) == final


async def test_healthz_reports_redis_down_while_it_is_down(
    bridge: Bridge, redis_server: RedisServer
) -> None:
    """/healthz answers 200 while Redis answers PING, 503 while it is stopped."""
    status, _, body = await http_get(bridge, "/healthz")
    assert status == 200
    assert json.loads(body).items() >= {"status": "ok", "redis": "up"}.items()
    redis_server.stop(kill=True)
    status, _, body = await http_get(bridge, "/healthz")
    assert (status, json.loads(body)["redis"]) == (503, "down")
    redis_server.start()
    status, _, _ = await http_get(bridge, "/healthz")
    assert status == 200


async def test_since_seq_skips_a_snapshot_the_client_already_has(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """With since_seq at the snapshot's seq, the first frame is the next change."""
    await advance(strategy, "s", S.QUEUED)
    await advance(strategy, "s", S.STARTED)
    async with await open_client(bridge) as client:
        await client.send(subscribe("s", since_seq=2))
        await client.send(subscribe("other"))  # its snapshot proves "s" was subscribed first
        assert (await receive(client))["job_id"] == "other"
        await advance(strategy, "s", S.FINISHED)
        frame = await receive(client)
    assert (frame["job_id"], frame["status"], frame["seq"]) == ("s", "finished", 3)


async def test_since_seq_after_history_loss_delivers_the_new_history(
    bridge: Bridge, strategy: RedisPubSubStrategy, redis: Redis
) -> None:
    """Redis lost the job (FLUSHALL) and its seq counts from 1 again: a resubscription
    with the old since_seq gets the lower-seq snapshot, and a lower-seq terminal one."""
    for status in (S.QUEUED, S.STARTED, S.STARTED):
        await advance(strategy, "h", status)
        await advance(strategy, "t", status)
    await redis.flushall()
    await advance(strategy, "h", S.STARTED, progress=0.8)
    await advance(strategy, "t", S.STARTED)
    await advance(strategy, "t", S.FINISHED)
    async with await open_client(bridge) as client:
        await client.send(subscribe("h", since_seq=3))
        frame = await receive(client)
        assert (frame["job_id"], frame["seq"], frame["progress"]) == ("h", 1, 0.8)
        await client.send(subscribe("t", since_seq=3))
        frame = await receive(client)
        assert (frame["job_id"], frame["status"], frame["seq"]) == ("t", "finished", 2)


async def test_since_seq_on_a_job_redis_lost_ends_with_job_lost(
    bridge: Bridge, strategy: RedisPubSubStrategy, redis: Redis
) -> None:
    """A resubscription with since_seq > 0 to a job Redis no longer knows ends at once
    with a job_lost error frame instead of waiting for ever."""
    await advance(strategy, "gone", S.STARTED)
    await redis.flushall()
    async with await open_client(bridge) as client:
        await client.send(subscribe("gone", since_seq=1))
        error = await receive(client)
        assert (error["type"], error["code"], error["job_id"]) == ("error", "job_lost", "gone")
        # since_seq 0: the client has seen only "unknown", so the job was not lost.
        await client.send(subscribe("new", since_seq=0))
        await wait_until(lambda: bridge.statistics().subscriptions == 1, message="the follow")
        await advance(strategy, "new", S.STARTED)
        assert (await receive(client))["job_id"] == "new"


async def test_jobs_ending_together_on_one_connection_end_cleanly(
    bridge: Bridge, strategy: RedisPubSubStrategy, caplog: pytest.LogCaptureFixture
) -> None:
    """Many jobs of one connection ending at once: each ends with its terminal state and
    nothing after it (no internal_error frame), and no error is logged."""
    jobs = [f"together-{n}" for n in range(30)]
    async with await open_client(bridge) as client:
        for job_id in jobs:
            await advance(strategy, job_id, S.STARTED)
            await client.send(subscribe(job_id))
        assert {(await receive(client))["job_id"] for _ in jobs} == set(jobs)
        for _ in range(3):  # each round ends ten jobs at once
            ending, jobs = jobs[:10], jobs[10:]
            await asyncio.gather(*(advance(strategy, job_id, S.FINISHED) for job_id in ending))
            frames = [await receive(client) for _ in ending]
            assert {(f["type"], f["status"]) for f in frames} == {("state", "finished")}
        await wait_until(lambda: bridge.statistics().subscriptions == 0, message="the ends")
        # A later subscription's snapshot comes next: nothing came after the ends.
        await client.send(subscribe("after"))
        assert (await receive(client))["job_id"] == "after"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


class EndingStrategy(RedisPubSubStrategy):
    """Redis pub/sub tracking whose watch of a job in :attr:`ends` yields the snapshot,
    then raises what the hub raises when Redis loses the job or cannot be reached."""

    ends: ClassVar[dict[str, Exception]] = {
        "lost": JobLost("lost"),
        "unreachable": RedisUnavailable("cannot reach Redis for 30s"),
        "fails-after-its-end": InvalidStateError("a corrupt message"),
    }

    def watch(self, job_id: str, **options: Any) -> AsyncIterator[JobState]:
        if job_id not in self.ends:
            return super().watch(job_id, **options)
        return self._ending(job_id)

    async def _ending(self, job_id: str) -> AsyncIterator[JobState]:
        yield await self.status(job_id)
        raise self.ends[job_id]


@pytest.mark.parametrize(
    ("job_id", "status", "ending"),
    [
        ("lost", S.STARTED, "job_lost"),
        ("unreachable", S.STARTED, "redis_unavailable"),
        ("fails-after-its-end", S.FINISHED, None),
    ],
)
async def test_a_watch_that_ends_with_an_error_ends_the_subscription(
    redis_server: RedisServer,
    redis: Redis,
    job_id: str,
    status: JobStatus,
    ending: str | None,
) -> None:
    """JobLost and RedisUnavailable from the watch end the subscription with job_lost
    and redis_unavailable frames; after a terminal state, nothing comes at all."""
    strategy = EndingStrategy(redis)
    await advance(strategy, job_id, status)
    async with serve(
        redis_server.url, "127.0.0.1", 0, secret=SECRET, tracking_strategy=strategy
    ) as bridge:
        async with await open_client(bridge) as client:
            await client.send(subscribe(job_id))
            assert (await receive(client))["status"] == status
            if ending is not None:
                error = await receive(client)
                assert (error["type"], error["code"], error["job_id"]) == ("error", ending, job_id)
            await wait_until(lambda: bridge.statistics().subscriptions == 0, message="the end")
            await client.send(subscribe("after"))
            assert (await receive(client))["job_id"] == "after"


async def test_jobs_path_subscribes_on_connect(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """ws://host:port/jobs/<percent-encoded id>?token= subscribes without a message."""
    job_id = "a/b c"
    await advance(strategy, job_id, S.STARTED)
    path = f"/jobs/a%2Fb%20c?token={token(job_id)}"
    async with await open_client(bridge, path) as client:
        assert (await receive(client))["job_id"] == job_id
        await advance(strategy, job_id, S.FINISHED)
        assert (await receive(client))["status"] == "finished"


async def test_unsubscribe_stops_the_frames_of_that_job(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """After unsubscribe no frame of that job arrives; the other job's still do."""
    async with await open_client(bridge) as client:
        for job_id in ("u", "v"):
            await client.send(subscribe(job_id))
            assert (await receive(client))["job_id"] == job_id
        await client.send(json.dumps({"type": "unsubscribe", "job_id": "u"}))
        await client.send(json.dumps({"type": "unsubscribe", "job_id": "never"}))  # idempotent
        await wait_until(lambda: bridge.statistics().subscriptions == 1, message="the unsubscribe")
        await advance(strategy, "u", S.STARTED)
        await advance(strategy, "v", S.STARTED)
        frame = await receive(client)
    assert frame["job_id"] == "v"


async def test_an_expired_token_ends_the_subscription_at_its_exp(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """A live subscription gets token_expired when its token's exp passes, then nothing."""
    await advance(strategy, "e", S.STARTED)
    async with await open_client(bridge) as client:
        await client.send(subscribe("e", token=token("e", ttl=1.5)))
        assert (await receive(client))["type"] == "state"
        ended = await receive(client, timeout=5)
        assert (ended["type"], ended["code"], ended["job_id"]) == ("error", "token_expired", "e")
        assert bridge.statistics().subscriptions == 0
        # Renewing: subscribe again with a fresh token and since_seq.
        await client.send(subscribe("e", since_seq=1))
        await advance(strategy, "e", S.FINISHED)
        assert (await receive(client))["status"] == "finished"


async def test_foreign_origin_is_refused_with_403(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """A handshake from a foreign Origin gets HTTP 403; the bridge's own origin is fine."""
    with pytest.raises(InvalidStatus) as refused:
        await open_client(bridge, origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["code"] == "origin_not_allowed"
    own = f"http://127.0.0.1:{bridge.port}"
    async with await open_client(bridge, origin=own) as client:  # type: ignore[arg-type]
        await client.send(subscribe("good"))
        assert (await receive(client))["job_id"] == "good"
    await still_served(bystander, strategy)


async def test_a_peer_that_stops_answering_pings_is_dropped(
    redis_server: RedisServer, strategy: RedisPubSubStrategy
) -> None:
    """Keepalive: a client that no longer answers pings is disconnected, its tasks gone."""
    async with serve(
        redis_server.url,
        "127.0.0.1",
        0,
        secret=SECRET,
        ping_interval=0.1,
        ping_timeout=0.2,
        close_timeout=0.2,
    ) as bridge:
        client = await open_client(bridge, ping_interval=None)
        await client.send(subscribe("dead"))
        assert (await receive(client))["job_id"] == "dead"
        client.transport.pause_reading()  # a frozen peer: it reads no ping, sends no pong
        await wait_until(lambda: bridge.statistics().connections == 0, message="the drop")
        assert bridge.statistics().subscriptions == 0
        client.transport.abort()


@pytest.fixture
async def holding_bridge(redis_server: RedisServer) -> AsyncIterator[Bridge]:
    """A bridge whose Redis client writes through :class:`WriteEndingAsCancelled`, with
    a socket_timeout (so through ``asyncio.wait_for``) and no fallback strategy: a
    subscription's snapshot is read in its own task, on the client (without
    client-side caching, whose connection has no socket_timeout)."""
    redis = Redis.from_url(
        redis_server.url, connection_class=WriteEndingAsCancelled, socket_timeout=30 * SCALE
    )
    reader = RedisPubSubStrategy(redis, client_tracking=False)
    bridge = await serve(redis, "127.0.0.1", 0, secret=SECRET, tracking_strategy=reader)
    try:
        yield bridge
    finally:
        WriteEndingAsCancelled.armed = False
        await bridge.aclose()
        await reader.aclose()
        await redis.aclose()


async def test_a_subscription_ends_when_its_client_leaves_as_a_redis_write_completes(
    holding_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """A client leaves just as its subscription's snapshot write to Redis completes:
    the subscription ends all the same, and the bridge closes."""
    await advance(strategy, "w", S.STARTED)
    held = WriteEndingAsCancelled.arm()
    async with await open_client(holding_bridge) as client:
        await client.send(subscribe("w"))
        async with asyncio.timeout(10 * SCALE):
            await held.wait()
    async with asyncio.timeout(10 * SCALE):
        await holding_bridge.aclose()


async def test_a_token_that_expires_as_a_redis_write_completes_ends_the_subscription(
    holding_bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """A token expires just as its subscription's snapshot write to Redis completes:
    the subscription ends with token_expired all the same, not later, not never."""
    await advance(strategy, "x", S.STARTED)
    held = WriteEndingAsCancelled.arm()
    async with await open_client(holding_bridge) as client:
        # exp is in whole seconds: this one passes 1 to 2 units from now, long
        # after the snapshot's write is held (it is held until the expiry).
        await client.send(subscribe("x", token=token("x", ttl=2 * SCALE)))
        frame = await receive(client)
        if frame["type"] == "state":  # the snapshot's reply was read in one go
            frame = await receive(client)
        assert (frame["type"], frame["code"], frame["job_id"]) == ("error", "token_expired", "x")
        assert held.is_set(), "the token expired before the write was held"
        await wait_until(
            lambda: holding_bridge.statistics().subscriptions == 0, message="the subscription's end"
        )
