"""How the job side writes on one Redis: ``started`` written without waiting for its
reply (bounded, and noticed at its deadline, by a frozen Redis), the next write taking
its outcome over in order, and a strategy subclass's own ``apply`` still called."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from immortus_async import JobState, JobStatus, JobUpdate, RedisPubSubStrategy, RedisServer
from immortus_async.jobside import JobContext, JobOptions, Leftovers, begin_job

from .utils import wait_until

S = JobStatus
OPTIONS = JobOptions.checked(write_timeout=0.3, retry_for=30)
GAVE_UP = "did not answer within 0.3s"


@pytest.fixture
async def frozen() -> AsyncIterator[tuple[RedisServer, RedisPubSubStrategy]]:
    """A Redis of its own, and a strategy on it whose writes' connection is open (the
    next write goes straight out): the test freezes it (SIGSTOP); it is thawed after."""
    with RedisServer() as server:
        assert server.pid is not None
        strategy = RedisPubSubStrategy(server.url)
        await strategy.apply(JobUpdate(job_id="warm", status=S.QUEUED, attempt=0))
        try:
            yield server, strategy
        finally:
            os.kill(server.pid, signal.SIGCONT)
            await strategy.aclose()
            await strategy.redis.aclose()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def _begin_frozen(
    server: RedisServer,
    strategy: RedisPubSubStrategy,
    leftovers: Leftovers,
    caplog: pytest.LogCaptureFixture,
) -> JobContext:
    """Freeze Redis (SIGSTOP), then begin a job of function ``f`` on it."""
    caplog.set_level(logging.WARNING, logger="immortus_async.jobside")
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    return await begin_job(
        "job", 1, redis=strategy.redis, spec=strategy, options=OPTIONS, function="f",
        leftovers=leftovers,
    )  # fmt: skip


@pytest.mark.timeout(30)
async def test_started_unanswered_is_noticed_at_its_deadline_without_another_write(
    frozen: tuple[RedisServer, RedisPubSubStrategy], caplog: pytest.LogCaptureFixture
) -> None:
    """Redis frozen as a job begins: begin_job returns before the write's deadline (the
    body does not wait for started's reply); at the deadline the write is given up,
    logged and redelivered, though the job writes nothing more; it lands once Redis is
    back."""
    server, strategy = frozen
    leftovers = Leftovers()
    context = await _begin_frozen(server, strategy, leftovers, caplog)
    assert _warnings(caplog) == []
    await wait_until(lambda: any(GAVE_UP in m for m in _warnings(caplog)), message="the deadline")
    os.kill(server.pid, signal.SIGCONT)
    state = await wait_until(lambda: _started(strategy), message="started to be redelivered")
    await context.stop()
    await leftovers.aclose(10)
    assert (state.function, state.stalled) == ("f", False)
    assert len(_warnings(caplog)) == 1


async def _started(strategy: RedisPubSubStrategy) -> JobState | None:
    state = await strategy.status("job")
    return state if state.status is S.STARTED else None


@pytest.mark.timeout(30)
async def test_an_end_written_behind_an_unanswered_started_is_redelivered_after_it(
    frozen: tuple[RedisServer, RedisPubSubStrategy], caplog: pytest.LogCaptureFixture
) -> None:
    """The job ends while its started is unanswered (Redis frozen): the end waits for
    no more than its deadline, both writes go to one redelivery in the order they were
    made (logged once), and the job reads finished once Redis is back."""
    server, strategy = frozen
    leftovers = Leftovers()
    context = await _begin_frozen(server, strategy, leftovers, caplog)
    await context.finished()
    assert len([m for m in _warnings(caplog) if GAVE_UP in m]) == 1
    os.kill(server.pid, signal.SIGCONT)
    await leftovers.aclose(10)
    state = await strategy.status("job")
    assert (state.status, state.function) == (S.FINISHED, "f")


class Recording(RedisPubSubStrategy):
    """Redis pub/sub tracking that records what its apply() was given."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.applied: list[JobStatus] = []

    async def apply(self, update: JobUpdate, **options: Any) -> JobState | None:
        self.applied.append(update.status)
        return await super().apply(update, **options)


async def test_a_subclass_apply_is_what_the_job_side_calls(redis: Redis) -> None:
    """The job side's own write path (no parse of the state written, started not
    awaited) is the base class's: a subclass that overrides apply() gets every write."""
    strategy = Recording(redis)
    context = await begin_job("job", 1, redis=redis, spec=strategy, options=OPTIONS)
    await context.update(progress=0.5)
    await context.finished()
    state = await strategy.status("job")
    await strategy.aclose()
    assert strategy.applied == [S.STARTED, S.STARTED, S.FINISHED]
    assert (state.status, state.progress) == (S.FINISHED, 1.0)
