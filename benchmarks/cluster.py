"""Tracking on a Redis Cluster: state changes/s delivered and publish -> waiter latency.

One Redis server (PUBLISH), a cluster of 1 master and one of 3 masters (SPUBLISH,
the sharded hub), and, as the anti-example, plain PUBLISH on the 3-master cluster
(the cluster bus carries every message to every node). A writer process drives
``jobs`` jobs through ``rounds`` progress updates each (the Lua write, as the job
side makes it) and stamps each with ``time.monotonic()``; the waiters, in this
process, follow every job with ``tracker.watch()`` (the anti-example: one plain
SUBSCRIBE connection on one node, as a client of it would). Then 1 vs 3
``immortus-async bridge`` processes on the 3-master cluster, one websocket client
per job in this process, the clients spread over the bridges. Never asserted.

    python benchmarks/cluster.py            # full sizes
    python benchmarks/cluster.py --smoke    # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402
from redis.exceptions import ConnectionError  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from benchmarks._common import SECRET, BridgeProcess, Table, latency_cells  # noqa: E402
from immortus_async import (  # noqa: E402
    JobState,
    JobStatus,
    JobUpdate,
    RedisPubSubStrategy,
    RedisServer,
    Tracker,
    TrackerClosed,
    mint_token,
)
from immortus_async._pubsub import PubSubHub, connection_factory  # noqa: E402
from immortus_async._script import raced  # noqa: E402
from immortus_async._sharded import ShardedHub  # noqa: E402
from immortus_async.strategies import redis_pub_sub  # noqa: E402
from tests.cluster.harness import LocalCluster  # noqa: E402

TITLE = "### Redis Cluster: state changes delivered, publish -> waiter"


async def write(url: str, tag: str, jobs: int, rounds: int, plain_publish: bool) -> None:
    """The writer role: every job through ``rounds`` stamped updates, then finished."""
    strategy = RedisPubSubStrategy(url)
    if plain_publish:
        client: Any = strategy.redis
        strategy._script = client.register_script(redis_pub_sub._SCRIPT)
    ids = [f"{tag}-{i}" for i in range(jobs)]

    async def apply(update: JobUpdate) -> None:
        # redis-py 8's cluster client may lose a connection it is opening (its own
        # reconnect racing the write, an AttributeError in redis-py's own script
        # loading on the plain-PUBLISH row): written again, as the job side would.
        for _ in range(5):
            try:
                with raced(cluster=True):
                    await strategy.apply(update)
                return
            except ConnectionError as exc:
                print(f"writer {tag}: {exc}; writing again", file=sys.stderr)
        await strategy.apply(update)

    for step in range(1, rounds + 1):
        await asyncio.gather(
            *(
                apply(
                    JobUpdate(
                        job_id=job_id,
                        status=JobStatus.STARTED,
                        attempt=1,
                        progress=step / (rounds + 1),
                        meta={"t": time.monotonic()},
                    ),
                )
                for job_id in ids
            )
        )
    await asyncio.gather(
        *(apply(JobUpdate(job_id=j, status=JobStatus.FINISHED, attempt=1)) for j in ids)
    )
    await strategy.aclose()


class _Counter:
    """A hub sink that counts what arrives and how late: the hub alone, no waiter."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def push(self, item: Any) -> None:
        assert isinstance(item, JobState)
        self.run.arrived(item)

    def fail(self, error: BaseException) -> None:
        if not isinstance(error, TrackerClosed):  # the end of the run closes the hub
            raise AssertionError(f"a channel failed: {error!r}")

    def request_resync(self) -> None:
        pass


class _Run:
    """What one measurement saw."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.latencies: list[float] = []
        self.delivered = 0
        self.ended = 0
        self.done = asyncio.Event()
        self.elapsed = float("nan")

    def arrived(self, state: JobState) -> None:
        now = time.monotonic()
        self.delivered += 1
        if state.completed:
            self.ended += 1
            if self.ended == self.jobs:
                self.done.set()
        elif "t" in state.meta:
            self.latencies.append(now - state.meta["t"])


async def _websocket(bridge: BridgeProcess, job_id: str, run: _Run, first: asyncio.Event) -> None:
    """One browser's part: the job's websocket, each state frame counted until the end."""
    token = mint_token(job_id, SECRET, ttl=600)
    async with connect(f"{bridge.url}/jobs/{job_id}?token={token}", ping_interval=None) as ws:
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") != "state":
                raise AssertionError(f"{job_id}: {frame}")
            first.set()
            if frame["status"] != "queued":
                run.arrived(JobState.from_dict({k: v for k, v in frame.items() if k != "type"}))
            if frame["completed"]:
                return


async def measure(
    url: str,
    tag: str,
    jobs: int,
    rounds: int,
    *,
    mode: str,
    plain_on: int | None = None,
    bridges: int = 0,
) -> _Run:
    """One topology, followed by ``tracker.watch()`` per job (mode "watch"), by the
    pub/sub hub alone, one sink per job (mode "hub"; on ``plain_on``: a PubSubHub
    on that one node, SUBSCRIBE), or by a websocket per job on ``bridges`` bridge
    processes (mode "bridge")."""
    ids = [f"{tag}-{i}" for i in range(jobs)]
    setup = RedisPubSubStrategy(url)
    for job_id in ids:
        await setup.apply(JobUpdate(job_id=job_id, status=JobStatus.QUEUED, attempt=0))
    run = _Run(jobs)
    async with (
        Tracker(url, tracking_strategy="redis_pub_sub") as tracker,
        AsyncExitStack() as stack,
    ):
        if mode == "watch":
            following = [asyncio.Event() for _ in ids]

            async def follow(job_id: str, first: asyncio.Event) -> None:
                async for state in tracker.watch(job_id):
                    first.set()  # subscribed, its snapshot read
                    if state.status is not JobStatus.QUEUED:
                        run.arrived(state)

            tasks = [asyncio.create_task(follow(j, e)) for j, e in zip(ids, following, strict=True)]
            await asyncio.gather(*(event.wait() for event in following))
        elif mode == "bridge":
            running = await asyncio.gather(*(BridgeProcess.launch(url) for _ in range(bridges)))
            for bridge in running:
                stack.push_async_callback(bridge.stop)
            following = [asyncio.Event() for _ in ids]
            tasks = [
                asyncio.create_task(_websocket(running[i % bridges], job_id, run, first))
                for i, (job_id, first) in enumerate(zip(ids, following, strict=True))
            ]
            await asyncio.gather(*(event.wait() for event in following))
        else:
            if plain_on is not None:
                node = Redis(port=plain_on)
                stack.push_async_callback(node.aclose)
                hub = PubSubHub(connection_factory(node))
            elif isinstance(setup.redis, Redis):
                hub = PubSubHub(connection_factory(setup.redis))
            else:
                hub = ShardedHub(setup.redis)
            stack.push_async_callback(hub.aclose)
            counter = _Counter(run)
            await asyncio.gather(
                *(hub.subscribe(setup.keys.channel(j), counter, JobState.from_json) for j in ids)
            )
            tasks = []
        began = time.monotonic()
        writer = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "writer", "--url", url,
            "--jobs", str(jobs), "--rounds", str(rounds), "--tag", tag,
            *(["--plain-publish"] if plain_on is not None else []),
        )  # fmt: skip
        # A writer that dies before every change arrived would leave the wait alone
        # for ever: whichever ends first decides.
        arrived = asyncio.ensure_future(run.done.wait())
        exited = asyncio.ensure_future(writer.wait())
        await asyncio.wait({arrived, exited}, timeout=300, return_when=asyncio.FIRST_COMPLETED)
        if not arrived.done():
            arrived.cancel()
            if not exited.done():
                writer.kill()
            raise RuntimeError(f"the writer ended ({writer.returncode}) before its changes arrived")
        run.elapsed = time.monotonic() - began
        assert await exited == 0
        await asyncio.gather(*tasks)
    await setup.aclose()
    return run


async def main(jobs: int, rounds: int) -> Table:
    table = Table(
        TITLE.removeprefix("### "),
        [
            "tracking on",
            "publish",
            "followed by",
            "changes",
            "delivered/s",
            "p50",
            "p95",
            "p99",
            "max",
        ],
    )
    with ExitStack() as stack:
        one = stack.enter_context(RedisServer())
        cluster1 = stack.enter_context(LocalCluster(masters=1, replicas=0))
        cluster3 = stack.enter_context(LocalCluster(masters=3, replicas=0))
        url1 = f"redis+cluster://127.0.0.1:{cluster1.ports[0]}"
        url3 = f"redis+cluster://127.0.0.1:{cluster3.ports[0]}"
        rows = [
            ("one Redis server", "PUBLISH", one.url, "watch", None),
            ("one Redis server", "PUBLISH", one.url, "hub", None),
            ("cluster, 1 master", "SPUBLISH", url1, "watch", None),
            ("cluster, 1 master", "SPUBLISH", url1, "hub", None),
            ("cluster, 3 masters", "SPUBLISH", url3, "watch", None),
            ("cluster, 3 masters", "SPUBLISH", url3, "hub", None),
            ("cluster, 3 masters: anti-example", "PUBLISH", url3, "hub", cluster3.ports[0]),
            ("cluster, 3 masters", "SPUBLISH", url3, "1 bridge", None),
            ("cluster, 3 masters", "SPUBLISH", url3, "3 bridges", None),
        ]
        for i, (name, publish, where, mode, plain_on) in enumerate(rows):
            bridges = int(mode.split()[0]) if "bridge" in mode else 0
            run = await measure(
                where, f"b{i}", jobs, rounds, mode="bridge" if bridges else mode,
                plain_on=plain_on, bridges=bridges,
            )  # fmt: skip
            rate = f"{run.delivered / run.elapsed:,.0f}"
            table.add(name, publish, mode, run.delivered, rate, *latency_cells(run.latencies))
    table.notes += [
        f"{jobs} jobs x {rounds} progress updates + the end, written by one writer process "
        "(the job side's Lua write, every job's update of a round at once), stamped with "
        "time.monotonic(); latency: that stamp -> the state in the benchmark's process",
        "followed by: watch = tracker.watch() per job (the waiters' whole path: subscribe, "
        "snapshot, decode, buffer); hub = the pub/sub hub alone, one sink per job "
        "(PubSubHub: SUBSCRIBE on one connection; ShardedHub: SSUBSCRIBE per master)",
        "N bridges: that many `immortus-async bridge` processes on the 3-master cluster, "
        "one websocket client per job in the benchmark's process, job i on bridge i mod N "
        "(latency: the stamp -> the state frame at the client; a bridge sends a lagging "
        "client only a job's latest state, so fewer changes may arrive)",
        "anti-example: the same script with plain PUBLISH on the 3-master cluster, "
        "followed by SUBSCRIBE on one node (the cluster bus carries every message to it)",
        "delivered/s: changes received over the run's wall time, the writer's start "
        "included; one Python writer and one Python reader on a small machine bound it, "
        "not Redis",
    ]
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--role")
    parser.add_argument("--url")
    parser.add_argument("--tag", default="bench")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--plain-publish", action="store_true")
    args = parser.parse_args()
    if args.role == "writer":
        asyncio.run(write(args.url, args.tag, args.jobs, args.rounds, args.plain_publish))
    else:
        jobs, rounds = (10, 5) if args.smoke else (args.jobs, args.rounds)
        print(asyncio.run(main(jobs, rounds)).render())
