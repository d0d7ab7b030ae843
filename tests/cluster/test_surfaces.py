"""Owner feeds, the ASGI mount and the CLI on a real Redis Cluster. The owner's channel
is published with plain PUBLISH (it is in no job's slot) and followed with SUBSCRIBE
on one node, moved to another when that node dies."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from immortus_async import (
    JobState,
    JobStatus,
    JobUpdate,
    Keys,
    Leftovers,
    RedisPubSubStrategy,
    Tracker,
    mint_owner_token,
)
from immortus_async.jobside import begin_job

from ..bridge.helpers import (
    SECRET,
    advance,
    open_client,
    protocol_server,
    receive,
    receive_until_completed,
    subscribe,
)
from ..utils import SCALE, wait_until
from .harness import LocalCluster
from .load import OPTIONS

S = JobStatus
# The command as installed, the one a user runs.
IMMORTUS = str(Path(sys.executable).with_name("immortus-async"))
OWNER = "alice"

# As in test_cluster.py: redis-py's cluster client leaves an old slot map's nodes
# to their finalizers, which warn.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_dropped_nodes() -> Iterator[None]:
    yield
    gc.collect()


def subscribed_node(cluster: LocalCluster, channel: str) -> int | None:
    """The live node where ``channel`` has a (plain) subscriber."""
    for port in cluster.live():
        with cluster.client(port) as client:
            if client.execute_command("PUBSUB", "NUMSUB", channel)[1]:
                return port
    return None


async def test_an_owner_feed_gets_every_jobs_end_across_a_master_killed(
    cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    """Jobs of one owner on every master; the feed's node (a master) is SIGKILLed:
    the feed moves to another node, reads the snapshot again, and gets every end."""
    jobs = [f"owned-{i}" for i in range(12)]
    masters = {cluster.slot_owner(key_slot(job_id.encode())) for job_id in jobs}
    assert len(masters) == 3, masters
    async with Tracker(cluster_client, tracking_strategy="redis_pub_sub") as tracker:
        strategy = tracker.strategy()
        seen: dict[str, list[JobState]] = {job_id: [] for job_id in jobs}
        queued = asyncio.Event()

        async def follow() -> None:
            async for state in tracker.watch_owner(OWNER):
                seen[state.job_id].append(state)
                if all(seen.values()):
                    queued.set()
                if all(states and states[-1].completed for states in seen.values()):
                    return

        feed = asyncio.create_task(follow())
        channel = Keys().owner_channel(OWNER)
        await wait_until(lambda: subscribed_node(cluster, channel), message="the feed's SUBSCRIBE")
        for job_id in jobs:
            await strategy.apply(  # type: ignore[call-arg]
                JobUpdate(job_id=job_id, status=S.QUEUED, attempt=0), owner=OWNER
            )
        async with asyncio.timeout(20 * SCALE):
            await queued.wait()
        leftovers = Leftovers()
        contexts = [
            await begin_job(
                job_id, 1, redis=cluster_client, spec="redis_pub_sub", options=OPTIONS,
                leftovers=leftovers,
            )
            for job_id in jobs
        ]  # fmt: skip
        node = subscribed_node(cluster, channel)
        assert node is not None
        if node not in cluster.masters():
            node = cluster.masters()[0]
        replica = cluster.replica_of(node)
        cluster.kill(node)
        await asyncio.gather(*(context.finished() for context in contexts))
        await wait_until(
            lambda: cluster.roles().get(replica) == "master",
            timeout=30,
            message="the replica's promotion",
        )
        await leftovers.aclose(60 * SCALE)
        async with asyncio.timeout(60 * SCALE):
            await feed
    for job_id, states in seen.items():
        seqs = [state.seq for state in states]
        assert seqs == sorted(set(seqs)), (job_id, seqs)
        assert [s.status for s in states if s.completed] == [S.FINISHED], (job_id, states)


async def test_the_asgi_mount_on_a_cluster_url_follows_a_job_and_an_owner(
    cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    """uvicorn serving the mount of a ``redis+cluster://`` Tracker: a websocket that
    subscribes to a job, and one on the owner's path, each get the job's end."""
    port = cluster.url.rsplit(":", 1)[1]
    strategy = RedisPubSubStrategy(cluster_client)
    await strategy.apply(JobUpdate(job_id="mounted", status=S.QUEUED, attempt=0), owner=OWNER)
    async with protocol_server("mount", f"redis+cluster://127.0.0.1:{port}") as server:
        job = await open_client(server)
        await job.send(subscribe("mounted"))
        assert (await receive(job))["status"] == "queued"
        token = mint_owner_token(OWNER, SECRET, ttl=300)
        feed = await open_client(server, f"/owners/{OWNER}?token={token}")
        first = await receive(feed)
        assert (first["type"], first["status"]) == ("owner_state", "queued"), first
        await advance(strategy, "mounted", S.FINISHED)
        frames = await receive_until_completed(job, "mounted", timeout=20)
        assert [f["status"] for f in frames if f["completed"]] == ["finished"], frames
        end = await receive(feed, timeout=20)
        assert (end["job_id"], end["status"]) == ("mounted", "finished"), end
        await job.close()
        await feed.close()
    await strategy.aclose()


async def test_status_and_watch_on_a_cluster_url(
    cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    """``immortus-async status``/``watch --redis redis+cluster://...``, as a user runs them."""
    url = "redis+cluster://127.0.0.1:" + cluster.url.rsplit(":", 1)[1]
    strategy = RedisPubSubStrategy(cluster_client)
    await advance(strategy, "cli-1", S.STARTED, meta={"rows": 3})
    status = await cli("status", "cli-1", "--redis", url)
    out, err = await asyncio.wait_for(status.communicate(), 30 * SCALE)
    assert status.returncode == 3, err.decode()
    assert "cli-1: started" in out.decode() and "rows=3" in out.decode()
    watch = await cli("watch", "cli-1", "--redis", url, "--timeout", "60")
    assert watch.stdout is not None
    first = await asyncio.wait_for(watch.stdout.readline(), 30 * SCALE)
    assert b"cli-1: started" in first
    await advance(strategy, "cli-1", S.FINISHED)
    rest, err = await asyncio.wait_for(watch.communicate(), 30 * SCALE)
    assert watch.returncode == 0, err.decode()
    assert rest.decode().splitlines()[-1].startswith("cli-1: finished"), rest
    await strategy.aclose()


async def cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        IMMORTUS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
