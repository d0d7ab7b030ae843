"""Abort over the protocol: the websocket's ``abort`` message and ``POST
/jobs/<id>/abort``, on the bridge and on the mount, through a real arq queue."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from playwright.async_api import Page

from immortus_async import RedisServer, Tracker
from immortus_async.bridge import serve

from .helpers import (
    SECRET,
    Listening,
    MountServer,
    PageServer,
    follow_page,
    http_get,
    open_client,
    receive,
    receive_until_completed,
    subscribe,
    token,
)

pytest.importorskip("arq", reason="the abort tests abort jobs in arq's queue")

from arq.connections import ArqRedis, RedisSettings, create_pool

SERVERS = ["bridge", "mount"]


@asynccontextmanager
async def started(kind: str, redis_url: str, **options: Any) -> AsyncIterator[Listening]:
    """The bridge or the mount (uvicorn, FastAPI) with ``options``, on a free port."""
    if kind == "mount":
        async with Tracker(redis_url) as tracker:
            server = await MountServer(tracker, secret=SECRET, **options).start()
            try:
                yield server
            finally:
                await server.stop()
        return
    async with serve(redis_url, "127.0.0.1", 0, secret=SECRET, **options) as bridge:
        yield bridge


@pytest.fixture
async def pool(redis_server: RedisServer) -> AsyncIterator[ArqRedis]:
    """arq's pool on the test's Redis; no worker runs, so an enqueued job stays queued."""
    made = await create_pool(RedisSettings.from_dsn(redis_server.url))
    yield made
    await made.aclose()


@pytest.fixture
async def queued(redis_server: RedisServer, pool: ArqRedis) -> Callable[[], Any]:
    """Enqueue a job in arq's queue (tracked: ``queued``); its id."""

    async def enqueue() -> str:
        async with Tracker(redis_server.url) as tracker:
            job = await tracker.enqueue(pool, "some_function")
        assert job is not None
        return str(job.job_id)

    return enqueue


def abort(job_id: str, **fields: Any) -> str:
    return json.dumps({"type": "abort", "job_id": job_id, "token": token(job_id), **fields})


@pytest.mark.parametrize("kind", SERVERS)
async def test_abort_message_aborts_a_queued_job_for_its_followers(
    kind: str, redis_server: RedisServer, queued: Callable[[], Any], pool: ArqRedis
) -> None:
    """``abort`` from one client: it gets the reply; a follower on another
    connection gets the terminal aborted; arq's queue no longer has the job."""
    job_id = await queued()
    async with started(kind, redis_server.url, allow_abort=True) as server:
        async with await open_client(server) as follower, await open_client(server) as client:
            await follower.send(subscribe(job_id))
            assert (await receive(follower))["status"] == "queued"
            await client.send(abort(job_id))
            assert await receive(client) == {"type": "abort", "job_id": job_id, "requested": True}
            frames = await receive_until_completed(follower, job_id)
            assert frames[-1]["status"] == "aborted"
            await client.send(abort(job_id))  # once it has ended: nothing to ask
            assert await receive(client) == {"type": "abort", "job_id": job_id, "requested": False}
    assert await pool.zscore("arq:queue", job_id) is None


@pytest.mark.parametrize("kind", SERVERS)
async def test_abort_endpoint_aborts_a_queued_job(
    kind: str, redis_server: RedisServer, queued: Callable[[], Any]
) -> None:
    """``POST /jobs/<id>/abort?token=...``: 200 with the reply; the job reads aborted."""
    job_id = await queued()
    async with started(kind, redis_server.url, allow_abort=True) as server:
        path = f"/jobs/{job_id}/abort?token={token(job_id)}"
        status, _, body = await http_get(server, path, method="POST")
        assert (status, json.loads(body)) == (
            200,
            {"type": "abort", "job_id": job_id, "requested": True},
        )
        status, _, body = await http_get(server, f"/verify/{job_id}?token={token(job_id)}")
        assert json.loads(body)["status"] == "aborted"


@pytest.mark.parametrize("kind", SERVERS)
async def test_abort_is_refused_when_not_enabled(
    kind: str, redis_server: RedisServer, queued: Callable[[], Any]
) -> None:
    """Without allow_abort: ``abort_disabled`` on both faces, and the job runs on."""
    job_id = await queued()
    async with started(kind, redis_server.url) as server:
        async with await open_client(server) as client:
            await client.send(abort(job_id))
            frame = await receive(client)
        assert (frame["type"], frame["code"], frame["job_id"]) == (
            "error",
            "abort_disabled",
            job_id,
        )
        status, _, body = await http_get(
            server, f"/jobs/{job_id}/abort?token={token(job_id)}", method="POST"
        )
        assert (status, json.loads(body)["code"]) == (403, "abort_disabled")
        _, _, body = await http_get(server, f"/verify/{job_id}?token={token(job_id)}")
        assert json.loads(body)["status"] == "queued"


@pytest.mark.parametrize("kind", SERVERS)
async def test_abort_needs_the_jobs_token(
    kind: str, redis_server: RedisServer, queued: Callable[[], Any]
) -> None:
    """No token, or another job's: refused as a subscription would be; the job is not
    aborted. A valid token for a job no one knows: not_found."""
    job_id = await queued()
    async with started(kind, redis_server.url, allow_abort=True) as server:
        async with await open_client(server) as client:
            await client.send(abort(job_id, token=None))
            assert (await receive(client))["code"] == "token_required"
            await client.send(abort(job_id, token=token("another-job")))
            assert (await receive(client))["code"] == "token_invalid"
            await client.send(abort("no-such-job"))
            assert (await receive(client))["code"] == "not_found"
        status, _, _ = await http_get(server, f"/jobs/{job_id}/abort", method="POST")
        assert status == 401
        _, _, body = await http_get(server, f"/verify/{job_id}?token={token(job_id)}")
        assert json.loads(body)["status"] == "queued"


async def test_a_job_authorize_refuses_is_answered_as_an_unknown_one(
    redis_server: RedisServer, queued: Callable[[], Any]
) -> None:
    """On the mount, an abort of a job the app's ``authorize`` refuses gets exactly
    the answer of a job that does not exist, on both faces, and changes nothing."""
    job_id = await queued()

    def authorize(scope: Any, asked: str) -> bool:
        return False

    async with started("mount", redis_server.url, allow_abort=True, authorize=authorize) as server:
        answers = []
        for asked in (job_id, "no-such-job"):
            async with await open_client(server) as client:
                await client.send(json.dumps({"type": "abort", "job_id": asked}))
                frame = await receive(client)
            status, _, body = await http_get(server, f"/jobs/{asked}/abort", method="POST")
            answers.append((frame["code"], frame["message"], status, body))
        assert answers[0] == answers[1]
        assert answers[0][0] == "not_found" and answers[0][2] == 404
    async with Tracker(redis_server.url) as tracker:
        assert (await tracker.status(job_id)).status.value == "queued"


async def test_a_foreign_pages_post_is_refused_before_authorize_is_asked(
    redis_server: RedisServer, queued: Callable[[], Any]
) -> None:
    """A cross-site POST (it would carry the user's cookies) is 403
    origin_not_allowed, without asking authorize; the job is not aborted."""
    job_id = await queued()
    asked: list[str] = []

    def authorize(scope: Any, job: str) -> bool:
        asked.append(job)
        return True

    async with started("mount", redis_server.url, allow_abort=True, authorize=authorize) as server:
        status, headers, body = await http_get(
            server,
            f"/jobs/{job_id}/abort",
            {"Origin": "https://evil.example"},
            method="POST",
        )
        assert (status, json.loads(body)["code"]) == (403, "origin_not_allowed")
        assert headers["access-control-allow-origin"] == "https://evil.example"
        assert asked == []
    async with Tracker(redis_server.url) as tracker:
        assert (await tracker.status(job_id)).status.value == "queued"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", SERVERS)
async def test_a_page_aborts_the_job_it_follows(
    kind: str,
    redis_server: RedisServer,
    queued: Callable[[], Any],
    page: Page,
    page_server: PageServer,
) -> None:
    """In Chromium, Immortus.abort() on the job the page follows resolves with the
    reply, and verify() then resolves with aborted; on a server that takes no aborts,
    abort() rejects with abort_disabled."""
    job_id = await queued()
    allowed = [page_server.origin]
    async with started(kind, redis_server.url, allowed_origins=allowed) as server:
        page_server.html = follow_page(server)
        await page.goto(page_server.origin + "/")
        await page.wait_for_selector("body[data-ready=yes]", timeout=10_000)
        refused = await page.evaluate(
            "([id, t]) => Immortus.abort({job_id: id, token: t}).catch((e) => e.code)",
            [job_id, token(job_id)],
        )
        assert refused == "abort_disabled"
    async with started(kind, redis_server.url, allowed_origins=allowed, allow_abort=True) as server:
        page_server.html = follow_page(server)
        await page.goto(page_server.origin + "/")
        await page.wait_for_selector("body[data-ready=yes]", timeout=10_000)
        await page.evaluate("([id, t]) => follow(id, t)", [job_id, token(job_id)])
        await page.wait_for_function(
            "document.getElementById('status').textContent === 'queued'", timeout=10_000
        )
        reply = await page.evaluate(
            "([id, t]) => Immortus.abort({job_id: id, token: t})", [job_id, token(job_id)]
        )
        assert reply == {"type": "abort", "job_id": job_id, "requested": True}
        state = await page.evaluate("window.done")
        assert state["status"] == "aborted"
