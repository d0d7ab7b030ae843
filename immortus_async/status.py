"""Job statuses and the forward-only transition rule.

No I/O here: the same rule is mirrored, line for line, by the Lua script that
:class:`~immortus_async.strategies.redis_pub_sub.RedisPubSubStrategy` runs inside
Redis, and ``tests/test_status.py`` checks both against one table.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TERMINAL_STATUSES", "JobStatus", "is_forward"]


class JobStatus(StrEnum):
    """Where a job is in its life.

    ``finished`` means it succeeded. ``finished``, ``failed``, ``aborted`` and
    ``expired`` are terminal (see :data:`TERMINAL_STATUSES`): a waiter returns on
    any of them, so a failed job never leaves anyone waiting.
    """

    UNKNOWN = "unknown"
    """Never seen: no record of ours nor of the queue."""
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    """An attempt ended and the queue will run the job again."""
    FINISHED = "finished"
    FAILED = "failed"
    ABORTED = "aborted"
    EXPIRED = "expired"
    """It was tracked, and its record's TTL has passed (a tombstone remembers it)."""

    @property
    def terminal(self) -> bool:
        """True for ``finished``, ``failed``, ``aborted`` and ``expired``."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.ABORTED, JobStatus.EXPIRED}
)

# Within one attempt a job only climbs this ladder. The Lua script holds a copy.
_RANK = {
    JobStatus.UNKNOWN: -1,
    JobStatus.QUEUED: 0,
    JobStatus.STARTED: 1,
    JobStatus.RETRYING: 2,
    JobStatus.FINISHED: 3,
    JobStatus.FAILED: 3,
    JobStatus.ABORTED: 3,
    JobStatus.EXPIRED: 4,
}
# A job in one of these never runs again, whatever attempt a late update claims.
_FINAL = frozenset({JobStatus.FINISHED, JobStatus.ABORTED, JobStatus.EXPIRED})


def is_forward(current: JobStatus, current_attempt: int, new: JobStatus, new_attempt: int) -> bool:
    """Tell whether an update may move a job from ``current`` to ``new``.

    Rules, in order:

    * nothing leaves ``finished``, ``aborted`` or ``expired``;
    * an older attempt never overwrites a newer one;
    * a newer attempt may leave ``retrying`` or ``failed`` (arq ran it again),
      but it never goes back to ``queued``;
    * within one attempt the status only climbs
      ``queued < started < retrying < finished|failed|aborted``, except that
      ``started -> started`` is accepted: that is a progress update.

    An update for which this returns False is dropped, not applied.
    """
    if current is JobStatus.UNKNOWN:
        return new is not JobStatus.UNKNOWN
    if current in _FINAL or new in (JobStatus.UNKNOWN, JobStatus.EXPIRED):
        return False
    if new_attempt < current_attempt:
        return False
    if new_attempt > current_attempt:
        return new is not JobStatus.QUEUED
    if current is JobStatus.STARTED and new is JobStatus.STARTED:
        return True
    return _RANK[new] > _RANK[current]
