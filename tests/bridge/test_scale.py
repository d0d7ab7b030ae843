"""Many clients on one bridge: everyone gets the end, Redis sees one pub/sub connection."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from immortus_async import JobStatus, RedisPubSubStrategy
from immortus_async.bridge import Bridge

from ..utils import wait_until
from .helpers import advance, open_client, receive, receive_until_completed, subscribe

S = JobStatus
OWN_JOBS = 1000
SHARED_FOLLOWERS = 200


async def _pubsub_connections(redis: Redis) -> int:
    clients = await redis.client_list()
    return sum(1 for client in clients if int(client["sub"]) + int(client["psub"]) > 0)


def _rising(seqs: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(seqs))


async def _follow(bridge: Bridge, job_id: str) -> ClientConnection:
    client = await open_client(bridge, ping_interval=None)
    await client.send(subscribe(job_id))
    assert (await receive(client, timeout=60))["job_id"] == job_id
    return client


@pytest.mark.timeout(120)
async def test_a_thousand_clients_and_two_hundred_on_one_job(
    bridge: Bridge, strategy: RedisPubSubStrategy, redis: Redis
) -> None:
    """1,000 clients on their own jobs and 200 on a shared one all get their terminal state."""
    started = time.monotonic()
    jobs = [f"own-{n}" for n in range(OWN_JOBS)]
    for job_id in [*jobs, "shared"]:
        await advance(strategy, job_id, S.QUEUED)
    connect_limit = asyncio.Semaphore(100)

    async def follow(job_id: str) -> ClientConnection:
        async with connect_limit:
            return await _follow(bridge, job_id)

    own = await asyncio.gather(*(follow(job_id) for job_id in jobs))
    shared = await asyncio.gather(*(follow("shared") for _ in range(SHARED_FOLLOWERS)))
    assert bridge.statistics().subscriptions == OWN_JOBS + SHARED_FOLLOWERS
    # One connection for every channel, beside client-side caching's subscriber
    # (one a process, where a queue's reader watches the queue's keys).
    caching = (await redis.pubsub_numsub("__redis__:invalidate"))[0][1]
    assert await _pubsub_connections(redis) - caching == 1
    subscribed = time.monotonic()

    for job_id in [*jobs, "shared"]:
        await advance(strategy, job_id, S.STARTED)
        await advance(strategy, job_id, S.FINISHED)
    ends = await asyncio.gather(
        *(receive_until_completed(c, j, timeout=60) for c, j in zip(own, jobs, strict=True)),
        *(receive_until_completed(c, "shared", timeout=60) for c in shared),
    )
    # A client may skip "started" (only the latest state waits to be sent), never the end.
    assert all(frames[-1]["status"] == "finished" for frames in ends)
    assert all(_rising([f["seq"] for f in frames]) for frames in ends)
    # Snapshots went through the bounded pool: a few connections, not one per client.
    assert len(await redis.client_list()) <= 16 + 2
    finished = time.monotonic()

    await asyncio.gather(*(client.close() for client in [*own, *shared]))
    await wait_until(lambda: bridge.statistics().connections == 0, message="clients to leave")
    print(
        f"\n{OWN_JOBS + SHARED_FOLLOWERS} clients: subscribed in {subscribed - started:.1f}s, "
        f"all finished {finished - subscribed:.1f}s later"
    )
