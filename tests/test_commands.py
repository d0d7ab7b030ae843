"""The status and watch subcommands, run as a user runs them, against real Redis and
real arq jobs."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis

from immortus_async import JobStatus, JobUpdate, RedisPubSubStrategy, RedisServer, Tracker, tracked
from immortus_async.cli import COMMANDS
from immortus_async.commands.watch import render_bar
from immortus_async.state import JobState

from .utils import SCALE, run_worker

S = JobStatus

# Job functions, at module level so that arq knows them by a plain name.


@tracked
async def count(ctx: dict[str, Any], n: int) -> int:
    for done in range(1, n + 1):
        await ctx["immortus"].update(progress=done / n, done=done)
    return n


@tracked
async def refuse(ctx: dict[str, Any]) -> None:
    raise ValueError("bad row 7")


async def untracked(ctx: dict[str, Any]) -> str:
    return "arq alone"


JOBS = [count, refuse, untracked]


@pytest.fixture
async def writer(redis_server: RedisServer) -> AsyncIterator[RedisPubSubStrategy]:
    strategy = RedisPubSubStrategy(redis_server.url)
    yield strategy
    await strategy.aclose()


async def cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortus_async.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("final", "code"), [(S.FINISHED, 0), (S.FAILED, 1), (S.STARTED, 2), (S.ABORTED, 2)]
)
async def test_status_prints_state_and_exit_code(
    writer: RedisPubSubStrategy, redis_server: RedisServer, final: JobStatus, code: int
) -> None:
    """status prints the state and exits 0 finished, 1 failed, 2 anything else."""
    error = "ValueError: bad row" if final is S.FAILED else None
    await writer.apply(JobUpdate(job_id="s1", status=S.STARTED, meta={"rows": 3}))
    if final is not S.STARTED:
        await writer.apply(JobUpdate(job_id="s1", status=final, error=error))
    process = await cli("status", "s1", "--redis", redis_server.url)
    out, err = await process.communicate()
    assert process.returncode == code, err.decode()
    assert f"s1: {final.value}" in out.decode() and "rows=3" in out.decode()
    if error:
        assert error in out.decode()

    process = await cli("status", "s1", "--json", "--redis", redis_server.url)
    out, _ = await process.communicate()
    assert json.loads(out)["status"] == final.value


async def test_status_of_unknown_job(redis_server: RedisServer) -> None:
    """An id never seen prints unknown and exits 2."""
    process = await cli("status", "nobody", "--redis", redis_server.url)
    out, _ = await process.communicate()
    assert process.returncode == 2 and "nobody: unknown" in out.decode()


async def test_watch_follows_to_the_end(
    writer: RedisPubSubStrategy, redis_server: RedisServer
) -> None:
    """watch prints each change as it happens and exits with the final status's code."""
    await writer.apply(JobUpdate(job_id="w1", status=S.QUEUED, attempt=0))
    process = await cli("watch", "w1", "--redis", redis_server.url, "--timeout", "30")
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.readline(), 30)
    assert b"w1: queued" in first
    for i in (1, 2):
        await writer.apply(JobUpdate(job_id="w1", status=S.STARTED, progress=i / 4))
    await writer.apply(JobUpdate(job_id="w1", status=S.FAILED, error="boom"))
    rest, _ = await asyncio.wait_for(process.communicate(), 30)
    lines = rest.decode().splitlines()
    assert lines == ["w1: started  25%", "w1: started  50%", "w1: failed  50%  error: boom"]
    assert process.returncode == 1


async def test_watch_unknown_job_exits_at_once(redis_server: RedisServer) -> None:
    """watch on an id never seen says so and exits 2 instead of waiting."""
    process = await cli("watch", "ghost", "--redis", redis_server.url)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2 and "no job 'ghost'" in err.decode()


def test_render_bar_fits_the_terminal() -> None:
    """The live bar shows the fill and the status, cut to the terminal's width."""
    line = render_bar(JobState(job_id="j", status=S.STARTED, progress=0.5), 80)
    assert line.startswith("[#############-------------] j: started  50%")
    assert len(render_bar(JobState(job_id="j" * 200), 40)) == 40


async def test_help_lists_every_command() -> None:
    """--help lists each subcommand with a one-line description."""
    process = await cli("--help")
    out, _ = await process.communicate()
    for command, module in COMMANDS.items():
        summary = (module.__doc__ or "").split()[:3]
        assert re.search(rf"^    {command} +{' '.join(summary)}", out.decode(), re.MULTILINE)


async def test_status_of_real_arq_jobs(
    pool: ArqRedis, tracker: Tracker, redis_server: RedisServer
) -> None:
    """status on real arq jobs: queued 2, finished 0, failed 1, untracked read from arq."""
    counted = await tracker.enqueue(pool, "count", 3)
    refused = await tracker.enqueue(pool, "refuse")
    plain = await pool.enqueue_job("untracked")
    assert counted and refused and plain

    async def status(job_id: str) -> tuple[int | None, str]:
        process = await cli("status", job_id, "--redis", redis_server.url)
        out, err = await process.communicate()
        assert not err, err.decode()
        return process.returncode, out.decode().strip()

    assert await status(counted.job_id) == (2, f"{counted.job_id}: queued")
    await run_worker(pool, JOBS)
    assert await status(counted.job_id) == (0, f"{counted.job_id}: finished  100%  done=3")
    failed = f"{refused.job_id}: failed  error: ValueError: bad row 7"
    assert await status(refused.job_id) == (1, failed)
    assert await status(plain.job_id) == (0, f"{plain.job_id}: finished  100%")


@pytest.mark.parametrize(
    ("function", "args", "code", "last"),
    [("count", (4,), 0, "finished  100%  done=4"), ("refuse", (), 1, "failed  error: ValueError")],
)
async def test_watch_follows_a_real_arq_job_to_its_exit_code(
    pool: ArqRedis,
    tracker: Tracker,
    redis_server: RedisServer,
    function: str,
    args: tuple[int, ...],
    code: int,
    last: str,
) -> None:
    """watch prints a queued job, waits while a worker runs it, ends with its outcome."""
    job = await tracker.enqueue(pool, function, *args)
    assert job is not None
    process = await cli("watch", job.job_id, "--redis", redis_server.url, "--timeout", "30")
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.readline(), 30 * SCALE)
    assert first.decode().strip() == f"{job.job_id}: queued"
    await run_worker(pool, JOBS)
    rest, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    lines = rest.decode().splitlines()
    assert lines[0].startswith(f"{job.job_id}: started")
    assert lines[-1].startswith(f"{job.job_id}: {last}"), lines
    assert process.returncode == code, err.decode()
