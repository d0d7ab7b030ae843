"""Redis cost: commands per tracked job lifecycle and per waiter, from ``INFO commandstats``.

Each phase starts from an empty Redis with ``CONFIG RESETSTAT``, enqueues N jobs that
each run ``cost_wait`` seconds (all at once: ``max_jobs=N``), optionally puts a waiter
on every job first, runs a real arq worker until the queue is empty, and reads
``INFO commandstats``. Differences between phases give:

- per job lifecycle, what tracking adds to arq's own commands (tracked jobs enqueued
  with ``Tracker.enqueue``, nobody waiting, minus the same jobs untracked);
- per waiter, what waiting adds (jobs with a waiter each, minus the same jobs
  without): ``Tracker.completed()`` for ours, ``Job.result()`` polling for arq.

Commands that Lua scripts run inside Redis are counted by commandstats too; they are
shown apart from the commands clients send (round trips).
"""

from __future__ import annotations

from typing import Any

from _arqjobs import enqueue, run_worker, settings
from _common import Child, Context, Table, verdict
from arq import create_pool
from redis.asyncio import Redis

from immortus_async import Tracker

TITLE = "Redis cost: commands per job lifecycle and per waiter (INFO commandstats)"
# What our Lua scripts call inside Redis (counted by commandstats, not sent by clients).
_IN_SCRIPTS = {"hmget", "hget", "hset", "pexpire", "publish", "set", "exists", "pttl", "get"}
_IGNORED = {"config|resetstat", "info", "flushall", "client|setinfo", "client|setname", "select"}


async def _commandstats(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict)
    }


async def _phase(
    ctx: Context, function: str, *, waiters: str | None = None, poll_delay: float = 0.5
) -> dict[str, int]:
    sizes = ctx.sizes
    pool = await create_pool(settings(ctx.redis_url))
    children: list[Child] = []
    try:
        await pool.flushall()
        await pool.config_resetstat()
        if function == "tracked_job":
            async with Tracker(pool) as tracker:
                jobs = await enqueue(
                    pool, function, sizes.cost_jobs, pause=sizes.cost_wait, tracker=tracker
                )
        else:
            jobs = await enqueue(pool, function, sizes.cost_jobs, pause=sizes.cost_wait)
        if waiters is not None:
            config: dict[str, Any] = {"redis": ctx.redis_url, "jobs": jobs, "method": waiters}
            config["poll_delay"] = poll_delay
            children.append(await Child.start("_arqjobs.py", "waiters", config))
            await children[-1].expect("subscribed", timeout=300)
        worker = await run_worker(ctx.redis_url, max_jobs=sizes.cost_jobs)
        children.append(worker)
        await worker.expect("done", timeout=600)
        if waiters is not None:
            await children[0].expect("done", timeout=600)
        for child in children:
            await child.finish()
        return await _commandstats(pool)
    finally:
        for child in children:
            await child.stop()
        await pool.aclose()


def _per(after: dict[str, int], before: dict[str, int], count: int) -> dict[str, float]:
    names = (set(after) | set(before)) - _IGNORED
    diff = {name: (after.get(name, 0) - before.get(name, 0)) / count for name in names}
    # arq's own commands vary by about one per job from run to run (a WATCH retried,
    # a ZSCORE more or less): differences under half a command are that noise.
    return {name: value for name, value in diff.items() if value >= 0.5}


def _describe(per: dict[str, float], *, scripted: bool) -> tuple[float, str]:
    """Round trips per unit and a breakdown; script-internal commands shown apart."""
    sent = {k: v for k, v in per.items() if not (scripted and k in _IN_SCRIPTS)}
    inside = {k: v for k, v in per.items() if scripted and k in _IN_SCRIPTS}
    text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(sent.items(), key=lambda kv: -kv[1]))
    if inside:
        text += " (inside scripts: " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(inside.items(), key=lambda kv: -kv[1])
        )
        text += ")"
    return sum(sent.values()), text


async def run(ctx: Context) -> list[Table]:
    sizes = ctx.sizes
    count = sizes.cost_jobs
    plain = await _phase(ctx, "plain")
    tracked = await _phase(ctx, "tracked_job")
    tracked_waited = await _phase(ctx, "tracked_job", waiters="tracker")
    arq_default = await _phase(ctx, "plain", waiters="arq", poll_delay=0.5)
    arq_fast = await _phase(ctx, "plain", waiters="arq", poll_delay=0.05)

    table = Table(TITLE, ["what", "commands sent", "which (per job or per waiter)", "target"])
    arq_own, arq_text = _describe(_per(plain, {}, count), scripted=False)
    table.add("arq's own, per job (untracked, nobody waits)", f"{arq_own:.1f}", arq_text, "")
    ours, ours_text = _describe(_per(tracked, plain, count), scripted=True)
    table.add(
        "tracking, per job lifecycle (queued, started, finished)",
        f"{ours:.1f}",
        ours_text,
        f"<= 5: {verdict(ours <= 5)}",
    )
    waiter, waiter_text = _describe(_per(tracked_waited, tracked, count), scripted=False)
    table.add(f"waiter: `tracker.completed()`, job runs {sizes.cost_wait:g} s", f"{waiter:.1f}",
              waiter_text, "")  # fmt: skip
    for name, stats, delay in (("", arq_default, 0.5), ("", arq_fast, 0.05)):
        polls, text = _describe(_per(stats, plain, count), scripted=False)
        table.add(
            f"waiter: arq `job.result(poll_delay={delay:g})`{name}, job runs {sizes.cost_wait:g} s",
            f"{polls:.1f}",
            text,
            "",
        )
    table.notes.append(
        f"{count} jobs per phase, all running at once on one worker; a waiter's cost with "
        "push does not grow with the job's duration, a poller's grows by 4 commands "
        "(MULTI, GET, ZSCORE, EXEC) every poll_delay; differences under 0.5 command per job "
        "(arq's own run-to-run variation) are left out"
    )
    return [table]
