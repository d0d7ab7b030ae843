"""The taskiq adapter beyond the contract suite: real taskiq workers on the test's Redis.

The middleware's ends (retries exhausted, requeue), tasks run by a worker without
it (read from taskiq's result backend and progress records), the enqueue helper,
and :class:`TaskiqStrategy` on records that taskiq-redis's own backend writes.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from immortus_async.adapters import installed

from ..conftest import NOT_INSTALLED

if not installed("taskiq"):
    pytest.skip(f"taskiq: {NOT_INSTALLED}", allow_module_level=True)

from redis.asyncio import Redis
from taskiq import AsyncTaskiqTask, Context, InMemoryBroker, TaskiqMessage, TaskiqResult
from taskiq.depends.progress_tracker import TaskProgress, TaskState
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from immortus_async import JobState, JobStatus, RedisServer, Tracker
from immortus_async.adapters.taskiq import TaskiqStrategy, TrackingMiddleware, tracking
from immortus_async.adapters.taskiq.middleware import attempt_of

from ..utils import SCALE, Spawned
from .drivers import TaskiqDriver, kill_tree

S = JobStatus
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "taskiq_basic"


@pytest.fixture
async def untracked(redis_server: RedisServer) -> AsyncIterator[TaskiqDriver]:
    """Workers of a broker without our middleware: they never heard of us."""
    driver = TaskiqDriver(redis_server.url, tracked=False)
    try:
        yield driver
    finally:
        await driver.aclose()


@pytest.fixture
async def tracked(redis_server: RedisServer) -> AsyncIterator[TaskiqDriver]:
    """Workers of a broker with :class:`TrackingMiddleware`."""
    driver = TaskiqDriver(redis_server.url)
    try:
        yield driver
    finally:
        await driver.aclose()


async def states_until(tracker: Tracker, job_id: str) -> list[JobState]:
    """Every state a watcher of ``job_id`` sees up to its end."""
    async with asyncio.timeout(30 * SCALE):
        return [state async for state in tracker.watch(job_id)]


def message(task_id: str = "t1", **labels: object) -> TaskiqMessage:
    """A taskiq message as a worker receives it."""
    return TaskiqMessage(task_id=task_id, task_name="finish", labels=labels, args=[], kwargs={})


# The middleware in a worker


async def test_retries_exhausted_end_failed_on_the_last_attempt(tracked: TaskiqDriver) -> None:
    """A task that fails on every run reads retrying after its first attempt, then
    failed with its error text on the last one taskiq's retry middleware allows."""
    async with tracked.tracker() as tracker:
        job_id = await tracked.enqueue(tracker, "doomed")
        watching = asyncio.create_task(states_until(tracker, job_id))
        await tracked.start_worker()
        seen = await watching
    ends = [(state.status, state.attempt, state.error) for state in seen if state.error]
    assert ends == [
        (S.RETRYING, 1, "RuntimeError: always fails"),
        (S.FAILED, 2, "RuntimeError: always fails"),
    ]


async def test_a_requeued_task_reads_retrying_then_runs_as_the_next_attempt(
    tracked: TaskiqDriver,
) -> None:
    """``Context.requeue`` (sent straight to the broker, seen by no middleware) ends the
    attempt retrying, not finished: its next run is attempt 2 and finishes."""
    async with tracked.tracker() as tracker:
        job_id = await tracked.enqueue(tracker, "requeue_once")
        watching = asyncio.create_task(states_until(tracker, job_id))
        await tracked.start_worker()
        seen = await watching
    assert (S.RETRYING, 1, "requeued") in [(s.status, s.attempt, s.error) for s in seen]
    assert (seen[-1].status, seen[-1].attempt) == (S.FINISHED, 2)


async def test_a_task_past_its_timeout_fails_saying_so(tracked: TaskiqDriver) -> None:
    """taskiq's ``timeout`` label ends a task with a bare TimeoutError: the error text
    says it was the timeout."""
    async with tracked.tracker() as tracker:
        job_id = await tracked.enqueue(tracker, "too_slow")
        await tracked.start_worker()
        state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert (state.status, state.error) == (
        S.FAILED,
        "TimeoutError: the task ran past its timeout (0.2s)",
    )


async def test_a_list_worker_stops_gracefully_with_the_middleware(
    redis_server: RedisServer,
) -> None:
    """SIGTERM ends a worker of taskiq's list broker, its middleware's shutdown
    included, after a tracked task ran."""
    driver = TaskiqDriver(redis_server.url, broker="list")
    try:
        async with driver.tracker() as tracker:
            job_id = await driver.enqueue(tracker, "finish")
            await driver.start_worker()
            assert (await tracker.completed(job_id, timeout=30 * SCALE)).status is S.FINISHED
        assert await driver.stop_worker() == 0
    finally:
        await driver.aclose()


async def test_a_frozen_tracking_redis_holds_no_task(redis_server: RedisServer) -> None:
    """With the tracking Redis frozen (SIGSTOP: it answers nothing), tasks still run and
    taskiq stores their results: every tracking read and write has its deadline."""
    with RedisServer() as tracking:
        driver = TaskiqDriver(redis_server.url, broker="list", tracking_url=tracking.url)
        assert tracking.pid is not None
        os.kill(tracking.pid, signal.SIGSTOP)
        try:
            job_ids = [await driver.enqueue_untracked(kind) for kind in ("finish", "fail")]
            await driver.start_worker()
            backend = (await driver.client()).result_backend
            results = [
                await AsyncTaskiqTask(job_id, backend).wait_result(timeout=30 * SCALE)
                for job_id in job_ids
            ]
        finally:
            os.kill(tracking.pid, signal.SIGCONT)
            await driver.aclose()
    assert results[0].return_value == "done"
    assert isinstance(results[1].error, ValueError)


# A worker that never heard of us


async def test_an_untracked_workers_tasks_are_read_from_taskiq_results(
    untracked: TaskiqDriver,
) -> None:
    """Without the middleware, a waiter still gets finished, and failed with the error
    text, from taskiq's result backend."""
    async with untracked.tracker() as tracker:
        finished = await untracked.enqueue(tracker, "finish")
        failed = await untracked.enqueue(tracker, "fail")
        await untracked.start_worker()
        assert (await tracker.completed(finished, timeout=30 * SCALE)).status is S.FINISHED
        state = await tracker.completed(failed, timeout=30 * SCALE)
        # taskiq's writes reached the waiters as invalidations, not by polling.
        assert tracker.stats() == {"watching": "client-tracking"}
    assert (state.status, state.error) == (S.FAILED, "ValueError: bad row")


async def test_taskiqs_own_progress_records_are_read(untracked: TaskiqDriver, redis: Redis) -> None:
    """A task's ``ProgressTracker.set_progress`` reads as started with its progress and
    meta; its meta outlives the run."""
    strategy = TaskiqStrategy(redis)
    async with untracked.tracker() as tracker:
        job_id = await untracked.enqueue(tracker, "own_progress")
        await untracked.start_worker()
        async with asyncio.timeout(30 * SCALE):
            async for state in strategy.watch(job_id):
                if state.status is S.STARTED:
                    break
        assert (state.progress, state.meta) == (0.5, {"rows": 5})
        await redis.rpush(f"gate:{job_id}", 1)
        state = await tracker.completed(job_id, timeout=30 * SCALE)
    assert (state.status, state.meta) == (S.FINISHED, {"rows": 5})


# The enqueue helper


async def test_enqueue_records_queued_and_returns_taskiqs_task(tracked: TaskiqDriver) -> None:
    """``tracker.enqueue(broker, task)`` sends the task and records queued with its name;
    the result is taskiq's own task, whose result the worker stores as usual."""
    async with tracked.tracker() as tracker:
        from . import taskiq_worker

        task = await tracker.enqueue(await tracked.client(), taskiq_worker.finish)
        state = await tracker.status(task.task_id)
        assert (state.status, state.attempt, state.function) == (S.QUEUED, 0, "finish")
        await tracked.start_worker()
        await tracker.completed(task.task_id, timeout=30 * SCALE)
        result = await task.wait_result(timeout=30 * SCALE)
    assert result.return_value == "done"


async def test_a_broker_with_the_middleware_records_its_own_sends_queued(
    redis_server: RedisServer, tracked: TaskiqDriver
) -> None:
    """A web process whose broker carries the middleware records every ``kiq()`` as
    queued, with no tracker.enqueue; its worker takes it from there."""
    from . import taskiq_worker

    web = taskiq_worker.make_broker(redis_server.url, "stream", tracked=True)
    await web.startup()
    try:
        task = await taskiq_worker.finish.kicker().with_broker(web).kiq()
        async with tracked.tracker() as tracker:
            state = await tracker.status(task.task_id)
            assert (state.status, state.function) == (S.QUEUED, "finish")
            await tracked.start_worker()
            state = await tracker.completed(task.task_id, timeout=30 * SCALE)
        assert (state.status, state.attempt) == (S.FINISHED, 1)
    finally:
        await web.shutdown()


async def test_enqueue_takes_a_task_its_name_or_its_kicker_only(tracked: TaskiqDriver) -> None:
    """Anything else than a task, its name or its kicker is a TypeError, nothing sent."""
    async with tracked.tracker() as tracker:
        with pytest.raises(TypeError, match="taskiq task, its kicker or its name"):
            await tracker.enqueue(await tracked.client(), 42)


# The example


async def test_the_example_enqueues_follows_and_prints_the_final_state(
    redis_server: RedisServer,
) -> None:
    """examples/taskiq_basic, run as its README says: the worker runs the task, the
    script prints its progress, its final state and taskiq's result."""
    folder = EXAMPLE
    env = {**os.environ, "REDIS_URL": redis_server.url}
    worker = await Spawned.start(
        sys.executable,
        "-m",
        "taskiq",
        "worker",
        "tasks:broker",
        "--workers",
        "1",
        cwd=folder,
        env=env,
    )
    try:
        script = await Spawned.start(sys.executable, "enqueue.py", cwd=folder, env=env)
        async with script:
            async with asyncio.timeout(30 * SCALE):
                await script.process.wait()
            # It has ended: stop() sends nothing, it reads the rest of its output.
            assert await script.stop() == 0, script.output
    finally:
        await kill_tree(worker)
    first, *progress, final_json, result = script.lines
    assert first.startswith("enqueued ")
    assert progress and all(line.startswith("started ") for line in progress)
    final = JobState.from_json(final_json)
    assert (final.status, final.progress, final.meta) == (S.FINISHED, 1.0, {"rows_done": 20})
    assert result == "result: 20"


# The middleware and the dependency, without a worker


async def test_the_middleware_goes_last_so_it_sees_the_error_before_a_retry() -> None:
    """In a worker, startup moves the middleware after the others (taskiq calls
    ``on_error`` in reverse order), leaving theirs as they were."""
    from taskiq import SimpleRetryMiddleware

    first, second, ours = SimpleRetryMiddleware(), SimpleRetryMiddleware(), TrackingMiddleware()
    broker = InMemoryBroker().with_middlewares(first, ours, second)
    broker.is_worker_process = True
    await ours.startup()
    try:
        assert broker.middlewares == [first, second, ours]
    finally:
        await ours.shutdown()


def test_tracking_outside_a_tracked_worker_gives_a_context_that_records_nothing() -> None:
    """On a broker without the middleware, ``tracking`` still gives the task a context,
    of its id and attempt, so the task runs the same."""
    context = tracking(Context(message("t9", _retries=2), InMemoryBroker()))
    assert (context.job_id, context.attempt, context.function) == ("t9", 3, "finish")


def test_attempt_counts_taskiqs_retries_and_requeues() -> None:
    """One run, plus each retry (``_retries``) and requeue (``X-Taskiq-requeue``)."""
    assert attempt_of(message()) == 1
    assert attempt_of(message(_retries=2, **{"X-Taskiq-requeue": "1"})) == 4
    assert attempt_of(message(_retries="junk")) == 1


# TaskiqStrategy on what taskiq-redis writes


class _RowError(Exception):
    def __init__(self, row: int, reason: str) -> None:
        super().__init__(row, reason)


async def test_the_strategy_reads_what_the_result_backend_writes(
    redis_server: RedisServer,
) -> None:
    """Results and progress written by ``RedisAsyncResultBackend`` (a ``prefix_str``
    too) read finished, failed with the error text, started with progress; an id
    with no record reads unknown."""
    backend: RedisAsyncResultBackend[object] = RedisAsyncResultBackend(
        redis_server.url, prefix_str="app"
    )
    strategy = TaskiqStrategy.from_backend(backend)
    try:
        ok = TaskiqResult(is_err=False, return_value=3, execution_time=0.1, labels={})
        await backend.set_result("ok", ok)
        bad = TaskiqResult(
            is_err=True,
            return_value=None,
            execution_time=0.1,
            labels={"_retries": 1},
            error=_RowError(3, "empty"),
        )
        await backend.set_result("bad", bad)
        await backend.set_progress("run", TaskProgress(state=TaskState.STARTED, meta=0.25))
        assert (await strategy.status("ok")).status is S.FINISHED
        failed = await strategy.status("bad")
        assert (failed.status, failed.attempt, failed.error) == (
            S.FAILED,
            2,
            "_RowError: (3, 'empty')",
        )
        running = await strategy.status("run")
        assert (running.status, running.progress) == (S.STARTED, 0.25)
        assert (await strategy.status("none")).status is S.UNKNOWN
    finally:
        await strategy.aclose()
        await backend.shutdown()


async def test_the_strategy_loads_no_class_from_a_record(redis: Redis) -> None:
    """A result record that names a class (not what taskiq writes) is never loaded:
    it reads failed, as unreadable."""
    await redis.set("evil", pickle.dumps(ListQueueBroker))
    state = await TaskiqStrategy(redis).status("evil")
    assert (state.status, state.error) == (
        S.FAILED,
        "taskiq's result record of the task could not be read",
    )
