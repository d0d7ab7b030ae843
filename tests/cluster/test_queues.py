"""taskiq and streaQ tracking on a Redis Cluster, each queue on a Redis of its own: a
real worker writes every state to the cluster, a Tracker on the cluster follows its
jobs to their ends, and the queue's own records still answer for a job that no
middleware of ours recorded. Nothing of ours is written to the queue's Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from immortus_async import JobState, JobStatus, RedisServer, Tracker
from immortus_async.adapters import installed

from ..adapters.drivers import FAIL, MISSING, PROGRESS, Driver, StreaqDriver, TaskiqDriver
from ..conftest import NOT_INSTALLED
from ..utils import SCALE
from .harness import LocalCluster

S = JobStatus


def needs(queue: str) -> pytest.MarkDecorator:
    """Skips a test where ``queue`` is not installed (arq's environment)."""
    return pytest.mark.skipif(not installed(queue), reason=f"{queue}: {NOT_INSTALLED}")


def cluster_url(cluster: LocalCluster) -> str:
    """The cluster as a ``redis+cluster://`` URL, as a user names it."""
    return "redis+cluster" + cluster.url.removeprefix("redis")


async def states_of(tracker: Tracker, job_id: str, subscribed: asyncio.Event) -> list[JobState]:
    """Every state a watcher of ``job_id`` sees to its end; ``subscribed`` is set with
    the first (the snapshot, read once the job's channel is subscribed)."""
    states = []
    async with asyncio.timeout(30 * SCALE):
        async for state in tracker.watch(job_id):
            states.append(state)
            subscribed.set()
    return states


async def follow_to_the_end(driver: Driver, tracker: Tracker) -> None:
    """A job that reports progress ends finished, one that raises ends failed, each
    followed by a watcher subscribed before the worker starts."""
    jobs = {kind: await driver.enqueue(tracker, kind) for kind in (PROGRESS, FAIL)}
    events = {kind: asyncio.Event() for kind in jobs}
    watchers = {
        kind: asyncio.create_task(states_of(tracker, job_id, events[kind]))
        for kind, job_id in jobs.items()
    }
    async with asyncio.timeout(30 * SCALE):
        await asyncio.gather(*(event.wait() for event in events.values()))
    await driver.start_worker()
    progressed, failed = (await watchers[PROGRESS]), (await watchers[FAIL])
    for states in (progressed, failed):
        seqs = [state.seq for state in states]
        assert seqs == sorted(set(seqs)) and states[0].status is S.QUEUED
    # Meta and result are in our record alone: the worker wrote them to the cluster.
    end = progressed[-1]
    assert (end.status, end.meta, end.result) == (S.FINISHED, {"rows": 2}, "done")
    assert (failed[-1].status, failed[-1].error) == (S.FAILED, "ValueError: bad row")


@needs("taskiq")
async def test_a_taskiq_worker_tracks_on_the_cluster(
    cluster: LocalCluster, redis_server: RedisServer, redis: Redis
) -> None:
    """A taskiq worker whose broker is on its own Redis tracks on the cluster
    (``TrackingMiddleware("redis+cluster://...")``); a Tracker on the cluster with
    that Redis as ``queue_redis`` follows its tasks, and reads a result that taskiq's
    backend wrote alone (as a worker without our middleware does) from there."""
    from taskiq import TaskiqResult
    from taskiq_redis import RedisAsyncResultBackend

    driver = TaskiqDriver(redis_server.url, broker="list", tracking_url=cluster_url(cluster))
    backend: RedisAsyncResultBackend[object] = RedisAsyncResultBackend(redis_server.url)
    try:
        async with driver.tracker() as tracker:
            await follow_to_the_end(driver, tracker)
            result = TaskiqResult(is_err=False, return_value=42, execution_time=0.1, labels={})
            await backend.set_result("untracked", result)
            state = await tracker.completed("untracked", timeout=30 * SCALE)
            assert state.status is S.FINISHED
    finally:
        await backend.shutdown()
        await driver.aclose()
    assert await redis.keys("immortus:*") == []


@needs("streaq")
async def test_a_streaq_worker_tracks_on_the_cluster(
    cluster: LocalCluster, redis_server: RedisServer, redis: Redis
) -> None:
    """A streaQ worker on its own Redis tracks on the cluster (``track_worker(worker,
    redis="redis+cluster://...", queue_redis=...)``); a Tracker on the cluster with
    that Redis as ``queue_redis`` follows its tasks, and a task streaQ ends without
    running it (no such function) is read from streaQ's records there."""
    driver = StreaqDriver(redis_server.url, tracking_url=cluster_url(cluster))
    try:
        async with driver.tracker() as tracker:
            await follow_to_the_end(driver, tracker)
            unrun = await driver.enqueue(tracker, MISSING)
            state = await tracker.completed(unrun, timeout=30 * SCALE)
            assert state.status is S.FAILED and state.error
    finally:
        await driver.aclose()
    assert await redis.keys("immortus:*") == []
