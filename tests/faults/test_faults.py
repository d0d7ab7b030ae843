"""The fault suite: real Redis, arq workers and bridge, each fault caused for real.

Every scenario runs a few hundred short jobs with their waiters subscribed before
the fault, and asserts that every waiter got the right answer (the terminal state
arq recorded, or JobLost / a job_lost frame where Redis lost the job) within a
bounded time after the fault, that nothing came after a terminal state, and that
no tracked job failed where its untracked twin did not. ``pytest -s`` prints each
scenario's table; a failing assertion carries it too. IMMORTUS_SOAK=1 runs more
jobs and repeats each fault.
"""

from __future__ import annotations

import pytest

from ..conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
import os
import signal

from immortus_async import RedisServer

from ..utils import SCALE, wait_until
from .harness import REPEAT, SOAK, Run, Tally

pytestmark = pytest.mark.timeout(900 if SOAK else 90)

FREEZE = 3.0 * SCALE
"""How long Redis is stopped: twice the jobs' arq timeout."""
JOB_TIMEOUT = FREEZE / 2


def cues(count: int = REPEAT) -> list[float]:
    """The fractions of answers at which to cause ``count`` faults, spread over the run."""
    return [(n + 1) / (count + 2) for n in range(count)]


def check(tally: Tally) -> None:
    """Print the table; assert that everything but the right answers is zero."""
    table = tally.table()
    print("\n" + table)
    assert tally.failures == 0, table


async def test_redis_sigkill_and_restart_with_aof(aof_server: RedisServer) -> None:
    """Redis SIGKILLed and restarted with its data: every waiter gets the right end."""
    async with Run("Redis SIGKILL, restart with AOF", aof_server) as run:
        await run.prepare()
        for cue in cues():
            await run.until_answered(cue)
            await asyncio.to_thread(aof_server.restart)
        run.fault_over()
        check(await run.finish())


async def test_redis_sigkill_and_restart_without_data(redis_server: RedisServer) -> None:
    """Redis restarted empty: each waiter gets its job's end, or JobLost / job_lost."""
    async with Run("Redis SIGKILL, restart empty", redis_server, loses_data=True) as run:
        await run.prepare()
        for cue in cues():
            await run.until_answered(cue)
            await asyncio.to_thread(redis_server.restart)
        run.fault_over()
        check(await run.finish())


async def test_redis_restart_without_data_then_bridge_restart(redis_server: RedisServer) -> None:
    """Redis restarted empty, then the bridge: clients subscribe again with since_seq
    above what the emptied Redis counts, and each still gets its end or job_lost."""
    name = "Redis restart empty, then bridge SIGKILL and restart"
    async with Run(name, redis_server, loses_data=True) as run:
        await run.prepare()
        for cue in cues():
            await run.until_answered(cue)
            await asyncio.to_thread(redis_server.restart)
            # Jobs still running write their next states into the empty Redis, from
            # seq 1 again, while the clients hold higher seqs.
            await wait_until(run.pubsub_back, message="the pub/sub connections back")
            await run.bridge.kill()
            await run.bridge.start()
        run.fault_over()
        check(await run.finish())


async def test_client_kill_pubsub_repeated(redis_server: RedisServer) -> None:
    """CLIENT KILL TYPE pubsub, again and again: no waiter misses its end."""
    async with Run("CLIENT KILL TYPE pubsub, repeated", redis_server) as run:
        await run.prepare()
        for cue in cues(5 * REPEAT):
            await run.until_answered(cue)
            await run.redis.client_kill_filter(_type="pubsub")
            # Both trackers and the bridge reconnect before the next kill.
            await wait_until(run.pubsub_back, message="the pub/sub connections back")
        run.fault_over()
        check(await run.finish())


async def test_redis_sigstop_longer_than_the_job_timeout(redis_server: RedisServer) -> None:
    """Redis frozen past the jobs' arq timeout: no tracked job fails where its twin
    does not, and every waiter gets the right end."""
    async with Run("Redis SIGSTOP past the job timeout", redis_server) as run:
        # In-progress keys outlive the freeze: no job runs twice.
        options = ("--job-timeout", str(JOB_TIMEOUT), "--in-progress", str(3 * FREEZE))
        await run.prepare(worker_options=options)
        for cue in cues():
            await run.until_answered(cue)
            assert redis_server.pid is not None
            os.kill(redis_server.pid, signal.SIGSTOP)
            try:
                # The fault's length, not a wait for a condition.
                await asyncio.sleep(FREEZE)
            finally:
                os.kill(redis_server.pid, signal.SIGCONT)
        run.fault_over()
        check(await run.finish())


async def test_worker_sigkill_with_a_second_worker(redis_server: RedisServer) -> None:
    """A worker SIGKILLed mid-run: arq runs its jobs again on the other worker once
    their in-progress keys expire, and every waiter gets the end of the new attempt."""
    options = ("--in-progress", str(1.5 * SCALE))
    async with Run("arq worker SIGKILL, a second worker on", redis_server) as run:
        await run.prepare(worker_options=options)
        for n, cue in enumerate(cues()):
            await run.until_answered(cue)
            await run.kill_worker(run.workers[n])
            if n + 1 < REPEAT:
                await run.start_worker()
        run.fault_over()
        check(await run.finish())


async def test_bridge_sigkill_and_restart(redis_server: RedisServer) -> None:
    """The bridge SIGKILLed and restarted on its port: clients reconnect, subscribe
    again with since_seq, and each gets its job's end once, nothing after it."""
    async with Run("bridge SIGKILL, restart on the same port", redis_server) as run:
        await run.prepare()
        for cue in cues():
            await run.until_answered(cue)
            await run.bridge.kill()
            await run.bridge.start()
        run.fault_over()
        check(await run.finish())
