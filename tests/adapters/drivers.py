"""One driver per queue adapter: what the contract suite asks of a queue.

A driver starts and kills real workers of its queue (processes of their own, on the
test's Redis), enqueues a job of a given kind, and says what its queue cannot do.
The kinds are the same for every queue; each worker program defines one job
function per kind, tracked (but ``PLAIN``) with :data:`HEARTBEAT_INTERVAL`.
To add a queue, write its driver and put it in :data:`DRIVERS`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from immortus_async import Tracker

from ..utils import Spawned

FINISH = "finish"  # returns
FAIL = "fail"  # raises ValueError("bad row")
RETRY = "retry"  # asks its queue for another run on attempt 1, returns on attempt 2
WAIT = "wait"  # reports progress 0.1, then runs until it is cancelled
PROGRESS = "progress"  # progress 0.5 (rows=1), then 1.0 (rows=2), then returns
HANG_ONCE = "hang_once"  # progress 0.1 and hangs on attempt 1; returns on attempt 2
PLAIN = "plain"  # an untracked function: returns
MISSING = "no_such_function"  # a function no worker has: the queue ends it unrun

HEARTBEAT_INTERVAL = 0.1
STALLED_AFTER = 0.5
READY = "contract worker ready"
"""The line a worker program prints as it starts taking jobs."""

# The cases a queue may be unable to do (Driver.cannot's keys).
ABORT = "abort"
NEVER_RUN = "never_run"
RUN_AGAIN = "run_again"


class Driver(Protocol):
    """A queue, as the contract suite drives it."""

    adapter: str
    """The adapter's name in ``immortus_async.adapters.ADAPTERS``."""
    cannot: Mapping[str, str]
    """Case (``ABORT``, ``NEVER_RUN``, ``RUN_AGAIN``) -> why this queue cannot do it."""

    def tracker(self) -> Tracker:
        """A Tracker (configured for this queue) on the test's Redis."""
        ...

    async def enqueue(self, tracker: Tracker, kind: str) -> str:
        """Enqueue a job of ``kind`` through ``tracker.enqueue``; its id."""
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

    async def aclose(self) -> None:
        """Stop every worker and close every connection of the driver."""
        ...


class ArqDriver:
    """arq: workers are ``python -m tests.adapters.arq_worker URL``."""

    adapter = "arq"
    cannot: Mapping[str, str] = {}

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

    async def enqueue(self, tracker: Tracker, kind: str) -> str:
        job = await tracker.enqueue(await self._arq(), kind)
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

    async def aclose(self) -> None:
        for worker in self._workers:
            await worker.stop(signal.SIGTERM)
        if self._pool is not None:
            await self._pool.aclose()


DRIVERS: dict[str, Callable[[str], Driver]] = {"arq": ArqDriver}
"""Adapter name -> its driver, made with the test's Redis URL."""
