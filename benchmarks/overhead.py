"""Overhead: what ``@tracked`` costs an arq worker, in jobs per second.

The same trivial job (it returns at once), undecorated and ``@tracked``, run by a real
arq worker in a process of its own (``max_jobs=10``; ``poll_delay=0.01`` so that the
worker's sleep between polls of an empty-looking queue does not hide the per-job cost).
Throughput = jobs / (last job's last line - first job's last line); the runs alternate,
and the best of each is kept, so a neighbour's burst of CPU does not decide the ratio.
"""

from __future__ import annotations

from _arqjobs import enqueue, last_lines, run_worker, settings
from _common import Context, Profile, Table, verdict
from arq import create_pool

from immortus_async import Tracker

TITLE = "Overhead: arq throughput, untracked vs @tracked"
ROUNDS = 2


async def throughput(
    ctx: Context, function: str, count: int, profile: str = "", pause: float = 0.0
) -> float:
    """Jobs per second of ``function`` (each sleeping ``pause`` s) on one worker."""
    pool = await create_pool(settings(ctx.redis_url))
    try:
        await pool.flushall()
        if function == "tracked_job":
            async with Tracker(pool) as tracker:
                jobs = await enqueue(pool, function, count, pause=pause, tracker=tracker)
        else:
            jobs = await enqueue(pool, function, count, pause=pause)
        worker = await run_worker(ctx.redis_url, poll_delay=0.01)
        try:
            async with Profile(worker.pid, ctx.profile_path(profile) if profile else None):
                done = await worker.expect("done", timeout=600)
            await worker.finish()
        finally:
            await worker.stop()
        if done["complete"] != count:
            raise RuntimeError(f"the worker completed {done['complete']} of {count} jobs")
        ends = sorted((await last_lines(pool, jobs)).values())
    finally:
        await pool.aclose()
    return (count - 1) / (ends[-1] - ends[0])


async def run(ctx: Context) -> list[Table]:
    count = ctx.sizes.overhead_jobs
    plain: list[float] = []
    tracked: list[float] = []
    for round_ in range(ROUNDS):
        plain.append(await throughput(ctx, "plain", count))
        profile = "overhead-tracked-worker" if round_ == 0 else ""
        tracked.append(await throughput(ctx, "tracked_job", count, profile))
    ratio = max(tracked) / max(plain)
    table = Table(TITLE, ["job", "jobs", "jobs/s (best)", "all runs", "vs untracked", "target"])
    table.add(
        "untracked `async def job(ctx)`",
        f"{count:,}",
        f"{max(plain):,.0f}",
        ", ".join(f"{value:,.0f}" for value in plain),
        "1.00",
        "",
    )
    table.add(
        "`@tracked async def job(ctx)`",
        f"{count:,}",
        f"{max(tracked):,.0f}",
        ", ".join(f"{value:,.0f}" for value in tracked),
        f"{ratio:.2f}",
        f">= 0.80: {verdict(ratio >= 0.8)}",
    )
    # A job that waits on I/O for 10 ms: the worker is bound by max_jobs, not CPU.
    io_count = max(count // 2, 10)
    io_plain = await throughput(ctx, "plain", io_count, pause=0.01)
    io_tracked = await throughput(ctx, "tracked_job", io_count, pause=0.01)
    table.add(
        "untracked, the job awaits 10 ms",
        f"{io_count:,}",
        f"{io_plain:,.0f}",
        f"{io_plain:,.0f}",
        "1.00",
        "",
    )
    table.add(
        "`@tracked`, the job awaits 10 ms",
        f"{io_count:,}",
        f"{io_tracked:,.0f}",
        f"{io_tracked:,.0f}",
        f"{io_tracked / io_plain:.2f}",
        "",
    )
    table.notes.append(
        "@tracked writes started (and its first heartbeat) before the function and finished "
        "after it, each one EVALSHA, pipelined with other jobs' writes on one connection; "
        "arq's own work per job is several round trips"
    )
    return [table]
