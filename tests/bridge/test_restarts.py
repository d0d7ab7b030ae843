"""Restarts: Redis under 100 followers, and the bridge under a browser's client."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Page
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from immortus_async import JobStatus, RedisPubSubStrategy, RedisServer
from immortus_async.bridge import Bridge, serve

from ..utils import wait_until
from .helpers import (
    SECRET,
    PageServer,
    advance,
    follow_page,
    open_client,
    receive,
    receive_until_completed,
    subscribe,
    token,
)

S = JobStatus
FOLLOWERS = 100


@pytest.mark.timeout(90)
async def test_redis_restart_under_a_hundred_followers(
    bridge: Bridge, strategy: RedisPubSubStrategy, redis: Redis, redis_server: RedisServer
) -> None:
    """Redis restarts while 100 clients follow running jobs: every client gets its end."""
    jobs = [f"running-{n}" for n in range(FOLLOWERS)]
    clients = []
    for job_id in jobs:
        await advance(strategy, job_id, S.STARTED, progress=0.1)
        client = await open_client(bridge)
        await client.send(subscribe(job_id))
        assert (await receive(client))["job_id"] == job_id
        clients.append(client)
    # A Redis that persists its data (as a production one does) restarts with it.
    await redis.save()
    redis_server.restart()
    # Half the jobs end at once, probably before the bridge has resubscribed (it
    # must re-read their state); the other half once it is surely back.
    for job_id in jobs[::2]:
        await wait_until(
            lambda j=job_id: _written(strategy, j, S.FINISHED),  # type: ignore[misc]
            message="Redis to accept writes",
        )
    await wait_until(
        lambda: _bridge_resubscribed(redis), timeout=20, message="the bridge to resubscribe"
    )
    for job_id in jobs[1::2]:
        await advance(strategy, job_id, S.FAILED, error="lost")
    ends = await asyncio.gather(
        *(receive_until_completed(c, j, timeout=30) for c, j in zip(clients, jobs, strict=True))
    )
    statuses = [frames[-1]["status"] for frames in ends]
    assert statuses == ["finished", "failed"] * (FOLLOWERS // 2)
    await asyncio.gather(*(client.close() for client in clients))


async def _bridge_resubscribed(redis: Redis) -> bool:
    # The test's own client lost its connections in the restart too: a probe that
    # meets one of them is a "not yet", not a failure of the bridge.
    try:
        clients = await redis.client_list()
    except RedisConnectionError:
        return False
    return any(int(client["sub"]) > 0 for client in clients)


async def _written(strategy: RedisPubSubStrategy, job_id: str, status: JobStatus) -> bool:
    """Write one update; False while the restarted Redis does not accept it yet."""
    try:
        await advance(strategy, job_id, status)
    except (RedisConnectionError, OSError):
        return False
    return True


@pytest.mark.timeout(90)
async def test_browser_client_reconnects_after_a_bridge_restart(
    redis_server: RedisServer,
    strategy: RedisPubSubStrategy,
    page: Page,
    page_server: PageServer,
) -> None:
    """The bridge restarts on its port: immortus.js reconnects and resolves to the end."""
    job_id = "survivor"
    await advance(strategy, job_id, S.STARTED, progress=0.3)

    def bridge_on(port: int) -> Bridge:
        return serve(
            redis_server.url, "127.0.0.1", port, secret=SECRET, allowed_origins=[page_server.origin]
        )

    first = await bridge_on(0)
    port = first.port
    page_server.html = follow_page(first)
    await page.goto(page_server.origin + "/")
    await page.evaluate("([id, t]) => follow(id, t)", [job_id, token(job_id)])
    await page.wait_for_function("document.getElementById('bar').value === 0.3")
    await first.aclose()
    await advance(strategy, job_id, S.STARTED, progress=0.8)  # while no bridge runs
    async with bridge_on(port) as second:
        await wait_until(
            lambda: second.statistics().subscriptions == 1, message="the client to resubscribe"
        )
        await page.wait_for_function("document.getElementById('bar').value === 0.8")
        await advance(strategy, job_id, S.FINISHED)
        state = await page.evaluate("window.done")
    assert state["status"] == "finished"
    statuses = await page.evaluate("window.events.filter(e => e[0] === 'status').map(e => e[1])")
    assert statuses == ["started", "finished"], "since_seq: nothing delivered twice"
