"""Peers: the same waiting scenario for immortus-async and the queues a user would compare.

Each peer runs in a process of its own on a Redis of its own (a fresh
``RedisServer`` per run). In that process, ``peer_jobs`` jobs are enqueued (each
sleeps 20-70 ms, the same pauses for every peer), then one waiter per job arrives,
spread over 0.5 s, each waiting the way the peer offers; once all wait, the parent
counts the commands Redis runs for ``peer_window`` seconds (``INFO commandstats``,
its own INFO left out) while every job is still queued, then tells the process to
start its worker (concurrency 50, in the waiters' process). Wake = the waiter's
``await`` returning, minus the job's last line (one clock: the process's own).
Each figure is the median over ``peer_runs`` runs.

- floor: redis-py alone, each job PUBLISHes on its channel, each waiter SUBSCRIBEs
  (one connection for all): what any push costs at least;
- immortus-async: an arq worker running ``@tracked`` jobs, ``tracker.completed()``;
- BullMQ (Node): ``Worker`` and ``job.waitUntilFinished(queueEvents)``, run by
  ``_bullmq.cjs``; bullmq is installed with npm into a cache folder on first use
  (``$XDG_CACHE_HOME/immortus-async-bench``), and skipped, saying why, without
  node or npm or when the install fails (in ``--smoke`` when it is not installed yet);
- SAQ: its ``Worker`` and ``job.refresh(until_complete=...)`` (the ``bench`` extra);
- arq: plain jobs, ``Job.result()`` at arq's default poll_delay of 0.5 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import (
    HERE,
    Child,
    Context,
    Profile,
    Table,
    child_env,
    child_main,
    ms,
    next_command,
    say,
    verdict,
)
from redis.asyncio import Redis

from immortus_async import RedisServer

TITLE = "Peers: wake latency and Redis commands while waiting, one scenario for each"
CONCURRENCY = 50
ARRIVAL = 0.5  # seconds over which the waiters arrive
# BullMQ 6 leaves its Redis client, ioredis, to be installed beside it.
BULLMQ = ["bullmq@6", "ioredis@5"]

PEERS = {
    "floor": "redis-py PUBLISH -> SUBSCRIBE, nothing else (the floor)",
    "bullmq": "BullMQ `job.waitUntilFinished(queueEvents)` (Node)",
    "immortus": "**immortus-async `tracker.completed()`**",
    "saq": "SAQ `job.refresh(until_complete=...)`",
    "arq": "arq `Job.result()` (poll_delay 0.5 s, its default)",
}


def pauses(count: int) -> list[float]:
    """Each job's run time, 20-70 ms, the same for every peer."""
    rng = random.Random(11)
    return [rng.uniform(0.020, 0.070) for _ in range(count)]


# The parent


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "immortus-async-bench" / "bullmq"


def bullmq_modules(install: bool) -> tuple[Path | None, str]:
    """bullmq's node_modules folder, installing it first if ``install``; else why not."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None, "skipped: node or npm is not installed"
    folder = _cache()
    modules = folder / "node_modules"
    if all((modules / name / "package.json").exists() for name in ("bullmq", "ioredis")):
        return modules, ""
    if not install:
        return None, f"skipped: bullmq is not installed yet (`--quick` installs it in {folder})"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text('{"private": true}\n')
    try:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", *BULLMQ],
            cwd=folder,
            capture_output=True,
            check=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"skipped: `npm install {' '.join(BULLMQ)}` failed ({type(exc).__name__})"
    return modules, ""


async def _start(peer: str, config: dict[str, Any], modules: Path | None) -> Child:
    if peer != "bullmq":
        return await Child.start("peers.py", peer, config)
    assert modules is not None
    process = await asyncio.create_subprocess_exec(
        "node",
        str(HERE / "_bullmq.cjs"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(NODE_PATH=str(modules)),
        limit=64 * 1024 * 1024,
    )
    child = Child(process, "_bullmq.cjs")
    await child.send("config", **config)
    return child


async def _calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict) and name != "cmdstat_info"
    )


async def measure(ctx: Context, peer: str, modules: Path | None) -> dict[str, Any]:
    """One run of ``peer`` on a Redis of its own: wake latencies, commands/s while waiting."""
    sizes = ctx.sizes
    with RedisServer() as server:
        config = {"redis": server.url, "pauses": pauses(sizes.peer_jobs), "arrival": ARRIVAL}
        child = await _start(peer, config, modules)
        redis = Redis.from_url(server.url)
        try:
            await child.expect("waiting", timeout=120)
            before = await _calls(redis)
            await asyncio.sleep(sizes.peer_window)
            rate = (await _calls(redis) - before) / sizes.peer_window
            # The profile (--profile) is of our waiters' and worker's process.
            path = ctx.profile_path("peers-immortus") if peer == "immortus" else None
            async with Profile(child.pid, path):
                await child.send("go")
                done = await child.expect("done", timeout=300)
            await child.finish()
        finally:
            await child.stop()
            await redis.aclose()
    ordered = sorted(done["latencies"])
    return {
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[max(0, -(-len(ordered) * 99 // 100) - 1)],
        "rate": rate,
    }


async def run(ctx: Context) -> list[Table]:
    sizes = ctx.sizes
    columns = ["waiter", "wake p50", "wake p99", "Redis commands/s while waiting", "target"]
    table = Table(TITLE, columns)
    modules, skipped = bullmq_modules(install=sizes.mode != "smoke")
    results: dict[str, list[dict[str, Any]]] = {peer: [] for peer in PEERS}
    # Runs interleave the peers, so a neighbour's burst of CPU hits them alike.
    for _ in range(sizes.peer_runs):
        for peer in PEERS:
            if peer == "bullmq" and modules is None:
                continue
            results[peer].append(await measure(ctx, peer, modules))
    medians = {
        peer: {key: statistics.median(r[key] for r in runs) for key in ("p50", "p99", "rate")}
        for peer, runs in results.items()
        if runs
    }
    for peer, label in PEERS.items():
        if peer not in medians:
            table.add(label, skipped, "", "", "")
            continue
        row = medians[peer]
        target = ""
        if peer == "immortus":
            bull = medians.get("bullmq")
            met = row["p50"] <= 0.0005 and row["p99"] <= 0.005 and row["rate"] == 0
            if bull is not None:
                met = met and row["p50"] < bull["p50"] and row["p99"] < bull["p99"]
            target = f"p50 <= 0.5 ms, p99 <= 5 ms, ahead of BullMQ, 0/s: {verdict(met)}"
        table.add(label, ms(row["p50"]), ms(row["p99"]), f"{row['rate']:,.0f}", target)
    table.notes.append(
        f"{sizes.peer_jobs:,} jobs of 20-70 ms, worker concurrency {CONCURRENCY} in the "
        f"waiters' process, {sizes.peer_jobs:,} waiters arriving over {ARRIVAL:g} s; "
        f"median of {sizes.peer_runs} run(s), the peers interleaved; each peer in its own "
        f"process on its own Redis; commands/s counted over {sizes.peer_window:g} s while "
        "every job is still queued (INFO commandstats, commands run inside Lua included)"
    )
    return [table]


# The children: one role per Python peer


class Scenario:
    """What every peer's process shares: the jobs' last lines, the waiters' wake times."""

    def __init__(self, config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
        self.pauses: list[float] = config["pauses"]
        self.arrival: float = config["arrival"]
        self.stream = stream
        self.ended: dict[str, float] = {}  # job id -> its last line
        self.woke: dict[str, float] = {}

    async def play(
        self,
        ids: list[str],
        wait: Callable[[str], Awaitable[Any]],
        start_worker: Callable[[], Awaitable[Any]],
        settle: float = 0.3,
    ) -> None:
        """Waiters arrive over ``arrival``; say ``waiting``; on ``go`` start the worker;
        say ``done`` with each job's wake latency once every waiter woke."""
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def waiter(index: int, job_id: str) -> None:
            await asyncio.sleep(max(0.0, began + index * self.arrival / len(ids) - loop.time()))
            await wait(job_id)
            self.woke[job_id] = time.monotonic()

        tasks = [asyncio.create_task(waiter(i, job_id)) for i, job_id in enumerate(ids)]
        await asyncio.sleep(self.arrival + settle)  # the last waiter is in place
        say("waiting")
        await next_command(self.stream, "go")
        await start_worker()
        await asyncio.gather(*tasks)
        say("done", latencies=[self.woke[j] - self.ended[j] for j in ids])


async def floor(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """redis-py alone: a job PUBLISHes as it ends; its waiter SUBSCRIBEd to its channel."""
    scene = Scenario(config, stream)
    redis = Redis.from_url(config["redis"])
    pubsub = redis.pubsub()
    ids = [f"job-{i}" for i in range(len(scene.pauses))]
    woken: dict[str, asyncio.Future[None]] = {}
    loop = asyncio.get_running_loop()
    await pubsub.subscribe("floor:warm")

    async def read() -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is not None and message["type"] == "message":
                future = woken.get(message["channel"].decode().removeprefix("floor:"))
                if future is not None and not future.done():
                    future.set_result(None)

    reader = asyncio.create_task(read())

    async def wait(job_id: str) -> None:
        woken[job_id] = loop.create_future()
        await pubsub.subscribe(f"floor:{job_id}")
        await woken[job_id]

    async def job(job_id: str, pause: float, slots: asyncio.Semaphore) -> None:
        async with slots:
            await asyncio.sleep(pause)
            scene.ended[job_id] = time.monotonic()
            await redis.publish(f"floor:{job_id}", "done")

    running: list[asyncio.Task[None]] = []

    async def start_worker() -> None:
        slots = asyncio.Semaphore(CONCURRENCY)
        for job_id, pause in zip(ids, scene.pauses, strict=True):
            running.append(asyncio.create_task(job(job_id, pause, slots)))

    await scene.play(ids, wait, start_worker)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await pubsub.aclose()
    await redis.aclose()


# arq and immortus-async: one job module for both, in this file.

_ENDED: dict[str, float] = {}


async def peer_plain(ctx: dict[str, Any], pause: float) -> None:
    """An arq job of ``pause`` seconds; its last line's time goes to ``_ENDED``."""
    await asyncio.sleep(pause)
    _ENDED[ctx["job_id"]] = time.monotonic()


async def _arq_peer(
    config: dict[str, Any], stream: AsyncIterator[dict[str, Any]], tracked: bool
) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.jobs import Job
    from arq.worker import Worker

    from immortus_async import Tracker
    from immortus_async import tracked as track

    scene = Scenario(config, stream)
    scene.ended = _ENDED
    function = track(peer_plain) if tracked else peer_plain
    pool = await create_pool(RedisSettings.from_dsn(config["redis"]))
    tracker = Tracker(pool) if tracked else None
    ids = []
    for pause in scene.pauses:
        if tracker is not None:
            job = await tracker.enqueue(pool, "peer_plain", pause)
        else:
            job = await pool.enqueue_job("peer_plain", pause)
        assert job is not None
        ids.append(job.job_id)
    worker = Worker(
        functions=[function],  # type: ignore[list-item]
        redis_pool=pool,
        max_jobs=CONCURRENCY,
        poll_delay=0.05,
        handle_signals=False,
        keep_result=3600,
    )
    running: list[asyncio.Task[None]] = []

    async def wait(job_id: str) -> None:
        if tracker is not None:
            await tracker.completed(job_id, timeout=300)
        else:
            await Job(job_id, pool).result(timeout=300, poll_delay=0.5)

    async def start_worker() -> None:
        running.append(asyncio.create_task(worker.main()))

    await scene.play(ids, wait, start_worker)
    running[0].cancel()
    await asyncio.gather(*running, return_exceptions=True)
    if tracker is not None:
        await tracker.aclose()
    await pool.aclose()


async def immortus(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """``@tracked`` jobs on an arq worker; each waiter ``await tracker.completed(id)``."""
    await _arq_peer(config, stream, tracked=True)


async def arq(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """Plain arq jobs; each waiter ``await Job(id, pool).result()`` (poll_delay 0.5 s)."""
    await _arq_peer(config, stream, tracked=False)


async def saq(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """SAQ's worker; each waiter ``await job.refresh(until_complete=0)`` (0: for ever)."""
    from saq import Queue, Worker

    scene = Scenario(config, stream)

    async def saq_job(ctx: dict[str, Any], *, pause: float) -> None:
        await asyncio.sleep(pause)
        scene.ended[ctx["job"].key] = time.monotonic()

    queue = Queue.from_url(config["redis"])
    await queue.connect()
    jobs = {}
    for pause in scene.pauses:
        job = await queue.enqueue("saq_job", pause=pause, timeout=60)
        assert job is not None
        jobs[job.key] = job
    worker = Worker(queue, functions=[("saq_job", saq_job)], concurrency=CONCURRENCY)
    running: list[asyncio.Task[None]] = []

    async def wait(key: str) -> None:
        await jobs[key].refresh(until_complete=0)

    async def start_worker() -> None:
        running.append(asyncio.create_task(worker.start()))

    await scene.play(list(jobs), wait, start_worker)
    await worker.stop()
    await asyncio.gather(*running, return_exceptions=True)
    await queue.disconnect()


if __name__ == "__main__":
    child_main({"floor": floor, "immortus": immortus, "arq": arq, "saq": saq})
