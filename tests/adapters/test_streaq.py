"""The streaQ adapter with real streaQ workers on the test's own Redis."""

from __future__ import annotations

import pytest

from ..conftest import NOT_INSTALLED

# The adapter's tests need streaQ: skipped in the environment that has arq instead.
pytest.importorskip("streaq", reason=NOT_INSTALLED)

import asyncio
import gc
import os
import pickle
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis
from streaq import Worker
from streaq.task import Task

from immortus_async import (
    JobNotFound,
    JobState,
    JobStatus,
    MemoryStrategy,
    RedisPubSubStrategy,
    RedisServer,
    Tracker,
    adapters,
    configure,
)
from immortus_async.adapters import QueueAdapter
from immortus_async.adapters.streaq import StreaqStrategy, adapter, job_context, track_worker
from immortus_async.registry import resolve_strategy

from ..utils import SCALE, Watcher, enqueue_and_work, free_port, steps, wait_until
from .streaq_worker import gate, make_worker

S = JobStatus
ROOT = Path(__file__).resolve().parent.parent.parent

# streaQ 7.2's Worker.run_async never closes the receiving end of its prefetch
# stream (only its clones), so a stopped worker warns when it is collected.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <function MemoryObjectReceiveStream.__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)


@asynccontextmanager
async def running(worker: Worker[Any]) -> AsyncIterator[Worker[Any]]:
    """Run ``worker`` in this event loop for the duration of the block.

    Leaving the block cancels the worker at once: a test first waits for streaQ's
    own result of what it ran (:func:`streaq_done`), which streaQ writes after our
    middleware wrote its end, so that no write of streaQ's is cut short.
    """
    async with anyio.create_task_group() as group:
        await group.start(worker.run_async)
        yield worker
        group.cancel_scope.cancel()
    # The stream streaQ leaves unclosed (see pytestmark) is collected here, where its
    # warning is expected, rather than in whatever test runs next.
    gc.collect()


@asynccontextmanager
async def producer(url: str) -> AsyncIterator[Worker[Any]]:
    """A streaQ client that only enqueues (a web process): the same tasks, no worker loop."""
    worker = make_worker(url, tracked=False)
    async with worker:
        yield worker


async def streaq_done(client: Worker[Any], task_id: str) -> None:
    """Wait until streaQ has written its result of ``task_id``."""
    await client.result_by_id(task_id, timeout=20 * SCALE)


async def open_gate(redis: Redis, name: str) -> None:
    await redis.rpush(gate(name), "go")


@pytest.fixture
async def strategy(redis_server: RedisServer) -> AsyncIterator[StreaqStrategy]:
    reader = StreaqStrategy(redis_server.url, poll_interval=0.05)
    yield reader
    await reader.aclose()


async def test_unknown_task_reads_unknown_not_completed(strategy: StreaqStrategy) -> None:
    """A task id streaQ has no record of reads unknown, never completed."""
    state = await strategy.status("nope")
    assert state == JobState(job_id="nope")
    assert not await strategy.completed("nope")


async def test_enqueued_task_reads_queued(
    redis_server: RedisServer, strategy: StreaqStrategy
) -> None:
    """A task in streaQ's queue reads queued, with its function and enqueue time."""
    async with producer(redis_server.url) as client:
        task = await client.registry["finish"].enqueue()
    state = await strategy.status(task.id)
    assert (state.status, state.attempt, state.function) == (S.QUEUED, 0, "finish")
    assert state.enqueued_at is not None


async def test_finished_failed_and_aborted_read_from_results(
    redis_server: RedisServer, strategy: StreaqStrategy, redis: Redis
) -> None:
    """streaQ's result records read finished, failed with the error text, and aborted."""
    worker = make_worker(redis_server.url, tracked=False)
    async with running(worker):
        done = await worker.registry["finish"].enqueue()
        failed = await worker.registry["fail"].enqueue()
        hung = await worker.registry["gated"].enqueue("never")
        for task in (done, failed):
            await task.result(timeout=10)
        await wait_until(lambda: strategy.status(hung.id), message="the task to start")
        await wait_until(
            lambda: _status_is(strategy, hung.id, S.STARTED), message="the task to run"
        )
        assert await hung.abort(timeout=10)
    finished = await strategy.status(done.id)
    assert (finished.status, finished.progress, finished.attempt) == (S.FINISHED, 1.0, 1)
    assert finished.started_at is not None and finished.finished_at is not None
    assert (await strategy.status(failed.id)).error == "ValueError: bad row"
    aborted = await strategy.status(hung.id)
    assert aborted.status is S.ABORTED
    assert aborted.error == "StreaqCancelled: Task aborted by user!"


async def _status_is(strategy: StreaqStrategy, task_id: str, status: JobStatus) -> bool:
    return (await strategy.status(task_id)).status is status


async def test_task_ended_without_running_reads_failed(
    redis_server: RedisServer, strategy: StreaqStrategy
) -> None:
    """A task streaQ fails without running it (retries exhausted) reads failed with its text."""
    worker = make_worker(redis_server.url, tracked=False)
    async with running(worker):
        task = await worker.registry["retry_always"].enqueue()
        result = await task.result(timeout=10)
    assert result.tries == 3
    state = await strategy.status(task.id)
    assert (state.status, state.attempt) == (S.FAILED, 3)
    assert state.error == "StreaqError: Max retry attempts reached for task!"


async def test_retry_waiting_in_delayed_queue_reads_retrying(
    redis_server: RedisServer, strategy: StreaqStrategy
) -> None:
    """A task that asked for a retry and waits for it reads retrying at its attempt."""
    worker = make_worker(redis_server.url, tracked=False)
    async with running(worker):
        task = await worker.registry["retry_later"].enqueue()
        state = await wait_until(
            lambda: _status_is(strategy, task.id, S.RETRYING), message="a retrying task"
        )
    state = await strategy.status(task.id)
    assert (state.status, state.attempt, state.function) == (S.RETRYING, 1, "retry_later")


async def test_watch_pushes_the_end_without_polling(
    redis_server: RedisServer, redis: Redis
) -> None:
    """A watcher gets the end from streaQ's own channel, not from a later read."""
    reader = StreaqStrategy(redis_server.url, poll_interval=3600)
    worker = make_worker(redis_server.url, tracked=False)
    seen: list[JobState] = []
    async with running(worker):
        task = await worker.registry["gated"].enqueue("push")
        await wait_until(lambda: _status_is(reader, task.id, S.STARTED), message="the start")

        async def watch() -> None:
            async for state in reader.watch(task.id):
                seen.append(state)

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await wait_until(lambda: seen, message="the snapshot")
            await open_gate(redis, "push")
            with anyio.fail_after(10 * SCALE):
                await wait_until(lambda: seen[-1].completed, message="the end")
    assert [s.status for s in seen] == [S.STARTED, S.FINISHED]
    await reader.aclose()


async def test_task_gone_without_result_ends_the_watch_failed(
    redis_server: RedisServer, strategy: StreaqStrategy, redis: Redis
) -> None:
    """A watched task that leaves streaQ without a result (ttl=0) ends the watch, failed."""
    worker = make_worker(redis_server.url, tracked=False)
    seen: list[JobState] = []
    async with running(worker):
        task = await worker.registry["no_result"].enqueue("gone")
        await wait_until(lambda: _status_is(strategy, task.id, S.STARTED), message="the start")

        async def watch() -> None:
            async for state in strategy.watch(task.id):
                seen.append(state)

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await wait_until(lambda: seen, message="the snapshot")
            await open_gate(redis, "gone")
    assert [s.status for s in seen] == [S.STARTED, S.FAILED]
    assert "without a result" in (seen[-1].error or "")


async def test_signed_records_read_with_the_workers_settings(redis_server: RedisServer) -> None:
    """A worker's own queue and signing secret are read, and checked, as it does."""
    worker = make_worker(redis_server.url, tracked=False, queue_name="signed", signing_secret="s3")
    reader = StreaqStrategy(redis_server.url, worker=worker)
    async with running(worker):
        task = await worker.registry["fail"].enqueue()
        await task.result(timeout=10)
    assert (await reader.status(task.id)).error == "ValueError: bad row"
    impostor = make_worker(
        redis_server.url, tracked=False, queue_name="signed", signing_secret="not s3"
    )
    other = StreaqStrategy(redis_server.url, worker=impostor)
    unread = "streaQ's result record of the task could not be read"
    assert (await other.status(task.id)).error == unread
    await reader.aclose()
    await other.aclose()


def test_decoding_client_is_refused() -> None:
    """streaQ pickles: a client that decodes replies is refused with the reason."""
    with pytest.raises(ValueError, match="decode_responses=False"):
        StreaqStrategy(Redis(decode_responses=True))


async def test_error_class_only_the_worker_has_keeps_its_name(
    redis: Redis, strategy: StreaqStrategy
) -> None:
    """A task's own exception class, which this process cannot import, still names the error."""
    module = types.ModuleType("only_on_the_worker")
    exec("class RowError(Exception): pass", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        record = {"f": "load", "s": False, "r": module.RowError("row 3"), "t": 1}
        raw = pickle.dumps(record)
    finally:
        del sys.modules[module.__name__]
    await redis.set(f"streaq:default:task:results:{'t1'}", raw)
    state = await strategy.status("t1")
    assert (state.status, state.error, state.function) == (S.FAILED, "RowError: row 3", "load")


# The job side: a tracked worker, waiters on a Tracker.


@pytest.fixture
async def streaq_tracker(redis_server: RedisServer) -> AsyncIterator[Tracker]:
    """A Tracker as a web process of a streaQ app has it: streaQ's records as the fallback."""
    configure(queue_adapter="streaq")
    async with Tracker(redis_server.url) as tracker:
        yield tracker


@pytest.fixture
async def jobside_tracker(redis_server: RedisServer) -> AsyncIterator[Tracker]:
    """A Tracker that reads only what the job side wrote: no fallback on streaQ's records,
    so what it sees the middleware recorded."""
    strategy = RedisPubSubStrategy(redis_server.url)
    async with Tracker(redis_server.url, tracking_strategy=strategy) as tracker:
        yield tracker
    await strategy.aclose()


async def enqueue(tracker: Tracker, client: Worker[Any], name: str, *args: Any) -> str:
    task = await tracker.enqueue(client, client.registry[name], *args)
    assert isinstance(task, Task)
    return task.id


async def test_finished_through_the_middleware_with_queued_first(
    redis_server: RedisServer, jobside_tracker: Tracker
) -> None:
    """A task enqueued through the Tracker reads queued, then started, then finished."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(jobside_tracker, client, "finish")
        watcher = await Watcher(jobside_tracker, task_id).subscribed()
        async with running(make_worker(redis_server.url)):
            states = await watcher.finished()
            await streaq_done(client, task_id)
    assert steps(states) == [("queued", 0), ("started", 1), ("finished", 1)]
    assert states[-1].function == "finish"


async def test_failure_records_the_error_text(
    redis_server: RedisServer, jobside_tracker: Tracker
) -> None:
    """A task that raises ends failed with the exception's class and message."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(jobside_tracker, client, "fail")
        async with running(make_worker(redis_server.url)):
            state = await jobside_tracker.completed(task_id, timeout=20 * SCALE)
            await streaq_done(client, task_id)
    assert (state.status, state.error, state.attempt) == (S.FAILED, "ValueError: bad row", 1)


async def test_retry_then_success_shows_both_attempts_in_order(
    redis_server: RedisServer, jobside_tracker: Tracker
) -> None:
    """StreaqRetry reads retrying at attempt 1, then attempt 2 finishes."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(jobside_tracker, client, "retry")
        watcher = await Watcher(jobside_tracker, task_id).subscribed()
        async with running(make_worker(redis_server.url)):
            states = await watcher.finished()
            await streaq_done(client, task_id)
    assert steps(states) == [
        ("queued", 0),
        ("started", 1),
        ("retrying", 1),
        ("started", 2),
        ("finished", 2),
    ]
    assert states[2].error == "StreaqRetry: not yet"


async def test_retries_exhausted_end_failed_with_streaqs_reason(
    redis_server: RedisServer, streaq_tracker: Tracker
) -> None:
    """streaQ failing a task without running it again reaches the waiter from its record."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(streaq_tracker, client, "retry_always")
        watcher = await Watcher(streaq_tracker, task_id).subscribed()
        async with running(make_worker(redis_server.url)):
            states = await watcher.finished()
    assert steps(states)[-2:] == [("retrying", 2), ("failed", 3)]
    assert states[-1].error == "StreaqError: Max retry attempts reached for task!"


async def test_progress_and_meta_arrive_in_order(
    redis_server: RedisServer, jobside_tracker: Tracker
) -> None:
    """job_context().update() pushes each progress and meta to a watcher, in order."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(jobside_tracker, client, "steps", 20)
        watcher = await Watcher(jobside_tracker, task_id).subscribed()
        async with running(make_worker(redis_server.url)):
            states = await watcher.finished()
            await streaq_done(client, task_id)
    reported = [
        (s.progress, s.meta.get("step")) for s in states if s.status is S.STARTED and s.meta
    ]
    assert reported == [((i + 1) / 20, i + 1) for i in range(20)][-len(reported) :]
    assert reported[-1] == (1.0, 20)
    assert states[-1].status is S.FINISHED and states[-1].meta == {"step": 20}


async def test_abort_while_running_is_aborted(
    redis_server: RedisServer, jobside_tracker: Tracker
) -> None:
    """streaQ's abort() of a running task reads aborted, taken from streaQ's record."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(jobside_tracker, client, "gated", "abort")
        watcher = await Watcher(jobside_tracker, task_id).subscribed()
        async with running(make_worker(redis_server.url)):
            await wait_until(lambda: watcher.has(S.STARTED), message="the start")
            assert await client.abort_by_id(task_id, timeout=10)
            states = await watcher.finished()
    assert (states[-1].status, states[-1].error) == (
        S.ABORTED,
        "StreaqCancelled: Task aborted by user!",
    )


async def test_timeout_is_failed_with_streaqs_text(
    redis_server: RedisServer, jobside_tracker: Tracker
) -> None:
    """A task past its streaQ timeout reads failed with streaQ's timeout error."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(jobside_tracker, client, "slow", "timeout")
        async with running(make_worker(redis_server.url)):
            state = await jobside_tracker.completed(task_id, timeout=20 * SCALE)
    assert (state.status, state.error) == (S.FAILED, "TimeoutError: Task timed out!")


async def test_task_enqueued_by_plain_streaq_is_tracked(
    redis_server: RedisServer, streaq_tracker: Tracker
) -> None:
    """A task enqueued by code that never heard of us is tracked by the worker's middleware."""
    async with producer(redis_server.url) as client:
        task = await client.registry["plain"].enqueue()
        assert (await streaq_tracker.status(task.id)).status is S.QUEUED
        async with running(make_worker(redis_server.url)):
            state = await streaq_tracker.completed(task.id, timeout=20 * SCALE)
            await streaq_done(client, task.id)
    assert (state.status, state.attempt) == (S.FINISHED, 1)


async def test_unknown_task_raises_job_not_found_at_once(streaq_tracker: Tracker) -> None:
    """An id neither we nor streaQ know raises JobNotFound without waiting."""
    with anyio.fail_after(5 * SCALE), pytest.raises(JobNotFound):
        await streaq_tracker.completed("never-enqueued")


async def test_job_context_outside_a_worker_records_nothing() -> None:
    """Called outside a tracked task, job_context() takes updates and records nothing."""
    context = job_context()
    await context.update(progress=0.5, rows=1)
    assert context.job_id == ""


def test_track_worker_refuses_what_it_cannot_track(redis_server: RedisServer) -> None:
    """A worker tracked twice, or an object that is not a worker, is refused with the reason."""
    worker = make_worker(redis_server.url)
    with pytest.raises(ValueError, match="tracked already"):
        track_worker(worker, redis=redis_server.url)
    with pytest.raises(TypeError, match=r"streaq\.Worker"):
        track_worker(object(), redis=redis_server.url)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="shutdown_grace"):
        track_worker(
            make_worker(redis_server.url, tracked=False), redis="redis://x", shutdown_grace=-1
        )


def test_track_worker_refuses_a_cluster_for_streaqs_records(redis_server: RedisServer) -> None:
    """Tracking on a Redis Cluster needs the worker's own Redis as queue_redis, which
    is one server: each wrong combination is refused, saying what to give."""
    cluster = "redis+cluster://127.0.0.1:7000"
    worker = make_worker(redis_server.url, tracked=False)
    with pytest.raises(TypeError, match=r"give that too, as queue_redis="):
        track_worker(worker, redis=cluster)
    with pytest.raises(TypeError, match=r"give the cluster as redis="):
        track_worker(worker, redis=redis_server.url, queue_redis=cluster)


async def test_enqueue_refuses_arguments_twice(
    redis_server: RedisServer, streaq_tracker: Tracker
) -> None:
    """A streaQ Task carries its arguments: more given to Tracker.enqueue are refused."""
    async with producer(redis_server.url) as client:
        with pytest.raises(TypeError, match="carries its own arguments"):
            await streaq_tracker.enqueue(client, client.registry["gated"].enqueue("a"), "b")
        task = await streaq_tracker.enqueue(
            client, client.registry["gated"].enqueue("a").start(delay=60)
        )
        by_name = await streaq_tracker.enqueue(client, "finish")
    assert (await streaq_tracker.status(task.id)).status is S.QUEUED
    assert (await streaq_tracker.status(by_name.id)).function == "finish"


def start_doomed_worker(url: str) -> subprocess.Popen[bytes]:
    """A tracked streaQ worker in a process of its own, for the test to SIGKILL."""
    return subprocess.Popen([sys.executable, "-m", "tests.adapters.streaq_worker", url], cwd=ROOT)


async def test_killed_worker_shows_stalled_then_next_worker_finishes(
    redis_server: RedisServer, jobside_tracker: Tracker
) -> None:
    """SIGKILL mid-task: stalled at attempt 1, then another worker's attempt 2 finishes."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(jobside_tracker, client, "hang_once")
        watcher = await Watcher(jobside_tracker, task_id).subscribed()
        process = start_doomed_worker(redis_server.url)
        try:
            await wait_until(
                lambda: watcher.has(S.STARTED, progress=0.1), timeout=30, message="the first try"
            )
        finally:
            process.kill()
            process.wait()
        await wait_until(lambda: watcher.has(S.STARTED, stalled=True), message="stalled")
        async with running(make_worker(redis_server.url)):
            states = await watcher.finished()
            await streaq_done(client, task_id)
    stalled = next(s for s in states if s.stalled)
    assert stalled.attempt == 1
    assert (states[-1].status, states[-1].attempt, states[-1].stalled) == (S.FINISHED, 2, False)


def test_streaq_basic_example_enqueues_follows_and_prints_the_final_state(
    redis_server: RedisServer,
) -> None:
    """examples/streaq_basic: the script enqueues, streaQ's own CLI runs it, the script
    prints the end."""
    env = {**os.environ, "REDIS_URL": redis_server.url}
    burst = [sys.executable, "-m", "streaq", "run", "--burst", "worker:worker"]
    *progress, final_json, result = enqueue_and_work(ROOT / "examples" / "streaq_basic", env, burst)
    assert progress and all(line.startswith("started ") for line in progress)
    final = JobState.from_json(final_json)
    assert (final.status, final.progress) == (S.FINISHED, 1.0)
    assert final.meta == {"rows_done": 20}
    assert result == "result: 20"


def test_adapter_is_found_by_name_and_by_its_worker(redis_server: RedisServer) -> None:
    """The core finds the streaQ adapter by name and from a streaQ Worker, and its strategy
    by the name "streaq"."""
    assert isinstance(adapter, QueueAdapter)
    assert adapters.load("streaq") is adapter
    assert adapters.for_target(make_worker(redis_server.url, tracked=False)) is adapter
    assert resolve_strategy("streaq") is StreaqStrategy
    assert not adapter.accepts(object())


async def test_streaq_strategy_alone_follows_an_untracked_worker(
    redis_server: RedisServer,
) -> None:
    """tracking_strategy="streaq": a task run by a worker that never heard of us is
    followed from streaQ's records alone, start and end."""
    async with Tracker(redis_server.url, tracking_strategy="streaq") as tracker:
        async with producer(redis_server.url) as client:
            task = await client.registry["plain"].enqueue()
            watcher = await Watcher(tracker, task.id).subscribed()
            async with running(make_worker(redis_server.url, tracked=False)):
                states = await watcher.finished()
                await streaq_done(client, task.id)
    assert steps(states)[0] == ("queued", 0)
    assert steps(states)[-1] == ("finished", 1)


async def test_unreachable_tracking_redis_never_holds_the_task_nor_the_worker(
    redis_server: RedisServer,
) -> None:
    """Tracking writes to a Redis that is not there: the task finishes as streaQ sees
    it, and the worker stops within its shutdown grace, leaving nothing running."""
    worker = make_worker(redis_server.url, tracked=False)
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    track_worker(worker, redis=nowhere, write_timeout=0.2, retry_for=60, shutdown_grace=0)
    async with producer(redis_server.url) as client:
        task = await client.registry["finish"].enqueue()
        with anyio.fail_after(20 * SCALE):
            async with running(worker):
                result = await client.result_by_id(task.id, timeout=20 * SCALE)
    assert (result.success, result.result) == (True, "done")
    leftovers = [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("immortus:")]
    assert leftovers == []


async def test_abort_before_it_ran_reads_aborted_from_streaqs_record(
    redis_server: RedisServer, streaq_tracker: Tracker
) -> None:
    """A task aborted while it waits in streaQ's queue is ended unrun by the worker that
    picks it up: the middleware never sees it, the waiter gets aborted all the same."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(streaq_tracker, client, "finish")
        # No worker yet: streaQ only marks it (timeout=0 does not wait for the end).
        assert not await client.abort_by_id(task_id, timeout=0)
        async with running(make_worker(redis_server.url)):
            state = await streaq_tracker.completed(task_id, timeout=20 * SCALE)
            await streaq_done(client, task_id)
    assert (state.status, state.error) == (S.ABORTED, "StreaqCancelled: Task aborted prior to run!")


async def test_the_strategy_given_to_track_worker_records_every_task(
    redis_server: RedisServer,
) -> None:
    """track_worker(strategy=...) is what the middleware writes to, for each attempt."""
    memory = MemoryStrategy()
    worker = make_worker(redis_server.url, tracked=False)
    track_worker(worker, redis=redis_server.url, strategy=memory)
    async with producer(redis_server.url) as client, running(worker):
        retried = await client.registry["retry"].enqueue()
        failed = await client.registry["fail"].enqueue()
        for task in (retried, failed):
            await streaq_done(client, task.id)
    assert (await memory.status(retried.id)).status is S.FINISHED
    assert (await memory.status(retried.id)).attempt == 2
    assert (await memory.status(failed.id)).error == "ValueError: bad row"


async def test_a_synchronous_task_is_tracked_and_reports(
    redis_server: RedisServer, jobside_tracker: Tracker
) -> None:
    """A sync task (run by streaQ in a thread) is tracked; it reports through the loop."""
    async with producer(redis_server.url) as client:
        task_id = await enqueue(jobside_tracker, client, "sync_half")
        watcher = await Watcher(jobside_tracker, task_id).subscribed()
        async with running(make_worker(redis_server.url)):
            states = await watcher.finished()
            await streaq_done(client, task_id)
    assert watcher.has(S.STARTED, progress=0.5)
    assert (states[-1].status, states[-1].meta) == (S.FINISHED, {"half": True})


async def test_a_dependent_of_a_failed_task_ends_failed_unrun(
    redis_server: RedisServer, streaq_tracker: Tracker
) -> None:
    """streaQ fails a task whose dependency failed without running it: the waiter on the
    dependent gets streaQ's reason."""
    async with producer(redis_server.url) as client:
        chain = client.registry["fail"].enqueue().then(client.registry["finish"])
        dependent = await streaq_tracker.enqueue(client, chain)
        async with running(make_worker(redis_server.url)):
            state = await streaq_tracker.completed(dependent.id, timeout=20 * SCALE)
            await streaq_done(client, dependent.id)
    assert (state.status, state.error) == (
        S.FAILED,
        "StreaqError: Dependency failed, not running task!",
    )
