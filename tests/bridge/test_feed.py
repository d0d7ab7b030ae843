"""Owner feeds over the protocol, bridge and mount: snapshot, changes, refusals, limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from immortus_async import (
    JobStatus,
    JobUpdate,
    RedisPubSubStrategy,
    RedisServer,
    Tracker,
    mint_owner_token,
)
from immortus_async.bridge import Bridge, serve

from ..utils import SCALE
from .helpers import (
    MOUNT_PATH,
    SECRET,
    MountServer,
    advance,
    open_client,
    read_events,
    receive,
    subscribe,
    token,
)

S = JobStatus


def subscribe_owner(name: str, **fields: Any) -> str:
    """A subscribe_owner message with a valid owner token unless ``fields`` says otherwise."""
    message = {"type": "subscribe_owner", "owner": name, "token": owner_token(name), **fields}
    return json.dumps(message)


def owner_token(owner: str) -> str:
    return mint_owner_token(owner, SECRET, ttl=300)


async def queue_for(strategy: RedisPubSubStrategy, job_id: str, owner: str) -> None:
    """The queued write of an enqueue with ``owner=``."""
    await strategy.apply(JobUpdate(job_id=job_id, status=S.QUEUED, attempt=0), owner=owner)


async def next_owner_state(client: ClientConnection) -> dict[str, Any]:
    frame = await receive(client)
    assert frame["type"] == "owner_state", frame
    return frame


async def test_a_feed_sends_the_owners_jobs_then_each_change_and_never_anothers(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """Snapshot of ada's jobs, then her new job and each change; bob's job never shows."""
    await queue_for(strategy, "ada-1", "ada")
    async with await open_client(bridge) as client:
        await client.send(subscribe_owner("ada"))
        snapshot = await next_owner_state(client)
        assert (snapshot["owner"], snapshot["job_id"], snapshot["status"]) == (
            "ada",
            "ada-1",
            "queued",
        )
        await queue_for(strategy, "bob-1", "bob")
        await advance(strategy, "bob-1", S.FINISHED)
        await queue_for(strategy, "ada-2", "ada")
        assert (await next_owner_state(client))["job_id"] == "ada-2"
        # The job side knows no owner: its writes reach the feed all the same.
        await advance(strategy, "ada-1", S.FINISHED)
        end = await next_owner_state(client)
        assert (end["job_id"], end["status"], end["completed"]) == ("ada-1", "finished", True)


async def test_owner_feeds_refuse_what_does_not_open_them(bridge: Bridge) -> None:
    """No token, another owner's token, a job's token: refused, naming the owner."""
    async with await open_client(bridge) as client:
        for bad, code in [
            ({"token": None}, "token_required"),
            ({"token": owner_token("bob")}, "token_invalid"),
            ({"token": token("ada")}, "token_invalid"),
            ({"owner": ""}, "invalid_job_id"),
        ]:
            await client.send(subscribe_owner("ada", **bad))
            frame = await receive(client)
            assert (frame["type"], frame["code"]) == ("error", code), frame
            assert frame.get("owner", "ada") == "ada" and "job_id" not in frame
        # An owner token opens no job.
        await client.send(subscribe("ada", token=owner_token("ada")))
        assert (await receive(client))["code"] == "token_invalid"


async def test_a_feed_ends_with_token_expired_at_its_tokens_exp(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """A live feed gets token_expired, naming its owner, when its token's exp passes."""
    await queue_for(strategy, "ada-1", "ada")
    async with await open_client(bridge) as client:
        short = mint_owner_token("ada", SECRET, ttl=1.5)
        await client.send(subscribe_owner("ada", token=short))
        assert (await next_owner_state(client))["job_id"] == "ada-1"
        ended = await receive(client, timeout=5)
        assert (ended["type"], ended["code"], ended["owner"]) == ("error", "token_expired", "ada")
        assert "job_id" not in ended


@pytest.fixture
async def limited(
    bridge: Bridge | MountServer, redis_server: RedisServer
) -> AsyncIterator[Bridge | MountServer]:
    """A server of the same kind as ``bridge`` allowing two subscriptions a connection."""
    if isinstance(bridge, MountServer):
        async with Tracker(redis_server.url) as tracker:
            server = await MountServer(tracker, secret=SECRET, max_subscriptions=2).start()
            yield server
            await server.stop()
        return
    async with serve(redis_server.url, "127.0.0.1", 0, secret=SECRET, max_subscriptions=2) as small:
        yield small


async def test_feeds_count_against_the_connections_subscription_limit(
    limited: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """A job and a feed fill two slots; a third feed is refused, the same one again is not."""
    await queue_for(strategy, "ada-1", "ada")
    async with await open_client(limited) as client:
        await client.send(subscribe("ada-1"))
        assert (await receive(client))["type"] == "state"
        await client.send(subscribe_owner("ada"))
        assert (await next_owner_state(client))["job_id"] == "ada-1"
        await client.send(subscribe_owner("bob"))
        refused = await receive(client)
        assert (refused["code"], refused["owner"]) == ("too_many_subscriptions", "bob")
        # Renewing a feed takes no new slot; it sends a fresh snapshot.
        await client.send(subscribe_owner("ada"))
        assert (await next_owner_state(client))["job_id"] == "ada-1"
        await client.send(json.dumps({"type": "unsubscribe_owner", "owner": "ada"}))
        await client.send(subscribe_owner("bob"))
        await queue_for(strategy, "bob-1", "bob")
        assert (await next_owner_state(client))["owner"] == "bob"
        assert limited.statistics().subscriptions == 2


# The mount: the app's authorize_owner, and the feed as an event stream

USERS = {b"user=ada": "ada", b"user=bob": "bob"}


def _user(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"cookie":
            return USERS.get(value)
    return None


@pytest.fixture
async def app_mount(redis_server: RedisServer) -> AsyncIterator[MountServer]:
    """A mount without a secret: a user's cookie opens that user's own feed alone."""
    async with Tracker(redis_server.url) as tracker:
        server = await MountServer(
            tracker,
            authorize=lambda scope, job_id: False,
            authorize_owner=lambda scope, owner: _user(scope) == owner,
        ).start()
        yield server
        await server.stop()


ADA = {"Cookie": "user=ada"}


async def test_authorize_owner_opens_the_users_own_feed_only(
    app_mount: MountServer, strategy: RedisPubSubStrategy
) -> None:
    """Ada's cookie opens ada's feed; bob's feed answers exactly as a refused job does."""
    await queue_for(strategy, "ada-1", "ada")
    async with await open_client(app_mount, additional_headers=ADA) as client:
        await client.send(json.dumps({"type": "subscribe_owner", "owner": "ada"}))
        assert (await next_owner_state(client))["job_id"] == "ada-1"
        await client.send(json.dumps({"type": "subscribe_owner", "owner": "bob"}))
        refused = await receive(client)
        assert refused == {
            "type": "error",
            "code": "not_found",
            "message": "no such owner",
            "owner": "bob",
        }
        await client.send(json.dumps({"type": "subscribe", "job_id": "ada-1"}))
        assert (await receive(client))["code"] == "not_found"


async def test_a_feed_streams_as_server_sent_events_to_its_owner_only(
    app_mount: MountServer, strategy: RedisPubSubStrategy
) -> None:
    """GET /owners/ada/events with ada's cookie streams her jobs; bob's is 404 not_found."""
    await queue_for(strategy, "ada-1", "ada")
    base = f"http://127.0.0.1:{app_mount.port}{MOUNT_PATH}/owners"
    async with httpx.AsyncClient(timeout=10 * SCALE) as http:
        refused = await http.get(f"{base}/bob/events", headers=ADA)
        assert (refused.status_code, refused.json()["code"]) == (404, "not_found")
        async with http.stream("GET", f"{base}/ada/events", headers=ADA) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_events(response.aiter_lines())
            first = await anext(events)
            assert (first["event"], first["data"]["job_id"]) == ("owner_state", "ada-1")
            await advance(strategy, "ada-1", S.FINISHED)
            second = await anext(events)
            assert second["data"]["status"] == "finished"


async def test_connecting_to_an_owners_path_subscribes_to_the_feed(
    bridge: Bridge, strategy: RedisPubSubStrategy
) -> None:
    """ws://.../owners/<owner>?token=... is subscribe_owner on connect, refusals included."""
    await queue_for(strategy, "ada/1", "ada/x")
    path = f"/owners/ada%2Fx?token={owner_token('ada/x')}"
    async with await open_client(bridge, path) as client:
        frame = await next_owner_state(client)
        assert (frame["owner"], frame["job_id"]) == ("ada/x", "ada/1")
    async with await open_client(bridge, f"/owners/bob?token={owner_token('ada')}") as client:
        refused = await receive(client)
        assert (refused["code"], refused["owner"]) == ("token_invalid", "bob")
