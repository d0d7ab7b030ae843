"""What a tracking strategy is.

A strategy is any object with an async ``completed(job_id) -> bool``, the one
mandatory method, as in Immortus. Everything else is optional and is only called
where the object has it (Immortus used ``respond_to?``; we use ``getattr``):

* ``meta(job_id) -> dict``: extra fields merged into what a waiter sees;
* the callbacks ``job_enqueued(job_id)``, ``job_started(job_id)``,
  ``job_finished(job_id)``, ``job_failed(job_id, error)``,
  ``job_retrying(job_id, error)``, ``job_progress(job_id, progress, meta)``;
* the richer capabilities the built-in strategies have: :class:`StateReader`
  (``status``: a whole :class:`~immortus_async.JobState`), :class:`StateWriter`
  (``apply``: one :class:`~immortus_async.JobUpdate`) and :class:`PushSource`
  (``watch``: push every change). A waiter uses push where the strategy has it and
  polls ``completed``/``meta`` with backoff where it does not;
* what the job side and the builder look for: :class:`Heartbeats` (a writer whose
  ``apply`` also beats) and :class:`QueueRecords` (a reader of a queue's own records,
  built on the queue's Redis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..state import JobState, JobUpdate

__all__ = [
    "Heartbeats",
    "PushSource",
    "QueueRecords",
    "StateReader",
    "StateWriter",
    "TrackingStrategy",
]


@runtime_checkable
class TrackingStrategy(Protocol):
    """The one thing every strategy must do: say whether a job has completed."""

    async def completed(self, job_id: str) -> bool:
        """True when the job has ended (succeeded or not), False otherwise."""
        ...


@runtime_checkable
class StateReader(Protocol):
    """A strategy that knows a job's whole state, not just whether it completed."""

    async def status(self, job_id: str) -> JobState:
        """The job's state now; ``unknown`` (seq 0) when it has no record."""
        ...


@runtime_checkable
class StateWriter(Protocol):
    """A strategy that records updates atomically, dropping backward moves."""

    async def apply(self, update: JobUpdate) -> JobState | None:
        """Apply ``update``; return the new state, or None if it was dropped."""
        ...


@runtime_checkable
class PushSource(Protocol):
    """A strategy that can push each new state of a job as it happens."""

    def watch(self, job_id: str, **options: Any) -> AsyncIterator[JobState]:
        """Yield the current state, then every newer one, ending after a terminal one."""
        ...


@runtime_checkable
class Heartbeats(Protocol):
    """A writer that records heartbeats: a running job's worker is alive.

    A strategy with both methods is taken to be one: its ``apply`` must take
    ``stalled_after``, with which a ``started`` update is a heartbeat too, in the
    same write (the job side's first beat rides on its ``started``).
    """

    async def apply(
        self, update: JobUpdate, *, stalled_after: float | None = None
    ) -> JobState | None:
        """Apply ``update``; with ``stalled_after``, a ``started`` one also beats."""
        ...

    async def heartbeat(self, job_id: str, attempt: int, *, stalled_after: float) -> bool:
        """Refresh the running attempt's heartbeat; False when it is not running."""
        ...


@runtime_checkable
class QueueRecords(Protocol):
    """A strategy that reads a queue's own records (e.g. ``ArqStrategy``).

    Built on the queue's Redis (a Tracker's ``queue_redis``) rather than the
    tracking one; ``queue_adapter`` names the adapter whose records it reads.
    """

    queue_adapter: ClassVar[str]
