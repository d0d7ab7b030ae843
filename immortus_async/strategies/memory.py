"""``"memory"``: in-process tracking, for tests and single-process apps."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from .._buffer import StateBuffer
from .._follow import follow
from ..state import JobState, JobUpdate, apply_update
from ..status import JobStatus

__all__ = ["MemoryStrategy"]


class MemoryStrategy:
    """Keeps every job's state in a dict and pushes changes to in-process waiters.

    Same semantics as the Redis strategy (forward-only updates, seq, meta merging)
    without a server; nothing expires and nothing is shared between processes.

    Args:
        buffer_size: states kept per waiter that has not read them yet.
    """

    def __init__(self, *, buffer_size: int = 64) -> None:
        self._states: dict[str, JobState] = {}
        self._waiters: dict[str, set[StateBuffer]] = {}
        self._buffer_size = buffer_size

    async def apply(self, update: JobUpdate) -> JobState | None:
        """Apply ``update``; return the new state, or None if it was dropped."""
        state = apply_update(self._states.get(update.job_id), update)
        if state is not None:
            self._states[update.job_id] = state
            for buffer in self._waiters.get(update.job_id, ()):
                buffer.push(state)
        return state

    async def status(self, job_id: str) -> JobState:
        """The job's state now; ``unknown`` if it was never seen."""
        return self._states.get(job_id) or JobState(job_id=job_id, status=JobStatus.UNKNOWN)

    async def completed(self, job_id: str) -> bool:
        """True when the job is in a terminal state."""
        return (await self.status(job_id)).completed

    async def meta(self, job_id: str) -> dict[str, Any]:
        """The meta the job has reported so far."""
        return (await self.status(job_id)).meta

    def watch(self, job_id: str, **options: Any) -> AsyncIterator[JobState]:
        """Yield the job's state now, then each change, until a terminal state."""
        buffer = StateBuffer(options.get("buffer_size", self._buffer_size))
        subscription = self._subscription(job_id, buffer)
        return follow(job_id, subscription, buffer, lambda: self.status(job_id))

    @contextlib.asynccontextmanager
    async def _subscription(self, job_id: str, buffer: StateBuffer) -> AsyncIterator[None]:
        self._waiters.setdefault(job_id, set()).add(buffer)
        try:
            yield
        finally:
            waiters = self._waiters[job_id]
            waiters.discard(buffer)
            if not waiters:
                del self._waiters[job_id]
