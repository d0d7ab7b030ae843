"""Selectivity: what a bridge pays for jobs nobody watches.

Jobs end at a steady rate (2,000/s) while browsers watch only a handful of them.
Two bridges, each in a process of its own, serve the same watchers in turn:

- ours (``immortus-async bridge``): one pub/sub connection that SUBSCRIBEs to the
  channel of each watched job only, so Redis sends it the watched jobs' messages
  and nothing else;
- a PSUBSCRIBE-everything listener, the design SAQ uses: one connection
  subscribed to every job's channel by pattern, routing each message to whoever
  waits on that job. A small stand-in written here (redis-py's ``PubSub`` as SAQ
  uses it; the same state decoding and frames as ours), not SAQ's code.

Measured: the bridge process's CPU seconds (user + system) while the jobs end,
and Redis's.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote, urlsplit

import psutil
from _common import (
    LATENCY_COLUMNS,
    BridgeProcess,
    Child,
    Context,
    Profile,
    Table,
    child_main,
    cpu_seconds,
    free_port,
    latency_cells,
    say,
)
from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection, serve

from immortus_async import JobState, Keys, RedisPubSubStrategy
from immortus_async.bridge import state_frame

TITLE = "Selectivity: bridge CPU while many jobs end and few are watched"


# The stand-in: one PSUBSCRIBE for every job's channel, routed in the process.


async def psubscribe_bridge(config: dict[str, Any], stream: AsyncIterator[dict[str, Any]]) -> None:
    """A minimal websocket bridge on the PSUBSCRIBE-everything design."""
    redis = Redis.from_url(config["redis"])
    strategy = RedisPubSubStrategy(redis)
    keys = Keys()
    waiting: dict[bytes, set[asyncio.Queue[JobState]]] = defaultdict(set)
    received = 0

    async def listen() -> None:
        nonlocal received
        pubsub = redis.pubsub()
        await pubsub.psubscribe(keys.channel("*"))
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            received += 1
            queues = waiting.get(message["channel"])
            if queues:
                state = JobState.from_json(message["data"])
                for queue in queues:
                    queue.put_nowait(state)

    async def handle(ws: ServerConnection) -> None:
        assert ws.request is not None
        job_id = unquote(urlsplit(ws.request.path).path.removeprefix("/jobs/"))
        channel = keys.channel(job_id).encode()
        queue: asyncio.Queue[JobState] = asyncio.Queue()
        waiting[channel].add(queue)
        try:
            state = await strategy.status(job_id)
            await ws.send(state_frame(state))
            while not state.completed:
                fresh = await queue.get()
                if fresh.seq > state.seq:
                    state = fresh
                    await ws.send(state_frame(state))
            await ws.wait_closed()
        finally:
            waiting[channel].discard(queue)
            if not waiting[channel]:
                del waiting[channel]

    listener = asyncio.create_task(listen())
    port = free_port()
    async with serve(handle, "127.0.0.1", port, compression=None):
        await asyncio.sleep(0.2)  # the PSUBSCRIBE is in
        say("ready", port=port)
        async for command in stream:
            say("count", received=received)
            if command["command"] == "stop":
                break
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await redis.aclose()


# The benchmark


async def _measure(
    ctx: Context, design: str, jobs: list[str], watched: list[str], redis: Redis
) -> dict[str, Any]:
    sizes = ctx.sizes
    await redis.flushall()
    children: list[Child] = []
    bridge: BridgeProcess | None = None
    try:
        if design == "ours":
            bridge = await BridgeProcess.launch(ctx.redis_url)
            url, proc = bridge.url, bridge.python_process()
        else:
            stand_in = await Child.start(
                "selectivity.py", "psubscribe_bridge", {"redis": ctx.redis_url}
            )
            children.append(stand_in)
            url = f"ws://127.0.0.1:{(await stand_in.expect('ready'))['port']}"
            proc = stand_in.psutil()
        driver = await Child.start("_jobside.py", "driver", {"redis": ctx.redis_url, "jobs": jobs})
        children.append(driver)
        await driver.expect("queued", timeout=300)
        clients = await Child.start(
            "_jobside.py",
            "clients",
            {"url": url, "follow": watched, "groups": dict.fromkeys(watched, "watched"),
             "group_order": ["watched"], "timeout": 60},
        )  # fmt: skip
        children.append(clients)
        await clients.expect("subscribed", timeout=120)
        await asyncio.sleep(0.5)

        received_before = 0
        if design != "ours":
            await children[0].send("count")
            received_before = (await children[0].expect("count"))["received"]
        redis_proc = psutil.Process(ctx.redis_pid) if ctx.redis_pid else None
        redis_before = cpu_seconds(redis_proc) if redis_proc else 0.0
        before = cpu_seconds(proc)
        began = time.monotonic()
        async with Profile(proc.pid, ctx.profile_path(f"selectivity-{design}")):
            await driver.send("finish", jobs=jobs, rate=sizes.selectivity_rate)
            ends = (await driver.expect("finished", timeout=600))["ends"]
            got = await clients.expect("received", timeout=120)
        seconds = time.monotonic() - began
        cpu = cpu_seconds(proc) - before
        redis_cpu = (cpu_seconds(redis_proc) - redis_before) if redis_proc else float("nan")

        received = len(watched)  # ours: Redis sends only the watched channels
        if design != "ours":
            await children[0].send("stop")
            received = (await children[0].expect("count"))["received"] - received_before
        await clients.send("close")
        await clients.expect("closed")
        await driver.send("stop")
        for child in children:
            await child.finish()
    finally:
        for child in children:
            await child.stop()
        if bridge is not None:
            await bridge.stop()
    first, last = min(ends.values()), max(ends.values())
    return {
        "cpu": cpu,
        "redis_cpu": redis_cpu,
        "seconds": seconds,
        "rate": (len(jobs) - 1) / (last - first) if last > first else float("nan"),
        "received": received,
        "latencies": [at - ends[job_id] for job_id, at in got["ends"]],
        "missing": got["missing"],
    }


async def run(ctx: Context) -> list[Table]:
    sizes = ctx.sizes
    total = int(sizes.selectivity_rate * sizes.selectivity_seconds)
    jobs = [f"job-{n}" for n in range(total)]
    step = total // sizes.selectivity_watched
    watched = [jobs[step // 2 + n * step] for n in range(sizes.selectivity_watched)]
    redis = Redis.from_url(ctx.redis_url)
    try:
        results = {
            design: await _measure(ctx, design, jobs, watched, redis)
            for design in ("ours", "psubscribe")
        }
    finally:
        await redis.aclose()
    table = Table(
        TITLE,
        ["bridge", "messages from Redis", "bridge CPU", "of one core", "Redis CPU",
         "watched delivered", *LATENCY_COLUMNS],
    )  # fmt: skip
    names = {
        "ours": "immortus-async bridge (SUBSCRIBE per watched job)",
        "psubscribe": "PSUBSCRIBE-everything listener (SAQ's design, stand-in)",
    }
    for design, result in results.items():
        delivered = len(result["latencies"])
        table.add(
            names[design],
            f"{result['received']:,}",
            f"{result['cpu']:.2f} s",
            f"{100 * result['cpu'] / result['seconds']:.0f}%",
            f"{result['redis_cpu']:.2f} s",
            f"{delivered}/{len(watched)}",
            *latency_cells(result["latencies"]),
        )
    ours, theirs = results["ours"]["cpu"], results["psubscribe"]["cpu"]
    table.notes.append(
        f"{total:,} jobs ended over {sizes.selectivity_seconds:.0f} s "
        f"(achieved {results['ours']['rate']:,.0f}/s and {results['psubscribe']['rate']:,.0f}/s), "
        f"{len(watched)} of them watched, each by one websocket client; every job publishes "
        f"one message as it ends (a real job also publishes queued and started)"
    )
    if ours > 0:
        table.notes.append(f"the PSUBSCRIBE listener used {theirs / ours:.1f}x the CPU of ours")
    return [table]


if __name__ == "__main__":
    child_main({"psubscribe_bridge": psubscribe_bridge})
