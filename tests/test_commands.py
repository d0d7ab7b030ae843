"""The status and watch subcommands, run as a user runs them, against real Redis and
real arq jobs."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
import importlib.metadata
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis

from immortus_async import (
    JobStatus,
    JobUpdate,
    RedisPubSubStrategy,
    RedisServer,
    Tracker,
    configure,
    tracked,
)
from immortus_async.cli import COMMANDS, build_parser, log_level
from immortus_async.commands.watch import _watch, render_bar
from immortus_async.state import JobState

from .utils import SCALE, WriteEndingAsCancelled, free_port, run_worker

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


# The command as installed, the one a user runs.
IMMORTUS = str(Path(sys.executable).with_name("immortus-async"))


async def cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        IMMORTUS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


def unreachable() -> str:
    """The URL of a Redis that nobody serves."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize(
    ("final", "code"), [(S.FINISHED, 0), (S.FAILED, 1), (S.STARTED, 3), (S.ABORTED, 4)]
)
async def test_status_prints_state_and_exit_code(
    writer: RedisPubSubStrategy, redis_server: RedisServer, final: JobStatus, code: int
) -> None:
    """status prints the state; exits 0 finished, 1 failed, 3 not ended, 4 aborted."""
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
    """An id never seen prints unknown and exits 5."""
    process = await cli("status", "nobody", "--redis", redis_server.url)
    out, _ = await process.communicate()
    assert process.returncode == 5 and "nobody: unknown" in out.decode()


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
    """watch on an id never seen says so and exits 5 instead of waiting."""
    process = await cli("watch", "ghost", "--redis", redis_server.url)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 5 and "no job 'ghost'" in err.decode()


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


async def test_version_is_the_installed_package_s() -> None:
    """--version prints the version the installed package declares, and exits 0."""
    process = await cli("--version")
    out, _ = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert (process.returncode, out.decode().strip()) == (
        0,
        f"immortus-async {importlib.metadata.version('immortus-async')}",
    )


async def test_status_of_real_arq_jobs(
    pool: ArqRedis, tracker: Tracker, redis_server: RedisServer
) -> None:
    """status on real arq jobs: queued 3, finished 0, failed 1, untracked read from arq."""
    counted = await tracker.enqueue(pool, "count", 3)
    refused = await tracker.enqueue(pool, "refuse")
    plain = await pool.enqueue_job("untracked")
    assert counted and refused and plain

    async def status(job_id: str) -> tuple[int | None, str]:
        process = await cli("status", job_id, "--redis", redis_server.url)
        out, err = await process.communicate()
        assert not err, err.decode()
        return process.returncode, out.decode().strip()

    assert await status(counted.job_id) == (3, f"{counted.job_id}: queued")
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


@pytest.mark.parametrize("command", ["status", "watch"])
async def test_an_unreachable_redis_is_one_line_and_exit_69(command: str) -> None:
    """status/watch on a Redis nobody serves: one line on stderr and 69, not 1 (failed)."""
    process = await cli(command, "j1", "--redis", unreachable(), "--redis-timeout", "1")
    out, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert (process.returncode, out) == (69, b""), err.decode()
    assert re.fullmatch(rf"immortus-async {command}: [^\n]*Redis[^\n]*\n", err.decode()), err


@pytest.mark.parametrize("command", ["status", "watch"])
async def test_redis_refusing_access_is_one_line_and_exit_77(
    redis: Redis, redis_server: RedisServer, command: str
) -> None:
    """An ACL user that may read nothing, or a wrong password: one line and 77."""
    await redis.acl_setuser("nobody", enabled=True, passwords=["+secret"], reset=True)
    port = redis_server.port
    for url in (f"redis://nobody:secret@127.0.0.1:{port}/0", f"redis://:wrong@127.0.0.1:{port}/0"):
        process = await cli(command, "j1", "--redis", url, "--redis-timeout", "1")
        out, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
        assert (process.returncode, out) == (77, b""), err.decode()
        assert re.fullmatch(rf"immortus-async {command}: [^\n]+\n", err.decode()), err
        assert "secret" not in err.decode() and "wrong" not in err.decode()


async def test_watch_into_a_reader_that_closes_early(
    writer: RedisPubSubStrategy, redis_server: RedisServer
) -> None:
    """watch piped into a reader that leaves (``| head -n 1``) stops quietly with 141."""
    await writer.apply(JobUpdate(job_id="p1", status=S.QUEUED, attempt=0))
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        IMMORTUS, "watch", "p1", "--redis", redis_server.url, "--timeout", "30",
        stdout=write_end, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    head = await asyncio.create_subprocess_exec(
        "head", "-n", "1", stdin=read_end, stdout=asyncio.subprocess.PIPE
    )
    os.close(write_end)
    os.close(read_end)
    first, _ = await asyncio.wait_for(head.communicate(), 30 * SCALE)
    assert first == b"p1: queued\n"
    # head is gone: the line watch prints for this change meets a closed pipe.
    await writer.apply(JobUpdate(job_id="p1", status=S.STARTED, progress=0.5))
    _, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert (process.returncode, err.decode()) == (141, "")


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["status", "j"], "WARNING"),
        (["bridge"], "INFO"),
        (["--log-level", "DEBUG", "watch", "j"], "DEBUG"),
        (["status", "j", "--log-level", "DEBUG"], "DEBUG"),
        (["--log-level", "ERROR", "bridge", "--log-level", "WARNING"], "WARNING"),
        (["--log-level", "ERROR", "bridge"], "ERROR"),
    ],
)
def test_log_level_goes_before_or_after_the_subcommand(argv: list[str], level: str) -> None:
    """--log-level before or after the subcommand (the later wins); else per command."""
    assert log_level(build_parser().parse_args(argv)) == level


def test_every_command_reads_its_redis_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$REDIS_URL and $QUEUE_REDIS_URL are the defaults of status, watch and bridge."""
    monkeypatch.setenv("REDIS_URL", "redis://tracking.example:6379/1")
    monkeypatch.setenv("QUEUE_REDIS_URL", "redis://queue.example:6379/0")
    for argv in (["status", "j"], ["watch", "j"], ["bridge"]):
        args = build_parser().parse_args(argv)
        assert (args.redis, args.queue_redis) == (
            "redis://tracking.example:6379/1",
            "redis://queue.example:6379/0",
        ), argv
        assert build_parser().parse_args([*argv, "--queue-redis", "redis://q:1"]).queue_redis


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "j", "--redis", "localhost:6379"],
        ["watch", "j", "--timeout", "-1"],
        ["status", "j", "--redis-timeout", "0"],
        ["bridge", "--port", "99999"],
        ["bridge", "--queue-redis", "http://x"],
    ],
)
async def test_a_bad_value_is_one_line_and_the_usage_exit_code(argv: list[str]) -> None:
    """A bad option value: one line naming the option, exit 2, before any Redis is used."""
    process = await cli(*argv)
    out, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert (process.returncode, out) == (2, b""), err.decode()
    option = next(arg for arg in argv if arg.startswith("--"))
    assert re.fullmatch(rf"immortus-async {argv[0]}: argument {option}: [^\n]+\n", err.decode())


async def test_status_uses_the_queue_redis_for_untracked_jobs(
    redis_server: RedisServer, pool: ArqRedis
) -> None:
    """--queue-redis: an untracked job is read on the queue's Redis, not the tracking one."""
    # Needs Tracker(queue_redis=), from the hub's branch.
    with RedisServer() as tracking:
        plain = await pool.enqueue_job("untracked")
        assert plain is not None
        await run_worker(pool, JOBS)
        process = await cli(
            "status", plain.job_id, "--redis", tracking.url, "--queue-redis", redis_server.url
        )
        out, err = await asyncio.wait_for(process.communicate(), 30 * SCALE)
    assert out.decode().strip() == f"{plain.job_id}: finished  100%", err.decode()
    assert process.returncode == 0


class _ArmingOutput(io.StringIO):
    """watch's output: its first line (the snapshot) arms :class:`WriteEndingAsCancelled`."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = asyncio.Event()

    def write(self, text: str) -> int:
        if not self.armed.is_set():
            WriteEndingAsCancelled.arm()
            self.armed.set()
        return super().write(text)


async def test_watch_gives_up_at_its_timeout_as_a_redis_write_completes(
    writer: RedisPubSubStrategy, redis_server: RedisServer, redis: Redis
) -> None:
    """--timeout passes just as a re-read's write to Redis completes: watch gives up
    all the same (TimeoutError, exit 3) instead of following the job past it."""
    await writer.apply(JobUpdate(job_id="t1", status=S.STARTED, attempt=1))
    holding = Redis.from_url(
        redis_server.url, connection_class=WriteEndingAsCancelled, socket_timeout=30 * SCALE
    )
    # No fallback: the snapshot is read in watch's own task; without client-side
    # caching, on the client.
    configure(tracking_strategy=RedisPubSubStrategy(holding, client_tracking=False))
    args = build_parser().parse_args(
        ["watch", "t1", "--redis", redis_server.url, "--timeout", str(2 * SCALE)]
    )
    out = _ArmingOutput()
    watching = asyncio.create_task(_watch(args, out))
    try:
        async with asyncio.timeout(10 * SCALE):
            await out.armed.wait()
        # A lost pub/sub connection: once back, watch re-reads the job, and that
        # read's write is held until the timeout cancels it.
        await redis.client_kill_filter(_type="pubsub")
        async with asyncio.timeout(10 * SCALE):
            await WriteEndingAsCancelled.held.wait()
        await asyncio.wait([watching], timeout=10 * SCALE)
        assert watching.done(), "watch went on past its --timeout"
        with pytest.raises(TimeoutError):
            watching.result()
    finally:
        WriteEndingAsCancelled.armed = False
        watching.cancel()
        await asyncio.wait([watching])
        await holding.aclose()
