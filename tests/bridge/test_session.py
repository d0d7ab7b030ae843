"""One websocket connection against a real bridge and Redis: following jobs, bad input."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from immortus_async import JobStatus, RedisPubSubStrategy, RedisServer
from immortus_async.bridge import Bridge, CloseCode, serve

from ..utils import wait_until
from .helpers import (
    OTHER_SECRET,
    SECRET,
    advance,
    expired_token,
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
        await advance(strategy, "job-1", S.STARTED)
        await advance(strategy, "job-1", S.STARTED, progress=0.5, meta={"rows": 5})
        await advance(strategy, "job-1", S.FINISHED)
        frames = await receive_until_completed(client, "job-1")
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
    assert (status, json.loads(body)) == (200, {"status": "ok", "redis": "up"})
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


# Bad input: each case is answered, and a well-behaved client keeps receiving.

BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("malformed JSON", '{"type": "subscribe", ', "invalid_json"),
    ("a JSON array", '["subscribe", "j"]', "invalid_message"),
    ("an unknown type", '{"type": "hello", "job_id": "j"}', "unknown_type"),
    ("no job_id", '{"type": "subscribe", "token": "t"}', "invalid_message"),
    ("a job_id that is a number", '{"type": "subscribe", "job_id": 7}', "invalid_message"),
    ("since_seq not an integer", subscribe("j", since_seq="3"), "invalid_message"),
    ("a job_id over 200 characters", subscribe("j" * 201), "invalid_job_id"),
    ("a job_id with a control character", subscribe("j\n1"), "invalid_job_id"),
    ("a binary frame", b'{"type": "subscribe"}', "binary_frame"),
    ("no token", json.dumps({"type": "subscribe", "job_id": "j"}), "token_required"),
    ("a forged token", subscribe("j", token=token("j", secret=OTHER_SECRET)), "token_invalid"),
    ("garbage for a token", subscribe("j", token="not.a.jwt"), "token_invalid"),
    ("an expired token", subscribe("j", token=expired_token("j")), "token_expired"),
    ("a token for another job", subscribe("j", token=token("other")), "token_invalid"),
]


@pytest.mark.parametrize(
    ("frame", "code"), [case[1:] for case in BAD_FRAMES], ids=[case[0] for case in BAD_FRAMES]
)
async def test_bad_frame_gets_its_error_code(
    bridge: Bridge,
    strategy: RedisPubSubStrategy,
    bystander: ClientConnection,
    frame: str | bytes,
    code: str,
) -> None:
    """Each bad frame is answered by its error frame; the connection stays usable."""
    async with await open_client(bridge) as client:
        await client.send(frame)
        error = await receive(client)
        assert (error["type"], error["code"]) == ("error", code)
        assert isinstance(error["message"], str)
        await client.send(subscribe("good"))  # the same connection still works
        assert (await receive(client))["job_id"] == "good"
    await still_served(bystander, strategy)


async def test_oversized_frame_closes_with_1009(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """A frame over 4 KiB closes that connection with code 1009, and only that one."""
    async with await open_client(bridge) as client:
        await client.send(subscribe("j", padding="x" * 5000))
        with pytest.raises(ConnectionClosedError) as closed:
            await receive(client)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
    await still_served(bystander, strategy)


async def test_the_101st_subscription_is_refused(
    bridge: Bridge, strategy: RedisPubSubStrategy, bystander: ClientConnection
) -> None:
    """A connection holds at most 100 subscriptions; the 101st gets too_many_subscriptions."""
    async with await open_client(bridge) as client:
        for n in range(100):
            await client.send(subscribe(f"many-{n}"))
        received = {(await receive(client))["job_id"] for _ in range(100)}
        assert len(received) == 100
        await client.send(subscribe("many-100"))
        error = await receive(client)
        assert (error["code"], error["job_id"]) == ("too_many_subscriptions", "many-100")
        await client.send(subscribe("many-0"))  # renewing a held one is not a new one
        await advance(strategy, "many-0", S.STARTED)
        frame = await receive(client)
        assert (frame["type"], frame["job_id"]) == ("state", "many-0")
    await still_served(bystander, strategy)


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
