"""The job side with a real arq worker: @tracked, progress, heartbeats, outages, hooks."""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import asyncio
import inspect
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.cron import cron
from arq.jobs import Job
from arq.worker import JobExecutionFailed, Retry, func, get_kwargs
from redis.asyncio import Redis

from immortus_async import (
    JobContext,
    JobState,
    JobStatus,
    MemoryStrategy,
    RedisPubSubStrategy,
    RedisServer,
    RedisUnavailable,
    Tracker,
    job_context,
    track_worker,
    tracked,
)

from .arq_worker import STALLED_AFTER, crash_once
from .utils import SCALE, Watcher, run_worker, steps, wait_until

S = JobStatus
ROOT = Path(__file__).resolve().parent.parent

# Job functions, at module level so that arq knows them by a plain name.


@tracked
async def add(ctx: dict[str, Any], a: int, b: int) -> int:
    return a + b


@tracked
async def explode(ctx: dict[str, Any]) -> None:
    raise ValueError("bad row 3")


@tracked
async def flaky(ctx: dict[str, Any]) -> str:
    if ctx["job_try"] == 1:
        raise Retry(defer=0.01)
    return "ok"


@tracked
async def always_retry(ctx: dict[str, Any]) -> None:
    raise Retry()


@tracked
async def typed_progress(ctx: dict[str, Any]) -> None:
    await job_context(ctx).update(progress=0.5, half=True)


@tracked
async def hang(ctx: dict[str, Any]) -> None:
    await ctx["immortus"].update(progress=0.25)
    await asyncio.Event().wait()


@tracked
async def count(ctx: dict[str, Any], n: int) -> int:
    for i in range(n):
        await ctx["immortus"].update(progress=(i + 1) / n, done=i + 1)
    return n


@tracked
async def bad_updates(ctx: dict[str, Any]) -> list[str]:
    errors = []
    attempts: list[dict[str, Any]] = [
        {"progress": 1.5},
        {"progress": float("nan")},
        {"progress": "half"},
        {"progress": True},
        {"blob": object()},
        {"huge": "x" * (64 * 1024)},
    ]
    for kwargs in attempts:
        try:
            await ctx["immortus"].update(**kwargs)
        except ValueError as exc:
            errors.append(str(exc))
    return errors


MEMORY = MemoryStrategy()


@tracked(strategy=MEMORY)
async def in_memory(ctx: dict[str, Any]) -> str:
    return "remembered"


class Callbacks:
    """An Immortus-style strategy: only ``completed`` and the callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def completed(self, job_id: str) -> bool:
        return any(call[0] == "job_finished" for call in self.calls)

    async def job_started(self, job_id: str) -> None:
        self.calls.append(("job_started",))

    async def job_progress(self, job_id: str, progress: float, meta: dict[str, Any]) -> None:
        self.calls.append(("job_progress", progress, meta))

    async def job_finished(self, job_id: str) -> None:
        self.calls.append(("job_finished",))


CALLBACKS = Callbacks()


@tracked(strategy=CALLBACKS)
async def with_callbacks(ctx: dict[str, Any]) -> None:
    await ctx["immortus"].update(progress=0.5, step="half")


async def plain_progress(ctx: dict[str, Any]) -> str:
    await ctx["immortus"].update(progress=0.5, rows=3)
    return "plain"


async def plain_fail(ctx: dict[str, Any]) -> None:
    raise KeyError("missing column")


async def plain_hang(ctx: dict[str, Any]) -> None:
    await asyncio.Event().wait()


async def nightly(ctx: dict[str, Any]) -> str:
    return "done"


def custom_dumps(data: dict[str, Any]) -> bytes:
    """A worker's own serializer, which arq's default (pickle) cannot read."""
    return b"custom:" + pickle.dumps(data)


def custom_loads(raw: bytes) -> dict[str, Any]:
    if not raw.startswith(b"custom:"):
        raise ValueError("not written by custom_dumps")
    data: dict[str, Any] = pickle.loads(raw.removeprefix(b"custom:"))
    return data


# Helpers


async def enqueue(tracker: Tracker, pool: ArqRedis, function: str, *args: Any, **kw: Any) -> Job:
    job = await tracker.enqueue(pool, function, *args, **kw)
    assert job is not None
    return job


# 1. Every ending


async def test_success_is_finished_with_the_result_untouched(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """A job that returns ends finished, attempt 1, and arq still has its result."""
    job = await enqueue(tracker, pool, "add", 2, 3)
    watcher = await Watcher(tracker, job.job_id).subscribed()
    await run_worker(pool, [add])
    assert steps(await watcher.finished()) == [("queued", 0), ("started", 1), ("finished", 1)]
    final = watcher.states[-1]
    assert (final.progress, final.error, final.function) == (1.0, None, "add")
    assert final.started_at is not None and final.finished_at is not None
    assert await job.result(timeout=5) == 5


@tracked(report_result=True)
async def unreportable(ctx: dict[str, Any]) -> set[int]:
    return {1, 2}


async def test_a_result_that_is_not_json_is_left_out_and_arq_keeps_it(
    pool: ArqRedis, tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    """report_result with a result JSON cannot hold: the job ends finished without a
    result, the job side logs why once, and arq's own result is untouched."""
    job = await enqueue(tracker, pool, "unreportable")
    with caplog.at_level(logging.ERROR, logger="immortus_async.jobside"):
        await run_worker(pool, [unreportable])
    state = await tracker.completed(job.job_id, timeout=10)
    assert (state.status, state.result) == (S.FINISHED, None)
    errors = [r.getMessage() for r in caplog.records if "not reported" in r.getMessage()]
    assert len(errors) == 1 and "not JSON-serialisable" in errors[0]
    assert await job.result(timeout=5) == {1, 2}


async def test_exception_is_failed_with_its_text(pool: ArqRedis, tracker: Tracker) -> None:
    """A job that raises ends failed with "Class: message"; arq still re-raises it."""
    job = await enqueue(tracker, pool, "explode")
    await run_worker(pool, [explode])
    state = await tracker.completed(job.job_id, timeout=10)
    assert (state.status, state.error, state.attempt) == (S.FAILED, "ValueError: bad row 3", 1)
    with pytest.raises(ValueError, match="bad row 3"):
        await job.result(timeout=5)


async def test_retry_then_success_shows_both_attempts_in_order(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """Retry on try 1 then success: retrying (attempt 1), started and finished (attempt 2)."""
    job = await enqueue(tracker, pool, "flaky")
    watcher = await Watcher(tracker, job.job_id).subscribed()
    await run_worker(pool, [flaky], poll_delay=0.01)
    assert steps(await watcher.finished()) == [
        ("queued", 0),
        ("started", 1),
        ("retrying", 1),
        ("started", 2),
        ("finished", 2),
    ]
    retrying = next(s for s in watcher.states if s.status is S.RETRYING)
    assert retrying.error == "Retry: run again in 0.01s"
    assert watcher.states[-1].error is None  # a new attempt clears the old error
    assert await job.result(timeout=5) == "ok"


async def test_max_tries_exhausted_is_failed_with_arqs_reason(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """After the last allowed try arq fails the job without calling it: we say why."""
    job = await enqueue(tracker, pool, "always_retry")
    watcher = await Watcher(tracker, job.job_id).subscribed()
    await run_worker(pool, [func(always_retry, max_tries=2)])
    states = await watcher.finished()
    assert ("retrying", 2) in steps(states)
    final = states[-1]
    assert (final.status, final.error) == (S.FAILED, "JobExecutionFailed: max 2 retries exceeded")
    info = await job.result_info()
    assert info is not None and final.attempt == info.job_try == 3
    with pytest.raises(JobExecutionFailed):
        await job.result(timeout=5)


async def test_abort_while_running_is_aborted(pool: ArqRedis, tracker: Tracker) -> None:
    """job.abort() on a running job ends it aborted, and abort() reports success."""
    job = await enqueue(tracker, pool, "hang")
    watcher = await Watcher(tracker, job.job_id).subscribed()
    worker = asyncio.create_task(run_worker(pool, [hang], allow_abort_jobs=True))
    await wait_until(lambda: watcher.has(S.STARTED, progress=0.25), message="the job to run")
    assert await job.abort(timeout=10, poll_delay=0.02) is True
    await worker
    final = (await watcher.finished())[-1]
    assert (final.status, final.error, final.attempt) == (
        S.ABORTED,
        "CancelledError: job aborted",
        1,
    )


async def test_abort_through_a_frozen_queue_redis_raises_redis_unavailable(
    redis_server: RedisServer,
) -> None:
    """The queue's own Redis frozen (SIGSTOP) when abort asks it: RedisUnavailable
    once ``unreachable_timeout`` has passed, instead of a wait for ever."""
    with RedisServer() as queue_server:
        queue = await create_pool(RedisSettings.from_dsn(queue_server.url))
        try:
            async with Tracker(redis_server.url, queue=queue, unreachable_timeout=0.5) as tracker:
                job = await enqueue(tracker, queue, "some_function")
                assert queue_server.pid is not None
                os.kill(queue_server.pid, signal.SIGSTOP)
                try:
                    async with asyncio.timeout(30 * SCALE):
                        with pytest.raises(RedisUnavailable, match="abort"):
                            await tracker.abort(job.job_id)
                finally:
                    os.kill(queue_server.pid, signal.SIGCONT)
                assert (await tracker.status(job.job_id)).status is S.QUEUED
        finally:
            await queue.aclose()


async def test_timeout_is_failed_with_timeout_text(pool: ArqRedis, tracker: Tracker) -> None:
    """A job past its timeout ends failed with "TimeoutError: job timed out"."""
    job = await enqueue(tracker, pool, "hang")
    await run_worker(pool, [func(hang, timeout=0.2 * SCALE)])
    state = await tracker.completed(job.job_id, timeout=10)
    assert (state.status, state.error, state.attempt) == (
        S.FAILED,
        "TimeoutError: job timed out",
        1,
    )
    with pytest.raises(asyncio.TimeoutError):
        await job.result(timeout=5)


# 2. Jobs whose worker died, and jobs arq ends without calling anything


def start_doomed_worker(redis_url: str, in_progress_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.arq_worker", redis_url, str(in_progress_s)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
async def killed_mid_job(
    redis_server: RedisServer, pool: ArqRedis, tracker: Tracker
) -> AsyncIterator[tuple[Job, Watcher, float]]:
    """A crash_once job whose worker process was SIGKILLed mid-job, and its watcher."""
    job = await enqueue(tracker, pool, "crash_once")
    watcher = await Watcher(tracker, job.job_id).subscribed()
    process = start_doomed_worker(redis_server.url, in_progress_s=1.5 * SCALE)
    try:
        await wait_until(
            lambda: watcher.has(S.STARTED, progress=0.1), timeout=30, message="the first try"
        )
    finally:
        process.kill()
        process.wait()
    yield job, watcher, time.monotonic()


async def test_killed_worker_shows_stalled_then_next_worker_finishes(
    pool: ArqRedis, killed_mid_job: tuple[Job, Watcher, float]
) -> None:
    """SIGKILL mid-job: stalled within the threshold, then another worker's attempt 2."""
    job, watcher, killed_at = killed_mid_job
    await wait_until(lambda: watcher.has(S.STARTED, stalled=True), message="stalled")
    assert time.monotonic() - killed_at < STALLED_AFTER + 0.5 * SCALE
    stalled = next(s for s in watcher.states if s.stalled)
    assert stalled.attempt == 1
    await run_worker(pool, [crash_once], poll_delay=0.05)
    final = (await watcher.finished())[-1]
    assert (final.status, final.attempt, final.stalled) == (S.FINISHED, 2, False)
    assert await job.result(timeout=5) == "second time lucky"


async def test_worker_deaths_past_max_tries_end_failed(
    pool: ArqRedis, killed_mid_job: tuple[Job, Watcher, float]
) -> None:
    """A job whose worker died on its last allowed try ends failed with arq's reason."""
    _, watcher, _ = killed_mid_job
    await run_worker(pool, [func(crash_once, max_tries=1)], poll_delay=0.05)
    final = (await watcher.finished())[-1]
    assert (final.status, final.error) == (S.FAILED, "JobExecutionFailed: max 1 retries exceeded")


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The test's Redis; with keyspace notifications when parametrized with True."""
    keyspace_events = getattr(request, "param", False)
    with RedisServer(args=("--notify-keyspace-events", "KEA") if keyspace_events else ()) as server:
        yield server


Arranged = tuple[Job, "asyncio.Task[bool] | None"]


async def arrange_abort_before_start(tracker: Tracker, pool: ArqRedis) -> Arranged:
    job = await enqueue(tracker, pool, "add", 1, 1, _defer_by=60)
    abort = asyncio.create_task(job.abort(timeout=10, poll_delay=0.02))
    await wait_until(lambda: pool.zscore(abort_jobs_ss, job.job_id), message="the abort request")
    return job, abort


async def arrange_expired(tracker: Tracker, pool: ArqRedis) -> Arranged:
    job = await enqueue(tracker, pool, "add", 1, 1, _expires=0.05)
    await wait_until(
        lambda: _gone(pool, job_key_prefix + job.job_id), message="the job key to expire"
    )
    return job, None


async def _gone(pool: ArqRedis, key: str) -> bool:
    return not await pool.exists(key)


async def arrange_missing_function(tracker: Tracker, pool: ArqRedis) -> Arranged:
    return await enqueue(tracker, pool, "no_such_function"), None


@pytest.mark.parametrize(
    ("arrange", "status", "error"),
    [
        (arrange_abort_before_start, S.ABORTED, "CancelledError: job aborted"),
        (arrange_expired, S.FAILED, "JobExecutionFailed: job expired"),
        (
            arrange_missing_function,
            S.FAILED,
            "JobExecutionFailed: function 'no_such_function' not found",
        ),
    ],
    ids=["aborted-before-start", "expired", "function-not-found"],
)
@pytest.mark.parametrize("redis_server", [False, True], ids=["polling", "pushed"], indirect=True)
async def test_jobs_arq_ends_without_calling_anything_reach_the_waiter(
    pool: ArqRedis, tracker: Tracker, arrange: Any, status: JobStatus, error: str
) -> None:
    """Aborted before start, expired, function not found: the waiter gets arq's reason."""
    job, abort = await arrange(tracker, pool)
    waiter = asyncio.create_task(tracker.completed(job.job_id, timeout=10 * SCALE))
    await run_worker(pool, [add], allow_abort_jobs=True)
    state = await waiter
    assert (state.status, state.error) == (status, error)
    assert state.completed
    assert abort is None or await abort is True


# 3. Progress


async def test_hundred_updates_arrive_in_order(pool: ArqRedis, tracker: Tracker) -> None:
    """100 progress updates from one job reach a watcher in order, none lost."""
    job = await enqueue(tracker, pool, "count", 100)
    strategy = tracker.strategy()
    assert isinstance(strategy, RedisPubSubStrategy)
    seen: list[JobState] = []

    async def watch() -> None:
        async for state in strategy.watch(job.job_id, buffer_size=256):
            seen.append(state)

    watching = asyncio.create_task(watch())
    await wait_until(lambda: seen, message="the watcher's first state")
    await run_worker(pool, [count])
    await asyncio.wait_for(watching, 10 * SCALE)
    running = [s for s in seen if s.status is S.STARTED and s.progress is not None]
    assert [s.meta["done"] for s in running] == list(range(1, 101))
    assert [s.seq for s in seen] == sorted({s.seq for s in seen})
    assert seen[-1].status is S.FINISHED and seen[-1].meta == {"done": 100}


async def test_invalid_progress_or_meta_raise_value_error_in_the_job(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """Out-of-range or non-numeric progress, unserialisable or oversized meta: ValueError."""
    job = await enqueue(tracker, pool, "bad_updates")
    await run_worker(pool, [bad_updates])
    errors = await job.result(timeout=5)
    assert len(errors) == 6
    for message in errors[:4]:
        assert "progress must be a number in [0, 1]" in message
    assert "meta must be JSON-serialisable" in errors[4] and "object" in errors[4]
    assert "over the 65536-byte limit" in errors[5]
    state = await tracker.completed(job.job_id, timeout=5)
    assert state.status is S.FINISHED and state.meta == {}


async def test_job_context_outside_a_worker_records_nothing() -> None:
    """Called directly (a unit test of the job), a tracked function runs and validates."""
    ctx: dict[str, Any] = {}
    assert await count(ctx, 3) == 3
    assert isinstance(ctx["immortus"], JobContext)
    with pytest.raises(ValueError, match="progress"):
        await JobContext("j").update(progress=2)


async def test_job_context_is_the_job_s_ctx_immortus_or_one_that_records_nothing(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """job_context(ctx) is what @tracked put at ctx["immortus"] (its updates reach the
    waiter); a ctx without one gets a context of its job id that records nothing."""
    job = await pool.enqueue_job("typed_progress")
    assert job is not None
    await run_worker(pool, [typed_progress])
    state = await tracker.completed(job.job_id, timeout=10)
    assert (state.status, state.meta) == (S.FINISHED, {"half": True})
    untracked = job_context({"job_id": "j1"})
    assert (type(untracked), untracked.job_id) == (JobContext, "j1")
    await untracked.update(progress=0.5)  # records nothing, raises nothing


# 4. Tracking Redis away in the middle of a job


@pytest.mark.parametrize(
    "persistence",
    [("--appendonly", "yes", "--appendfsync", "always"), ()],
    ids=["restarts-with-its-data", "restarts-empty"],
)
async def test_tracking_redis_outage_leaves_the_job_alone(
    pool: ArqRedis, caplog: pytest.LogCaptureFixture, persistence: tuple[str, ...]
) -> None:
    """The tracking Redis stops 2 s mid-job: same result, final state once it is back."""
    caplog.set_level(logging.WARNING, logger="immortus_async.jobside")
    with RedisServer(args=persistence) as tracking:
        strategy = RedisPubSubStrategy(tracking.url)

        @tracked(strategy=strategy)
        async def survive(ctx: dict[str, Any]) -> str:
            await ctx["immortus"].update(progress=0.5, step="before")
            ctx["halfway"].set()
            await ctx["resume"].wait()
            await ctx["immortus"].update(progress=0.9, step="during")
            return "result-42"

        gates = {"halfway": asyncio.Event(), "resume": asyncio.Event()}
        async with Tracker(tracking.url, tracking_strategy="redis_pub_sub") as watching:
            job = await enqueue(watching, pool, survive.__qualname__)
            waiter = asyncio.create_task(watching.completed(job.job_id, timeout=30 * SCALE))
            worker = asyncio.create_task(run_worker(pool, [survive], ctx=gates))
            await gates["halfway"].wait()
            tracking.stop(kill=True)
            stopped_at = time.monotonic()
            gates["resume"].set()
            await worker
            assert await job.result(timeout=5) == "result-42"
            assert not tracking.running and not waiter.done()
            warnings = [r for r in caplog.records if r.name == "immortus_async.jobside"]
            assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
            # The outage itself: the test's Redis stays down for 2 s.
            await asyncio.sleep(max(0.0, 2.0 * SCALE - (time.monotonic() - stopped_at)))
            tracking.start()
            final = await waiter
        await strategy.aclose()
    assert (final.status, final.progress, final.meta) == (S.FINISHED, 1.0, {"step": "during"})


# 5. is in test_arq_strategy.py. 6. Worker-wide hooks


async def test_worker_hooks_track_undecorated_jobs_and_keep_user_hooks(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """track_worker tracks plain functions and still runs the hooks already set."""
    calls: list[tuple[str, str, bool]] = []

    async def user_start(ctx: dict[str, Any]) -> None:
        calls.append(("start", ctx["job_id"], isinstance(ctx.get("immortus"), JobContext)))

    async def user_after(ctx: dict[str, Any]) -> None:
        calls.append(("after", ctx["job_id"], True))

    settings = track_worker(
        {
            "functions": [plain_progress, plain_fail],
            "on_job_start": user_start,
            "after_job_end": user_after,
        }
    )
    ok = await enqueue(tracker, pool, "plain_progress")
    bad = await enqueue(tracker, pool, "plain_fail")
    await run_worker(pool, **settings)
    done = await tracker.completed(ok.job_id, timeout=5)
    assert (done.status, done.attempt, done.meta, done.function) == (
        S.FINISHED,
        1,
        {"rows": 3},
        "plain_progress",
    )
    failed = await tracker.completed(bad.job_id, timeout=5)
    assert (failed.status, failed.error) == (S.FAILED, "KeyError: 'missing column'")
    assert sorted(calls) == sorted(
        [(kind, job.job_id, True) for kind in ("start", "after") for job in (ok, bad)]
    )


async def test_worker_hooks_on_a_settings_class_leave_tracked_jobs_to_themselves(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """On a WorkerSettings class; a @tracked job under the hooks is recorded once."""
    started: list[str] = []

    async def user_start(ctx: dict[str, Any]) -> None:
        started.append(ctx["job_id"])

    @track_worker(heartbeat_interval=1)
    class WorkerSettings:
        functions = (explode,)
        on_job_start = user_start

    job = await enqueue(tracker, pool, "explode")
    await run_worker(pool, **get_kwargs(WorkerSettings))
    assert started == [job.job_id]
    state = await tracker.completed(job.job_id, timeout=5)
    # queued, started, failed: the hooks and the wrapper did not both write.
    assert (state.status, state.error, state.seq) == (S.FAILED, "ValueError: bad row 3", 3)


async def test_worker_hooks_track_a_function_given_another_way_from_arqs_record(
    redis: Redis, pool: ArqRedis
) -> None:
    """A function track_worker did not wrap still ends, from arq's result record."""
    settings = track_worker({"functions": [plain_progress]})
    # Our records only: the end is what the worker's hooks wrote.
    async with Tracker(redis, tracking_strategy=RedisPubSubStrategy(redis)) as tracker:
        job = await enqueue(tracker, pool, "plain_fail")
        await run_worker(pool, **{**settings, "functions": [plain_fail]})
        state = await tracker.completed(job.job_id, timeout=5 * SCALE)
    assert (state.status, state.error, state.function) == (
        S.FAILED,
        "KeyError: 'missing column'",
        "plain_fail",
    )


async def test_cron_job_under_track_worker_ends_finished(pool: ArqRedis, tracker: Tracker) -> None:
    """A cron job (arq keeps no result, and its in-progress key 60 s) reads finished."""
    settings = track_worker(
        {"cron_jobs": [cron(nightly, hour=3, minute=0, run_at_startup=True, job_id="nightly-1")]}
    )
    await run_worker(pool, [], **settings)
    state = await tracker.completed("nightly-1", timeout=5 * SCALE)
    assert (state.status, state.function, state.attempt) == (S.FINISHED, "cron:nightly", 1)


async def test_worker_serializer_reads_arqs_records(
    redis_server: RedisServer, redis: Redis, pool: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A serializer given to the Worker and not to its pool reads arq's records right."""
    caplog.set_level(logging.WARNING)
    settings = RedisSettings.from_dsn(redis_server.url)
    # The enqueuing pool has the serializer, the worker's pool has not, as in arq's
    # own test_custom_serializers. The waiter reads our records only: what it gets
    # is what the job side wrote.
    custom = await create_pool(settings, job_serializer=custom_dumps, job_deserializer=custom_loads)
    ours = RedisPubSubStrategy(redis)
    async with custom, Tracker(redis, tracking_strategy=ours) as tracker:
        ok = await enqueue(tracker, custom, "plain_progress")
        late = await enqueue(tracker, custom, "plain_hang")
        functions = [plain_progress, func(plain_hang, timeout=0.2 * SCALE)]
        worker = track_worker(
            {
                "functions": functions,
                "job_serializer": custom_dumps,
                "job_deserializer": custom_loads,
            }
        )
        await run_worker(pool, **worker)
        done = await tracker.completed(ok.job_id, timeout=5 * SCALE)
        # After a cancellation the outcome comes from arq's result record.
        timed_out = await tracker.completed(late.job_id, timeout=5 * SCALE)
    assert (done.status, done.meta) == (S.FINISHED, {"rows": 3})
    assert (timed_out.status, timed_out.error) == (S.FAILED, "TimeoutError: job timed out")
    assert [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()] == []


# The wrapper itself, strategies, and Tracker.enqueue


def test_wrapper_keeps_the_name_arq_registers() -> None:
    """@tracked keeps __qualname__ and stays a coroutine function, also under func()."""
    assert add.__qualname__ == "add" and inspect.iscoroutinefunction(add)
    assert func(add).name == "add"
    assert func(add, name="sum").name == "sum"
    with pytest.raises(TypeError, match="async"):
        tracked(lambda ctx: None)  # type: ignore[arg-type, return-value]


async def test_renamed_with_func_still_tracked(pool: ArqRedis, tracker: Tracker) -> None:
    """A tracked function registered as func(f, name=...) is tracked under that name."""
    job = await enqueue(tracker, pool, "sum", 4, 5)
    await run_worker(pool, [func(add, name="sum")])
    state = await tracker.completed(job.job_id, timeout=5)
    assert state.status is S.FINISHED
    assert await job.result(timeout=5) == 9


async def test_inline_strategy_is_found_by_a_waiter_that_names_the_function(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """@tracked(strategy=...) is what Tracker uses given the function or its name."""
    job = await enqueue(tracker, pool, "in_memory")
    await run_worker(pool, [in_memory])
    for function in (in_memory, "in_memory"):
        state = await tracker.status(job.job_id, function=function)
        assert (state.status, state.function) == (S.FINISHED, "in_memory")


async def test_strategy_with_only_callbacks_gets_them(pool: ArqRedis, tracker: Tracker) -> None:
    """A strategy without apply() is told through job_started/job_progress/job_finished."""
    CALLBACKS.calls.clear()
    await enqueue(tracker, pool, "with_callbacks")
    await run_worker(pool, [with_callbacks])
    assert CALLBACKS.calls == [
        ("job_started",),
        ("job_progress", 0.5, {"step": "half"}),
        ("job_finished",),
    ]


async def test_enqueue_never_moves_a_job_back_when_the_worker_is_faster(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """If the job has finished before enqueue writes queued, it stays finished."""

    class RunsFirst:
        """An arq pool whose enqueue_job lets a worker finish the job before returning."""

        async def enqueue_job(self, *args: Any, **kwargs: Any) -> Job | None:
            job = await pool.enqueue_job(*args, **kwargs)
            await run_worker(pool, [add])
            return job

    job = await tracker.enqueue(RunsFirst(), "add", 1, 2)
    assert job is not None
    state = await tracker.status(job.job_id)
    assert (state.status, state.seq) == (S.FINISHED, 2)


async def test_enqueue_passes_arq_options_and_ignores_duplicates(
    pool: ArqRedis, tracker: Tracker
) -> None:
    """_job_id, _defer_by, _queue_name reach arq; a duplicate id returns None, writes nothing."""
    before = time.time() * 1000
    job = await tracker.enqueue(pool, "add", 1, 2, _job_id="fixed", _defer_by=60, _queue_name="q2")
    assert job is not None and job.job_id == "fixed"
    score = await pool.zscore("q2", "fixed")
    assert score is not None and score >= before + 59_000
    first = await tracker.status("fixed")
    assert (first.status, first.seq, first.function) == (S.QUEUED, 1, "add")
    assert await tracker.enqueue(pool, "add", 1, 2, _job_id="fixed") is None
    assert (await tracker.status("fixed")).seq == 1


async def test_enqueue_returns_the_job_when_the_tracking_redis_is_away(
    pool: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """arq has the job: a tracking Redis that is down is logged, not raised."""
    with RedisServer() as tracking:
        async with Tracker(tracking.url, tracking_strategy="redis_pub_sub") as tracker:
            tracking.stop(kill=True)
            job = await tracker.enqueue(pool, "add", 1, 2)
    assert job is not None and await pool.exists(job_key_prefix + job.job_id)
    assert any("queued state was not written" in r.getMessage() for r in caplog.records)
