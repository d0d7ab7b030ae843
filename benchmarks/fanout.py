"""Fan-out: many websocket clients on one bridge process.

N clients each follow a job of their own and M clients follow one shared job, all on
one bridge process (the real CLI). The job side ends the N jobs at a steady rate, then
the shared one; each client records when its terminal frame arrived. The bridge's RSS
is read before any client connects (idle, after one warm-up client) and with every
client connected; per connection = (connected - idle) / (N + M).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from _common import (
    LATENCY_COLUMNS,
    BridgeProcess,
    Child,
    Context,
    Profile,
    Table,
    cpu_seconds,
    latency_cells,
    latency_stats,
    raise_open_files_limit,
    rss,
    verdict,
)
from websockets.asyncio.client import connect

from immortus_async import mint_token

TITLE = "Fan-out: websocket clients on one bridge process, job end -> terminal frame"
MEMORY_TITLE = "Fan-out: bridge memory per websocket connection"
CLIENT_PROCESSES = 2


async def _warm_up(bridge: BridgeProcess, job_id: str) -> None:
    """One client follows and leaves: the bridge's Redis connections now exist."""
    from _common import SECRET

    token = mint_token(job_id, SECRET, ttl=60)
    async with connect(f"{bridge.url}/jobs/{job_id}?token={token}", ping_interval=None) as ws:
        json.loads(await ws.recv())


def _latencies(ends: dict[str, float], received: list[list[Any]]) -> list[float]:
    return [at - ends[job_id] for job_id, at in received]


async def run(ctx: Context) -> list[Table]:
    sizes = ctx.sizes
    raise_open_files_limit()
    own = [f"own-{n}" for n in range(sizes.fanout_own)]
    shared = "shared"
    bridge = await BridgeProcess.launch(ctx.redis_url)
    children: list[Child] = []
    try:
        driver = await Child.start(
            "_jobside.py", "driver", {"redis": ctx.redis_url, "jobs": [*own, shared]}
        )
        children.append(driver)
        await driver.expect("queued", timeout=300)
        await _warm_up(bridge, shared)
        await asyncio.sleep(0.5)
        proc = bridge.python_process()
        idle_rss = rss(proc)

        groups = {job_id: "own" for job_id in own} | {shared: "shared"}
        for index in range(CLIENT_PROCESSES):
            follow = own[index::CLIENT_PROCESSES]
            follow += [shared] * len(range(index, sizes.fanout_shared, CLIENT_PROCESSES))
            config = {
                "url": bridge.url,
                "follow": follow,
                "groups": {job_id: groups[job_id] for job_id in set(follow)},
                "group_order": ["own", "shared"],
                "concurrency": 100,
                "timeout": 120,
            }
            children.append(await Child.start("_jobside.py", "clients", config))
        clients = children[1:]
        setup = [await client.expect("subscribed", timeout=900) for client in clients]
        connected = sizes.fanout_own + sizes.fanout_shared
        await asyncio.sleep(1.0)  # let the bridge finish its snapshot reads
        connected_rss = rss(proc)

        cpu_before = cpu_seconds(proc)
        async with Profile(proc.pid, ctx.profile_path("fanout-own")):
            await driver.send("finish", jobs=own, rate=sizes.fanout_rate)
            own_ends = (await driver.expect("finished", timeout=600))["ends"]
            own_received = [await client.expect("received", timeout=300) for client in clients]
        cpu_own = cpu_seconds(proc) - cpu_before

        cpu_before = cpu_seconds(proc)
        async with Profile(proc.pid, ctx.profile_path("fanout-shared"), rate=2000):
            await driver.send("finish", jobs=[shared], rate=1000)
            shared_ends = (await driver.expect("finished", timeout=60))["ends"]
            shared_received = [await client.expect("received", timeout=300) for client in clients]
        cpu_shared = cpu_seconds(proc) - cpu_before
        peak_rss = rss(proc)

        for client in clients:
            await client.send("close")
        for client in clients:
            await client.expect("closed", timeout=300)
            await client.finish()
        await driver.send("stop")
        await driver.finish()
    finally:
        for child in children:
            await child.stop()
        await bridge.stop()

    own_lat = _latencies(own_ends, [r for got in own_received for r in got["ends"]])
    shared_lat = _latencies(shared_ends, [r for got in shared_received for r in got["ends"]])
    errors = [e for got in [*setup, *own_received, *shared_received] for e in got["errors"]]

    table = Table(
        TITLE,
        ["clients", "delivered", *LATENCY_COLUMNS, "target p99 <= 50 ms"],
    )
    table.add(
        f"{sizes.fanout_own:,} clients, each its own job (jobs end at {sizes.fanout_rate:,}/s)",
        f"{len(own_lat):,}/{sizes.fanout_own:,}",
        *latency_cells(own_lat),
        verdict(len(own_lat) == sizes.fanout_own and latency_stats(own_lat)["p99"] <= 0.050),
    )
    table.add(
        f"{sizes.fanout_shared:,} clients, one job",
        f"{len(shared_lat):,}/{sizes.fanout_shared:,}",
        *latency_cells(shared_lat),
        verdict(
            len(shared_lat) == sizes.fanout_shared and latency_stats(shared_lat)["p99"] <= 0.050
        ),
    )
    table.notes.append(
        f"{connected:,} connections opened in {max(s['seconds'] for s in setup):.1f} s by "
        f"{CLIENT_PROCESSES} client processes; bridge CPU while the own jobs ended: "
        f"{cpu_own:.2f} s over {sizes.fanout_own / sizes.fanout_rate:.1f} s; "
        f"while the shared job's end went out: {cpu_shared:.2f} s"
    )
    if errors:
        table.notes.append(f"client errors (first few): {errors[:3]}")

    per_connection = (connected_rss - idle_rss) / connected
    memory = Table(MEMORY_TITLE, ["bridge RSS", "value", "target", "met"])
    memory.add("idle (Redis connected, no client)", f"{idle_rss / 2**20:.1f} MiB", "", "")
    memory.add(f"{connected:,} clients connected", f"{connected_rss / 2**20:.1f} MiB", "", "")
    memory.add("after every terminal frame was sent", f"{peak_rss / 2**20:.1f} MiB", "", "")
    memory.add(
        "per connection (connected - idle) / clients",
        f"{per_connection / 1024:.1f} KiB",
        "<= 30 KiB",
        verdict(per_connection <= 30 * 1024),
    )
    return [table, memory]
