"""Wake latency: from a job's last line to its waiter waking, push against arq's polling.

A real arq worker runs in a process of its own; the waiters wait in another. Every
waiter is in place before any job runs (the jobs are enqueued, the waiters subscribe
and read their snapshots, and only then does the worker start), so what is measured
is the wake-up, not the waiters' setup. Each job returns the time of its last line;
the waiter records when ``await`` returned:

- ours: ``@tracked`` jobs, ``await tracker.completed(job_id)``, one Tracker (one
  pub/sub connection) for all the waiters;
- arq: the same jobs undecorated, ``await job.result(poll_delay=...)`` at arq's
  default 0.5 s and at 0.05 s;
- arq's own endings: jobs enqueued by plain arq for a function the worker does not
  know, which arq ends (``failed``) without any code of ours; the Tracker learns of
  it from Redis alone (client-side caching). Measured from the finish time arq
  writes in its result (milliseconds of the wall clock, turned into the monotonic
  clock's time here) to ``await tracker.completed(job_id)`` returning.
"""

from __future__ import annotations

import time
from typing import Any

from _arqjobs import enqueue, last_lines, run_worker, settings
from _common import LATENCY_COLUMNS, Child, Context, Profile, Table, latency_cells, latency_stats
from arq import ArqRedis, create_pool
from arq.jobs import Job

from immortus_async import Tracker

TITLE = "Wake latency: job's last line -> the waiting coroutine wakes"


async def measure(
    ctx: Context,
    method: str,
    count: int,
    *,
    poll_delay: float = 0.5,
    keyspace_events: str = "",
    profile: str = "",
    function: str = "",
) -> dict[str, Any]:
    """Run ``count`` jobs with every waiter in place first; return latencies and CPU."""
    pool = await create_pool(settings(ctx.redis_url))
    children: list[Child] = []
    try:
        await pool.flushall()
        await pool.config_set("notify-keyspace-events", keyspace_events)
        if function:
            jobs = await enqueue(pool, function, count)
        elif method == "tracker":
            async with Tracker(pool) as tracker:
                jobs = await enqueue(pool, "tracked_job", count, tracker=tracker)
        else:
            jobs = await enqueue(pool, "plain", count)
        config = {"redis": ctx.redis_url, "jobs": jobs, "method": method, "poll_delay": poll_delay}
        waiters = await Child.start("_arqjobs.py", "waiters", config)
        children.append(waiters)
        await waiters.expect("subscribed", timeout=300)
        async with Profile(waiters.pid, ctx.profile_path(profile) if profile else None):
            worker = await run_worker(ctx.redis_url)
            children.append(worker)
            done = await waiters.expect("done", timeout=600)
            await worker.expect("done", timeout=600)
        for child in children:
            await child.finish()
        ends = await (_finish_times(pool, jobs) if function else last_lines(pool, jobs))
    finally:
        for child in children:
            await child.stop()
        await pool.aclose()
    woke: dict[str, float] = done["woke"]
    return {"latencies": [woke[job_id] - ends[job_id] for job_id in jobs], "cpu": done["cpu"]}


async def _finish_times(pool: ArqRedis, jobs: list[str]) -> dict[str, float]:
    """When arq ended each job, by its result's finish time, on the monotonic clock."""
    offset = time.monotonic() - time.time()
    ends = {}
    for job_id in jobs:
        info = await Job(job_id, pool).result_info()
        assert info is not None, f"arq kept no result of job {job_id}"
        ends[job_id] = info.finish_time.timestamp() + offset
    return ends


async def run(ctx: Context) -> list[Table]:
    count = ctx.sizes.wake_jobs
    ours = await measure(ctx, "tracker", count, profile="wake-waiters")
    # With keyspace events the Tracker learns of arq's own record changes by push
    # too, and stops polling them (ArqStrategy.changes).
    ours_events = await measure(
        ctx, "tracker", count, keyspace_events="Kg$x", profile="wake-waiters-events"
    )
    own = await measure(ctx, "tracker", count, function="not_a_function", profile="wake-own")
    arq_default = await measure(ctx, "arq", count, poll_delay=0.5)
    arq_fast = await measure(ctx, "arq", count, poll_delay=0.05)

    table = Table(TITLE, ["waiter", "jobs", *LATENCY_COLUMNS, "waiters' CPU", "target"])
    p50 = {name: latency_stats(r["latencies"])["p50"] for name, r in
           (("ours", ours), ("arq", arq_default), ("fast", arq_fast))}  # fmt: skip
    p99 = latency_stats(ours["latencies"])["p99"]
    met = p50["ours"] <= 0.001 and p99 <= 0.005
    table.add(
        "immortus-async `await tracker.completed(id)` (push)",
        count,
        *latency_cells(ours["latencies"]),
        f"{ours['cpu']:.2f} s",
        f"p50 <= 1 ms, p99 <= 5 ms: {'yes' if met else '**no**'}",
    )
    events_p50 = latency_stats(ours_events["latencies"])["p50"]
    events_p99 = latency_stats(ours_events["latencies"])["p99"]
    table.add(
        "the same, Redis with keyspace events (`notify-keyspace-events Kg$x`)",
        count,
        *latency_cells(ours_events["latencies"]),
        f"{ours_events['cpu']:.2f} s",
        f"p50 <= 1 ms, p99 <= 5 ms: "
        f"{'yes' if events_p50 <= 0.001 and events_p99 <= 0.005 else '**no**'}",
    )
    own_p50 = latency_stats(own["latencies"])["p50"]
    table.add(
        "the same waiter, jobs arq ends on its own (function not found)",
        count,
        *latency_cells(own["latencies"]),
        f"{own['cpu']:.2f} s",
        f"p50 <= 20 ms: {'yes' if own_p50 <= 0.020 else '**no**'}",
    )
    ratio = p50["arq"] / p50["ours"] if p50["ours"] > 0 else float("inf")
    table.add(
        "arq `await job.result()` (poll_delay=0.5, default)",
        count,
        *latency_cells(arq_default["latencies"]),
        f"{arq_default['cpu']:.2f} s",
        f"ours >= 100x lower p50: {ratio:,.0f}x {'yes' if ratio >= 100 else '**no**'}",
    )
    table.add(
        "arq `await job.result(poll_delay=0.05)`",
        count,
        *latency_cells(arq_fast["latencies"]),
        f"{arq_fast['cpu']:.2f} s",
        f"{p50['fast'] / p50['ours']:,.0f}x ours",
    )
    table.notes.append(
        f"{count:,} jobs on one arq worker (max_jobs=10) in its own process, {count:,} waiters "
        "in another, all waiting at once; waiters' CPU: the waiting process's CPU seconds "
        "while the jobs ran; arq's own endings are timed from the finish time arq records "
        "(1 ms resolution)"
    )
    return [table]
