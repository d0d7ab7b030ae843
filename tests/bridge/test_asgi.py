"""The ASGI mount's own face, served by real uvicorn: event streams and the app's authorize."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from immortus_async import JobStatus, RedisPubSubStrategy, RedisServer, Tracker

from ..utils import SCALE, wait_until
from .helpers import (
    MOUNT_PATH,
    MountServer,
    advance,
    open_client,
    read_events,
    receive,
    token,
)

S = JobStatus


def _events_url(server: MountServer, job_id: str, **query: Any) -> str:
    url = f"http://127.0.0.1:{server.port}{MOUNT_PATH}/jobs/{job_id}/events"
    return str(httpx.URL(url, params=query))


async def _open_events(
    http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in read_events(response.aiter_lines()):
            yield event


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that reads event streams as they come."""
    async with httpx.AsyncClient(timeout=10 * SCALE) as client:
        yield client


@pytest.fixture
async def mount(redis_server: RedisServer) -> AsyncIterator[MountServer]:
    """uvicorn serving the mount, tokens signed with the tests' secret."""
    from .helpers import SECRET

    async with Tracker(redis_server.url) as tracker:
        server = await MountServer(tracker, secret=SECRET).start()
        yield server
        await server.stop()


async def test_events_carry_each_state_with_its_seq_and_end_after_the_terminal(
    mount: MountServer, strategy: RedisPubSubStrategy, http: httpx.AsyncClient
) -> None:
    """GET /jobs/<id>/events: one event a state, id = seq, data = the websocket frame; the
    response ends after the terminal state."""
    await advance(strategy, "s1", S.QUEUED)
    events = []
    async for event in _open_events(http, _events_url(mount, "s1", token=token("s1"))):
        events.append(event)
        if event["data"]["seq"] == 1:
            await advance(strategy, "s1", S.STARTED)
        elif event["data"]["seq"] == 2:
            await advance(strategy, "s1", S.FINISHED)
    assert [(e["id"], e["data"]["status"]) for e in events] == [
        ("1", "queued"),
        ("2", "started"),
        ("3", "finished"),
    ]
    assert all(e["data"]["type"] == "state" and "event" not in e for e in events)


async def test_events_resume_after_a_restart_with_every_state_once(
    mount: MountServer, strategy: RedisPubSubStrategy, http: httpx.AsyncClient
) -> None:
    """The server restarts mid-job; resuming from Last-Event-ID delivers each state once."""
    url = _events_url(mount, "r1", token=token("r1"))
    await advance(strategy, "r1", S.STARTED)
    seen: list[int] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async for event in _open_events(http, url):
            seen.append(int(event["id"]))
            if len(seen) == 1:
                await advance(strategy, "r1", S.STARTED, progress=0.25)
            else:
                await mount.stop()  # the stream breaks off mid-job
    await advance(strategy, "r1", S.STARTED, progress=0.5)  # while nobody serves
    await mount.start()
    async for event in _open_events(http, url, {"Last-Event-ID": str(seen[-1])}):
        seen.append(int(event["id"]))
        if event["data"]["progress"] == 0.5:
            await advance(strategy, "r1", S.FINISHED)
    assert seen == [1, 2, 3, 4]


async def test_events_end_with_an_error_event_when_the_subscription_ends(
    mount: MountServer, http: httpx.AsyncClient
) -> None:
    """Resuming a job Redis no longer knows: one ``event: error`` job_lost, then the end."""
    url = _events_url(mount, "gone", token=token("gone"))
    events = [event async for event in _open_events(http, url, {"Last-Event-ID": "3"})]
    assert len(events) == 1 and events[0]["event"] == "error" and "id" not in events[0]
    assert events[0]["data"] == {
        "type": "error",
        "code": "job_lost",
        "message": events[0]["data"]["message"],
        "job_id": "gone",
    }


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({}, 401, "token_required"),
        ({"token": "not-a-jwt"}, 403, "token_invalid"),
        ({"token": token("another")}, 403, "token_invalid"),
    ],
    ids=["no token", "a malformed token", "another job's token"],
)
async def test_refused_events_answer_as_verify_does(
    mount: MountServer, http: httpx.AsyncClient, query: dict[str, str], status: int, code: str
) -> None:
    """An event stream refused before it starts is an HTTP error with verify's status and body."""
    streamed = await http.get(_events_url(mount, "j", **query))
    verified = await http.get(
        str(httpx.URL(f"http://127.0.0.1:{mount.port}{MOUNT_PATH}/jobs/j", params=query))
    )
    assert (streamed.status_code, streamed.json()["code"]) == (status, code)
    assert (streamed.status_code, streamed.content) == (verified.status_code, verified.content)


# authorize: the app's own decision


OWNERS = {"mine": "alice", "theirs": "bob"}


def _user(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"cookie" and value.startswith(b"user="):
            return str(value[5:].decode())
    return None


def _sync_authorize(scope: Any, job_id: str) -> bool:
    return OWNERS.get(job_id) == _user(scope)


async def _async_authorize(scope: Any, job_id: str) -> bool:
    return _sync_authorize(scope, job_id)


@pytest.fixture(params=[_sync_authorize, _async_authorize], ids=["sync", "async"])
async def app_mount(
    request: pytest.FixtureRequest, redis_server: RedisServer, strategy: RedisPubSubStrategy
) -> AsyncIterator[MountServer]:
    """A mount without a secret: alice's cookie opens job "mine"; "theirs" is bob's."""
    for job_id in OWNERS:
        await advance(strategy, job_id, S.STARTED)
    async with Tracker(redis_server.url) as tracker:
        server = await MountServer(tracker, authorize=request.param).start()
        yield server
        await server.stop()


ALICE = {"Cookie": "user=alice"}


async def test_authorize_opens_a_job_without_a_token(
    app_mount: MountServer, strategy: RedisPubSubStrategy, http: httpx.AsyncClient
) -> None:
    """What authorize allows is served by verify, the event stream and the websocket."""
    base = f"http://127.0.0.1:{app_mount.port}{MOUNT_PATH}"
    verified = await http.get(f"{base}/jobs/mine", headers=ALICE)
    assert (verified.status_code, verified.json()["status"]) == (200, "started")
    async with await open_client(app_mount, additional_headers=ALICE) as client:
        await client.send(json.dumps({"type": "subscribe", "job_id": "mine"}))
        assert (await receive(client))["seq"] == 1
        await advance(strategy, "mine", S.FINISHED)
        assert (await receive(client))["status"] == "finished"
    events = [e async for e in _open_events(http, f"{base}/jobs/mine/events", ALICE)]
    assert [e["data"]["status"] for e in events] == ["finished"]


async def _http_answer(http: httpx.AsyncClient, url: str) -> tuple[int, list[Any], bytes]:
    response = await http.get(url, headers=ALICE)
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "date"]
    return response.status_code, headers, response.content


async def _websocket_answers(server: MountServer, job_id: str) -> list[str | bytes]:
    async def one(client: ClientConnection, *frames: str) -> str | bytes:
        for frame in frames:
            await client.send(frame)
        return await client.recv()

    subscribe = json.dumps({"type": "subscribe", "job_id": job_id})
    async with await open_client(server, additional_headers=ALICE) as client:
        by_message = await one(client, subscribe)
    async with await open_client(server, f"/jobs/{job_id}", additional_headers=ALICE) as client:
        by_path = await one(client)
    return [by_message, by_path]


async def test_a_refused_job_answers_byte_for_byte_as_an_unknown_job(
    app_mount: MountServer, http: httpx.AsyncClient
) -> None:
    """Bob's existing job and a job that was never enqueued get the same bytes: HTTP 404
    not_found on verify and events, a not_found error frame on the websocket."""
    base = f"http://127.0.0.1:{app_mount.port}{MOUNT_PATH}"
    answers = {}
    for job_id in ("theirs", "never-enqueued"):
        answers[job_id] = [
            await _http_answer(http, f"{base}/jobs/{job_id}"),
            await _http_answer(http, f"{base}/verify/{job_id}"),
            await _http_answer(http, f"{base}/jobs/{job_id}/events"),
            await _websocket_answers(app_mount, job_id),
        ]
    refused, unknown = answers["theirs"], answers["never-enqueued"]
    # HTTP answers name no job: identical, headers included (but Date).
    assert refused[:3] == unknown[:3]
    # A websocket frame names the subscription's job, the id the client sent.
    assert [str(f).replace("theirs", "?") for f in refused[3]] == [
        str(f).replace("never-enqueued", "?") for f in unknown[3]
    ]
    status, _, body = refused[0]
    assert (status, json.loads(body)) == (
        404,
        {"type": "error", "code": "not_found", "message": "no such job"},
    )
    frame = json.loads(refused[3][0])
    assert frame == {
        "type": "error",
        "code": "not_found",
        "message": "no such job",
        "job_id": "theirs",
    }
    assert app_mount.statistics().subscriptions == 0


async def test_a_client_leaving_an_event_stream_ends_its_subscription(
    mount: MountServer, strategy: RedisPubSubStrategy, http: httpx.AsyncClient
) -> None:
    """The mount reads nothing from an event stream, yet notices the client leaving."""
    await advance(strategy, "left", S.STARTED)
    async for event in _open_events(http, _events_url(mount, "left", token=token("left"))):
        assert event["data"]["seq"] == 1
        assert mount.statistics().subscriptions == 1
        break  # leaves the response: the connection closes
    await wait_until(lambda: mount.statistics().connections == 0, message="the end")


async def test_a_job_id_with_a_slash_is_one_path_segment(
    mount: MountServer, strategy: RedisPubSubStrategy, http: httpx.AsyncClient
) -> None:
    """Percent-encoded slashes stay in the job id (raw_path): "a/events" is a job, not a
    stream of job "a"."""
    await advance(strategy, "a/events", S.STARTED)
    base = f"http://127.0.0.1:{mount.port}{MOUNT_PATH}/jobs/a%2Fevents"
    verified = await http.get(base, params={"token": token("a/events")})
    assert (verified.status_code, verified.json()["job_id"]) == (200, "a/events")
    await advance(strategy, "a/events", S.FINISHED)
    url = str(httpx.URL(f"{base}/events", params={"token": token("a/events")}))
    events = [event async for event in _open_events(http, url)]
    assert [(e["data"]["job_id"], e["data"]["status"]) for e in events] == [
        ("a/events", "finished")
    ]
