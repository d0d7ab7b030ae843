"""Redis cost: commands per tracked job lifecycle and per waiter, from ``INFO commandstats``.

Each phase starts from an empty Redis with ``CONFIG RESETSTAT``, enqueues N jobs that
each run ``cost_wait`` seconds (all at once: ``max_jobs=N``), optionally puts a waiter
on every job first, runs a real arq worker until the queue is empty, and reads
``INFO commandstats``. Differences between phases give:

- per job lifecycle, what tracking adds to arq's own commands (tracked jobs enqueued
  with ``Tracker.enqueue``, nobody waiting, minus the same jobs untracked);
- per waiter, what waiting adds (jobs with a waiter each, minus the same jobs
  without): ``Tracker.completed()`` for ours, ``Job.result()`` polling for arq.

Commands that Lua scripts run inside Redis are counted by commandstats too, so the
commands clients send (round trips) are counted apart, with ``MONITOR``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from _arqjobs import enqueue, run_worker, settings
from _common import Child, Context, Table, verdict
from arq import create_pool
from redis.asyncio import Redis

from immortus_async import Tracker

TITLE = "Redis cost: commands per job lifecycle and per waiter (INFO commandstats)"
_IGNORED = {"config|resetstat", "info", "flushall", "client|setinfo", "client|setname", "select",
            "config|set", "monitor"}  # fmt: skip


async def _commandstats(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict)
    }


class Monitor:
    """Counts the commands clients send, by name, with ``MONITOR``.

    commandstats also counts what Lua scripts run inside Redis; MONITOR shows those
    as coming from ``lua``, so the two together tell round trips from work done.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.sent: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Monitor:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        if not (await reader.readline()).startswith(b"+OK"):
            raise RuntimeError("MONITOR refused")
        self._writer = writer
        self._task = asyncio.create_task(self._count(reader))
        return self

    async def _count(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            head, _, rest = line.partition(b"] ")
            if head.endswith(b" lua") or not rest.startswith(b'"'):
                continue
            name = rest[1 : rest.index(b'"', 1)].decode(errors="replace").lower()
            self.sent[name] += 1

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.2)  # the last lines
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._writer.close()


async def _phase(
    ctx: Context,
    function: str,
    *,
    waiters: str | None = None,
    poll_delay: float = 0.5,
    wait: float | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """One phase's (commands sent by clients, commands Redis ran), by name."""
    sizes = ctx.sizes
    pause = sizes.cost_wait if wait is None else wait
    pool = await create_pool(settings(ctx.redis_url))
    children: list[Child] = []
    try:
        await pool.flushall()
        await pool.config_resetstat()
        async with Monitor(ctx.redis_url) as monitor:
            if function == "tracked_job":
                async with Tracker(pool) as tracker:
                    jobs = await enqueue(
                        pool, function, sizes.cost_jobs, pause=pause, tracker=tracker
                    )
            else:
                jobs = await enqueue(pool, function, sizes.cost_jobs, pause=pause)
            if waiters is not None:
                config: dict[str, Any] = {"redis": ctx.redis_url, "jobs": jobs}
                config |= {"method": waiters, "poll_delay": poll_delay}
                children.append(await Child.start("_arqjobs.py", "waiters", config))
                await children[-1].expect("subscribed", timeout=300)
            worker = await run_worker(ctx.redis_url, max_jobs=sizes.cost_jobs)
            children.append(worker)
            await worker.expect("done", timeout=600)
            if waiters is not None:
                await children[0].expect("done", timeout=600)
            for child in children:
                await child.finish()
        return dict(monitor.sent), await _commandstats(pool)
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


def _row(
    after: tuple[dict[str, int], dict[str, int]],
    before: tuple[dict[str, int], dict[str, int]] | None,
    count: int,
) -> tuple[float, float, str]:
    """(sent per unit, ran per unit, which were sent)."""
    sent = _per(after[0], before[0] if before else {}, count)
    ran = _per(after[1], before[1] if before else {}, count)
    text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(sent.items(), key=lambda kv: -kv[1]))
    return sum(sent.values()), sum(ran.values()), text


Stats = tuple[dict[str, int], dict[str, int]]


def _waiter_rows(
    table: Table,
    wait: float,
    count: int,
    tracked: Stats,
    tracked_waited: Stats,
    plain: Stats,
    arq_default: Stats,
    arq_fast: Stats,
) -> None:
    text_wait = f"job runs {wait:g} s"
    sent, ran, text = _row(tracked_waited, tracked, count)
    table.add(f"waiter: `tracker.completed()`, {text_wait}", f"{sent:.1f}", f"{ran:.1f}", text, "")
    for stats, delay in ((arq_default, 0.5), (arq_fast, 0.05)):
        sent, ran, text = _row(stats, plain, count)
        table.add(
            f"waiter: arq `job.result(poll_delay={delay:g})`, {text_wait}",
            f"{sent:.1f}",
            f"{ran:.1f}",
            text,
            "",
        )


async def run(ctx: Context) -> list[Table]:
    sizes = ctx.sizes
    count = sizes.cost_jobs
    plain = await _phase(ctx, "plain")
    tracked = await _phase(ctx, "tracked_job")
    tracked_waited = await _phase(ctx, "tracked_job", waiters="tracker")
    arq_default = await _phase(ctx, "plain", waiters="arq", poll_delay=0.5)
    arq_fast = await _phase(ctx, "plain", waiters="arq", poll_delay=0.05)

    table = Table(
        TITLE, ["what", "sent (round trips)", "Redis ran (commandstats)", "sent, by name", "target"]
    )
    sent, ran, text = _row(plain, None, count)
    table.add("arq's own, per job (untracked, nobody waits)", f"{sent:.1f}", f"{ran:.1f}", text, "")
    sent, ran, text = _row(tracked, plain, count)
    table.add(
        "tracking, per job lifecycle (queued, started, heartbeat, finished)",
        f"{sent:.1f}",
        f"{ran:.1f}",
        text,
        f"<= 5 sent: {verdict(sent <= 5)}",
    )
    _waiter_rows(table, sizes.cost_wait, count, tracked, tracked_waited, plain, arq_default,
                 arq_fast)  # fmt: skip
    if sizes.cost_long_wait:
        long = sizes.cost_long_wait
        phases = [
            await _phase(ctx, "tracked_job", wait=long),
            await _phase(ctx, "tracked_job", waiters="tracker", wait=long),
            await _phase(ctx, "plain", wait=long),
            await _phase(ctx, "plain", waiters="arq", poll_delay=0.5, wait=long),
            await _phase(ctx, "plain", waiters="arq", poll_delay=0.05, wait=long),
        ]
        _waiter_rows(table, long, count, *phases)
    table.notes.append(
        f"{count} jobs per phase, all running at once on one worker. Sent: commands clients "
        "sent (MONITOR); Redis ran: commandstats, which also counts the commands Lua "
        "scripts run inside Redis. A poller costs 4 commands (MULTI, GET, ZSCORE, EXEC) every "
        "poll_delay; a Tracker waiter its subscription and snapshot (and the re-reads that "
        "client-side caching's invalidations ask for as arq moves the job); differences under 0.5 "
        "command per job (arq's own run-to-run variation) are left out"
    )
    return [table]
