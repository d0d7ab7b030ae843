"""One driver per queue adapter: what the contract suite asks of a queue.

A driver starts and kills real workers of its queue (processes of their own, on the
test's Redis), enqueues a job of a given kind, and says what its queue cannot do.
The kinds are the same for every queue; each worker program defines one job
function per kind, tracked (but ``PLAIN``) with :data:`HEARTBEAT_INTERVAL`.
To add a queue, write its driver and put it in :data:`DRIVERS`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import psutil

from immortus_async import Tracker, configure

from ..utils import Spawned

FINISH = "finish"  # returns
FAIL = "fail"  # raises ValueError("bad row")
RETRY = "retry"  # asks its queue for another run on attempt 1, returns on attempt 2
WAIT = "wait"  # reports progress 0.1, then runs until it is cancelled
PROGRESS = "progress"  # progress 0.5 (rows=1), then 1.0 (rows=2), then returns
HANG_ONCE = "hang_once"  # progress 0.1 and hangs on attempt 1; returns on attempt 2
PLAIN = "plain"  # an untracked function: returns
MISSING = "no_such_function"  # a function no worker has: the queue ends it unrun
RESULT = "result"  # returns RESULT_VALUE, reported in its state
BIG_RESULT = "big_result"  # returns a string over MAX_RESULT_BYTES, reported: left out

RESULT_VALUE = {"rows": [], "total": 12345678901234567890, "name": "done"}
MAX_RESULT_BYTES = 1024
"""The workers' result limit: BIG_RESULT returns twice as much."""

HEARTBEAT_INTERVAL = 0.1
STALLED_AFTER = 0.5
READY = "contract worker ready"
"""The line a worker program prints as it starts taking jobs."""

# The cases a queue may be unable to do (Driver.cannot's keys).
ABORT = "abort"
ABORT_QUEUED_AGAIN = "abort_queued_again"  # enqueue the id of a job aborted before it ran
ABORT_RUNNING_AGAIN = "abort_running_again"  # enqueue the id of a job aborted while running
NEVER_RUN = "never_run"
RUN_AGAIN = "run_again"
UNSEEN_QUEUED = "unseen_queued"  # see a queued job that code that never heard of us enqueued


class Driver(Protocol):
    """A queue, as the contract suite drives it."""

    adapter: str
    """The adapter's name in ``immortus_async.adapters.ADAPTERS``."""
    cannot: Mapping[str, str]
    """Case (``ABORT``, ``NEVER_RUN``, ``RUN_AGAIN``) -> why this queue cannot do it."""

    def tracker(self) -> Tracker:
        """A Tracker (configured for this queue) on the test's Redis."""
        ...

    async def enqueue(self, tracker: Tracker, kind: str, **options: Any) -> str:
        """Enqueue a job of ``kind`` through ``tracker.enqueue`` (``options``:
        the Tracker's own, ``owner=``); its id."""
        ...

    async def enqueue_untracked(self, kind: str) -> str:
        """Enqueue a job of ``kind`` through the queue's own API alone; its id."""
        ...

    async def start_worker(self) -> None:
        """Start a worker process; return once it takes jobs."""
        ...

    async def kill_worker(self) -> None:
        """SIGKILL the running worker."""
        ...

    async def abort(self, job_id: str) -> None:
        """Ask the queue to cancel ``job_id`` for good."""
        ...

    async def tracker_abort(self, tracker: Tracker, job_id: str) -> bool:
        """``tracker.abort(job_id)``, with what the queue needs around it."""
        ...

    def abort_queue(self) -> contextlib.AbstractAsyncContextManager[object | None]:
        """What a server's Tracker aborts through (``queue=``), ready while entered."""
        ...

    async def worker_output(self, pattern: str) -> None:
        """Return once the running worker has printed a line matching ``pattern``."""
        ...

    async def enqueue_as(self, tracker: Tracker, kind: str, job_id: str) -> str | None:
        """Enqueue a job of ``kind`` with the id ``job_id`` through ``tracker.enqueue``;
        its id, or None when the queue refuses the id."""
        ...

    async def aclose(self) -> None:
        """Stop every worker and close every connection of the driver."""
        ...


class ArqDriver:
    """arq: workers are ``python -m tests.adapters.arq_worker URL``."""

    adapter = "arq"
    cannot: Mapping[str, str] = {
        ABORT_RUNNING_AGAIN: (
            "arq keeps the result of a job aborted while it ran (keep_result) and "
            "refuses a new job of that id until the result expires"
        ),
    }

    def __init__(self, url: str) -> None:
        from arq.connections import RedisSettings, create_pool

        self._url = url
        self._settings = RedisSettings.from_dsn(url)
        self._create_pool = create_pool
        self._workers: list[Spawned] = []
        self._pool: Any = None

    async def _arq(self) -> Any:
        """arq's own pool on the test's Redis, made on first use."""
        if self._pool is None:
            self._pool = await self._create_pool(self._settings)
        return self._pool

    def tracker(self) -> Tracker:
        return Tracker(self._url)

    async def enqueue(self, tracker: Tracker, kind: str, **options: Any) -> str:
        job = await tracker.enqueue(await self._arq(), kind, **options)
        assert job is not None
        return str(job.job_id)

    async def enqueue_untracked(self, kind: str) -> str:
        job = await (await self._arq()).enqueue_job(kind)
        assert job is not None
        return str(job.job_id)

    async def start_worker(self) -> None:
        worker = await Spawned.start(sys.executable, "-m", "tests.adapters.arq_worker", self._url)
        self._workers.append(worker)
        await worker.expect(READY)

    async def kill_worker(self) -> None:
        await self._workers[-1].stop(signal.SIGKILL)

    async def abort(self, job_id: str) -> None:
        from arq.jobs import Job

        assert await Job(job_id, await self._arq()).abort(timeout=10)

    async def tracker_abort(self, tracker: Tracker, job_id: str) -> bool:
        return await tracker.abort(job_id)

    @contextlib.asynccontextmanager
    async def abort_queue(self) -> AsyncIterator[object | None]:
        yield None  # a Tracker's own queue Redis is all arq needs

    async def worker_output(self, pattern: str) -> None:
        await self._workers[-1].expect(pattern)

    async def enqueue_as(self, tracker: Tracker, kind: str, job_id: str) -> str | None:
        job = await tracker.enqueue(await self._arq(), kind, _job_id=job_id)
        return None if job is None else str(job.job_id)

    async def aclose(self) -> None:
        for worker in self._workers:
            await worker.stop(signal.SIGTERM)
        if self._pool is not None:
            await self._pool.aclose()


class StreaqDriver:
    """streaQ: workers are ``python -m tests.adapters.streaq_worker URL``, tracked
    through our middleware, on the queue's Redis (``tracking_url``: on another, a
    cluster's ``redis+cluster://`` URL); jobs are enqueued through a streaQ client of
    the tasks."""

    adapter = "streaq"
    cannot: Mapping[str, str] = dict.fromkeys(
        (ABORT_QUEUED_AGAIN, ABORT_RUNNING_AGAIN),
        "streaQ keeps an aborted task's result (its ttl) and its records answer that "
        "result for a new task of the same id until the new one ends: the two runs "
        "cannot be told apart",
    )

    def __init__(self, url: str, *, tracking_url: str | None = None) -> None:
        from .streaq_worker import make_worker

        self._url = url
        self._tracking_url = tracking_url
        # The web process's side: the same tasks, never run here. streaQ enters a
        # client per use (its connection pool belongs to the task that enters it).
        self._client = make_worker(url, tracked=False)
        self._workers: list[Spawned] = []

    def tracker(self) -> Tracker:
        configure(queue_adapter="streaq")
        return tracker_on(self._url, self._tracking_url, queue=self._client)

    async def enqueue(self, tracker: Tracker, kind: str, **options: Any) -> str:
        async with self._client:
            task = await tracker.enqueue(self._client, kind, **options)
        return str(task.id)

    async def enqueue_untracked(self, kind: str) -> str:
        async with self._client:
            task = await self._client.enqueue_unsafe(kind)
        return str(task.id)

    async def start_worker(self) -> None:
        where = [self._url] + ([self._tracking_url] if self._tracking_url else [])
        worker = await Spawned.start(sys.executable, "-m", "tests.adapters.streaq_worker", *where)
        self._workers.append(worker)
        await worker.expect(READY)

    async def kill_worker(self) -> None:
        await self._workers[-1].stop(signal.SIGKILL)

    async def abort(self, job_id: str) -> None:
        async with self._client:
            assert await self._client.abort_by_id(job_id, timeout=10)

    async def tracker_abort(self, tracker: Tracker, job_id: str) -> bool:
        async with self._client:
            return await tracker.abort(job_id)

    @contextlib.asynccontextmanager
    async def abort_queue(self) -> AsyncIterator[object | None]:
        async with self._client:
            yield self._client

    async def worker_output(self, pattern: str) -> None:
        await self._workers[-1].expect(pattern)

    async def enqueue_as(self, tracker: Tracker, kind: str, job_id: str) -> str | None:
        async with self._client:
            task = self._client.registry[kind].enqueue()
            task.id = job_id
            await tracker.enqueue(self._client, task)
        return job_id

    async def aclose(self) -> None:
        for worker in self._workers:
            await worker.stop(signal.SIGTERM)


class TaskiqDriver:
    """taskiq: workers are ``taskiq worker tests.adapters.taskiq_worker:broker`` (one
    worker process each), on taskiq-redis's ``RedisStreamBroker``, which hands the
    task of a killed worker to the next one (``broker="list"``: ``ListQueueBroker``),
    with our middleware (``tracked=False``: without), tracking on the queue's Redis
    (``tracking_url``: on another)."""

    adapter = "taskiq"
    cannot: Mapping[str, str] = {
        ABORT: "taskiq has no way to cancel a task, queued or running",
        NEVER_RUN: (
            "a task of a name no worker knows is acknowledged and dropped by taskiq's "
            "receiver, which calls no middleware and stores no result: nothing records it"
        ),
        UNSEEN_QUEUED: (
            "taskiq keeps no record of a queued task by its id (only the broker's stream "
            "or list, in which a task is found by reading every message): a task "
            "enqueued by code that never heard of us is unknown until a worker starts it"
        ),
    }

    def __init__(
        self,
        url: str,
        *,
        broker: str = "stream",
        tracked: bool = True,
        tracking_url: str | None = None,
    ) -> None:
        from . import taskiq_worker

        self._url = url
        self._tracking_url = tracking_url
        self._env = {
            **os.environ,
            "IMMORTUS_TEST_REDIS": url,
            "IMMORTUS_TEST_BROKER": broker,
            "IMMORTUS_TEST_TRACKED": "1" if tracked else "0",
            "IMMORTUS_TEST_TRACKING_REDIS": tracking_url or "",
        }
        # The web process's broker: it sends tasks, and runs none.
        self._broker = taskiq_worker.make_broker(url, broker, tracked=False)
        # The tasks by name, labels and all: taskiq's retry middleware reads a task's
        # retry_on_error from the message, so the sender must know the task.
        self._tasks = taskiq_worker.broker.get_all_tasks()
        self._started = False
        self._killed = False
        self._workers: list[Spawned] = []

    async def client(self) -> Any:
        """The broker tasks are sent with (the web process's), started on first use."""
        if not self._started:
            # Creates the stream's consumer group: tasks sent from now on reach workers.
            await self._broker.startup()
            self._started = True
        return self._broker

    def tracker(self) -> Tracker:
        configure(queue_adapter="taskiq")
        return tracker_on(self._url, self._tracking_url)

    async def enqueue(self, tracker: Tracker, kind: str, **options: Any) -> str:
        task = await tracker.enqueue(await self.client(), self._tasks.get(kind, kind), **options)
        return str(task.task_id)

    async def enqueue_untracked(self, kind: str) -> str:
        kicker = self._tasks[kind].kicker().with_broker(await self.client())
        return str((await kicker.kiq()).task_id)

    async def start_worker(self) -> None:
        worker = await Spawned.start(
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "tests.adapters.taskiq_worker:broker",
            "--workers",
            "1",
            # A task that hangs holds the worker's shutdown no longer than this.
            "--wait-tasks-timeout",
            "1",
            env=self._env,
        )
        self._workers.append(worker)
        await worker.expect(READY)
        if self._killed:
            # taskiq-redis's stream broker looks for the tasks a dead worker left
            # only after it reads a new one (an idle stream never hands them over):
            # a busy queue always has one; the test sends one.
            await self.enqueue_untracked("plain")

    async def stop_worker(self) -> int:
        """SIGTERM the running worker, as a deployment stops it; its exit status."""
        return await self._workers[-1].stop(signal.SIGTERM)

    async def kill_worker(self) -> None:
        self._killed = True
        # taskiq's worker is a manager and its worker process: both go, the one
        # running the task first (the manager would start another).
        await kill_tree(self._workers[-1])

    async def abort(self, job_id: str) -> None:
        raise NotImplementedError(self.cannot[ABORT])

    async def tracker_abort(self, tracker: Tracker, job_id: str) -> bool:
        return await tracker.abort(job_id)  # raises AbortUnsupported

    @contextlib.asynccontextmanager
    async def abort_queue(self) -> AsyncIterator[object | None]:
        yield await self.client()

    async def worker_output(self, pattern: str) -> None:
        await self._workers[-1].expect(pattern)

    async def enqueue_as(self, tracker: Tracker, kind: str, job_id: str) -> str | None:
        kicker = self._tasks[kind].kicker().with_task_id(job_id)
        return str((await tracker.enqueue(await self.client(), kicker)).task_id)

    async def aclose(self) -> None:
        for worker in self._workers:
            # Killed, not stopped: taskiq-redis 1.2's stream worker does not end on
            # SIGTERM (its listener stops prefetching and hangs there, our middleware
            # or not). tests/adapters/test_taskiq.py stops list workers gracefully.
            await kill_tree(worker)
        if self._started:
            await self._broker.shutdown()


def tracker_on(url: str, tracking_url: str | None, **options: Any) -> Tracker:
    """A Tracker on the queue's Redis ``url``, or on ``tracking_url`` with ``url`` as
    the queue's Redis (where the queue's own records are read)."""
    if tracking_url is None:
        return Tracker(url, **options)
    return Tracker(tracking_url, queue_redis=url, **options)


async def kill_tree(spawned: Spawned) -> None:
    """SIGKILL a process and every process under it, children first; await its end."""
    if spawned.process.returncode is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(spawned.process.pid).children(recursive=True):
                child.kill()
    await spawned.stop(signal.SIGKILL)


DRIVERS: dict[str, Callable[[str], Driver]] = {
    "arq": ArqDriver,
    "streaq": StreaqDriver,
    "taskiq": TaskiqDriver,
}
"""Adapter name -> its driver, made with the test's Redis URL."""
