"""Browser path: from a job's last line to a websocket client receiving its terminal frame.

``@tracked`` jobs on a real arq worker (own process), the bridge (``immortus-async
bridge``, own process), and one websocket connection per job in a client process
standing in for the browsers, each subscribed (``/jobs/<id>?token=...``, snapshot
received) before the worker starts.
"""

from __future__ import annotations

from _arqjobs import enqueue, last_lines, run_worker, settings
from _common import (
    LATENCY_COLUMNS,
    BridgeProcess,
    Child,
    Context,
    Profile,
    Table,
    latency_cells,
    latency_stats,
    verdict,
)
from arq import create_pool

from immortus_async import Tracker

TITLE = "Browser path: job's last line -> websocket client receives the terminal frame"


async def run(ctx: Context) -> list[Table]:
    count = ctx.sizes.browser_jobs
    pool = await create_pool(settings(ctx.redis_url))
    bridge = await BridgeProcess.launch(ctx.redis_url)
    children: list[Child] = []
    try:
        async with Tracker(pool) as tracker:
            jobs = await enqueue(pool, "tracked_job", count, tracker=tracker)
        config = {
            "url": bridge.url,
            "follow": jobs,
            "groups": dict.fromkeys(jobs, "all"),
            "group_order": ["all"],
            "timeout": 300,
        }
        clients = await Child.start("_jobside.py", "clients", config)
        children.append(clients)
        setup = await clients.expect("subscribed", timeout=300)
        async with Profile(bridge.python_process().pid, ctx.profile_path("browser-bridge")):
            worker = await run_worker(ctx.redis_url)
            children.append(worker)
            got = await clients.expect("received", timeout=600)
            await worker.expect("done", timeout=600)
        await clients.send("close")
        await clients.expect("closed", timeout=120)
        for child in children:
            await child.finish()
        ends = await last_lines(pool, jobs)
    finally:
        for child in children:
            await child.stop()
        await bridge.stop()
        await pool.aclose()
    latencies = [at - ends[job_id] for job_id, at in got["ends"]]
    p50 = latency_stats(latencies)["p50"]
    table = Table(TITLE, ["path", "delivered", *LATENCY_COLUMNS, "target"])
    table.add(
        "@tracked job -> Redis -> bridge -> websocket client",
        f"{len(latencies):,}/{count:,}",
        *latency_cells(latencies),
        f"p50 <= 2 ms: {verdict(p50 <= 0.002 and len(latencies) == count)}",
    )
    table.notes.append(
        f"{count:,} jobs on one arq worker (max_jobs=10), {count:,} websocket connections "
        f"(one per job, opened in {setup['seconds']:.1f} s) on one bridge process"
    )
    if got["errors"] or setup["errors"]:
        table.notes.append(f"client errors (first few): {(setup['errors'] + got['errors'])[:3]}")
    return [table]
