"""Jobs that keep changing while the cluster is faulted, and waiters that check them.

Each job is driven by the job side itself (:func:`begin_job` on the cluster client:
write deadlines, background redelivery), with a progress update per round until
the fault is over, then ``finished``. Every job has a ``watch()`` waiter and a
``completed()`` waiter from before the first round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio.cluster import RedisCluster

from immortus_async import (
    JobContext,
    JobOptions,
    JobState,
    JobStatus,
    JobUpdate,
    Leftovers,
    RedisPubSubStrategy,
    Tracker,
)
from immortus_async.jobside import begin_job

from ..utils import SCALE

OPTIONS = JobOptions.checked(heartbeat_interval=5.0, retry_for=60.0, write_timeout=1.0)


class Load:
    """``jobs`` jobs, each followed by one ``watch()`` and one ``completed()``."""

    def __init__(self, tracker: Tracker, client: RedisCluster, jobs: int, *, tag: str) -> None:
        self.tracker = tracker
        self.client = client
        self.ids = [f"{tag}-{i}" for i in range(jobs)]
        self.seen: dict[str, list[JobState]] = {job_id: [] for job_id in self.ids}
        self.rounds = 0
        self.stop = asyncio.Event()
        self._leftovers = Leftovers()
        self._watching: list[asyncio.Task[None]] = []
        self._completed: list[asyncio.Task[JobState]] = []
        self._first: dict[str, asyncio.Event] = {job_id: asyncio.Event() for job_id in self.ids}
        self._driver: asyncio.Task[None] | None = None
        self._ticked = asyncio.Condition()

    async def start(self) -> Load:
        """Record every job queued, start every waiter, wait until each is following."""
        strategy = self.tracker.strategy()
        assert isinstance(strategy, RedisPubSubStrategy)
        for job_id in self.ids:
            await strategy.apply(JobUpdate(job_id=job_id, status=JobStatus.QUEUED, attempt=0))
        self._watching = [asyncio.create_task(self._watch(job_id)) for job_id in self.ids]
        self._completed = [
            asyncio.create_task(self.tracker.completed(job_id, timeout=120 * SCALE))
            for job_id in self.ids
        ]
        async with asyncio.timeout(30 * SCALE):
            await asyncio.gather(*(event.wait() for event in self._first.values()))
        self._driver = asyncio.create_task(self._drive())
        return self

    async def _watch(self, job_id: str) -> None:
        async for state in self.tracker.watch(job_id):
            self.seen[job_id].append(state)
            self._first[job_id].set()

    async def _drive(self) -> None:
        contexts: Sequence[JobContext] = [
            await begin_job(
                job_id,
                1,
                redis=self.client,
                spec="redis_pub_sub",
                options=OPTIONS,
                leftovers=self._leftovers,
            )
            for job_id in self.ids
        ]
        while not self.stop.is_set():
            self.rounds += 1
            step = self.rounds
            progress = min(step / 10_000, 0.99)
            await asyncio.gather(*(c.update(progress=progress, step=step) for c in contexts))
            async with self._ticked:
                self._ticked.notify_all()
        await asyncio.gather(*(context.finished() for context in contexts))

    async def rounds_past(self, count: int) -> None:
        """Until the jobs have made ``count`` more rounds of updates (the load runs)."""
        target = self.rounds + count
        async with asyncio.timeout(60 * SCALE), self._ticked:
            await self._ticked.wait_for(lambda: self.rounds >= target)

    async def finish(self) -> list[JobState]:
        """End every job; return what each ``completed()`` returned, after checking
        what each ``watch()`` saw: one terminal state, last, and seq rising."""
        self.stop.set()
        assert self._driver is not None
        async with asyncio.timeout(120 * SCALE):
            await self._driver
            # What a fault left to the background redelivery lands now.
            await self._leftovers.aclose(60 * SCALE)
            ends = await asyncio.gather(*self._completed)
            await asyncio.gather(*self._watching)
        for job_id, states in self.seen.items():
            assert states, job_id
            seqs = [state.seq for state in states]
            assert seqs == sorted(set(seqs)), f"{job_id}: seq not rising: {seqs}"
            terminal = [state for state in states if state.completed]
            assert [s.status for s in terminal] == [JobStatus.FINISHED], (job_id, states[-3:])
            assert states[-1].completed, job_id
        assert [end.status for end in ends] == [JobStatus.FINISHED] * len(self.ids)
        return ends
