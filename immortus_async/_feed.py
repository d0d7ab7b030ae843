"""An owner's feed: the states of every job of one owner, as they change.

What the owner channel carries is decoded by :func:`decode_feed_message` into a
:class:`JobState` or a :class:`Reread`; a :class:`FeedBuffer` holds them for one
reader, coalesced per job and bounded; :func:`follow_owner` reads the owner's
snapshot once the channel is live, then yields each change.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from ._buffer import RESYNC, _Resync, _Signals
from ._follow import history_lost
from .exceptions import InvalidStateError
from .state import JobState

__all__ = ["OWNER_SNAPSHOT_LIMIT", "FeedBuffer", "Reread", "decode_feed_message", "follow_owner"]

OWNER_SNAPSHOT_LIMIT = 100
"""The most jobs an owner's snapshot holds: the newest enqueued, oldest first."""


@dataclass(frozen=True, slots=True)
class Reread:
    """A job joined its owner after its worker wrote ahead of the queued state:
    read it, no state came with the message."""

    job_id: str


def decode_feed_message(raw: bytes) -> JobState | Reread:
    """A message of an owner channel: a job's state, or a :class:`Reread`.

    Raises:
        InvalidStateError: neither.
    """
    try:
        data = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidStateError(f"an owner's message is not valid JSON: {exc}") from None
    if isinstance(data, dict) and set(data) == {"reread"} and isinstance(data["reread"], str):
        return Reread(data["reread"])
    return JobState.from_dict(data)


class FeedBuffer(_Signals):
    """What one feed reader has not read yet: the latest item per job, oldest job first.

    At most ``max_jobs`` jobs wait; one more and everything waiting is dropped
    for a resync (the reader reads the owner's snapshot again, which is as new
    as anything dropped). Not thread-safe; one event loop.
    """

    def __init__(self, max_jobs: int = OWNER_SNAPSHOT_LIMIT) -> None:
        super().__init__()
        self._items: dict[str, JobState | Reread] = {}
        self._max_jobs = max_jobs
        self.resyncs = 0

    def push(self, item: JobState | Reread) -> None:
        """Keep ``item`` as its job's latest (a state replaces a waiting reread)."""
        if item.job_id not in self._items and len(self._items) >= self._max_jobs:
            self._items.clear()
            self.resyncs += 1
            self.request_resync()
            return
        if isinstance(item, Reread) and isinstance(self._items.get(item.job_id), JobState):
            return  # the state that waits is at least as new as a read would be
        self._items[item.job_id] = item
        self._wakeup.set()

    async def get(self) -> JobState | Reread | _Resync:
        """Wait for the next item, a resync request, or an error (raised)."""
        while True:
            signal = self._signalled()
            if signal is not None:
                self._items.clear()  # the snapshot read next is as new as any of them
                return signal
            if self._items:
                job_id = next(iter(self._items))
                return self._items.pop(job_id)
            self._wakeup.clear()
            await self._wakeup.wait()


class _Seen:
    """The state last yielded per job, for the most recent ``4 * OWNER_SNAPSHOT_LIMIT``
    jobs: a message older than what the snapshot read is dropped."""

    def __init__(self) -> None:
        self._states: OrderedDict[str, JobState] = OrderedDict()

    def news(self, state: JobState) -> bool:
        last = self._states.get(state.job_id)
        if last is not None and not (
            state.seq > last.seq or (state.completed and not last.completed)
        ):
            return False
        self._states[state.job_id] = state
        self._states.move_to_end(state.job_id)
        if len(self._states) > 4 * OWNER_SNAPSHOT_LIMIT:
            self._states.popitem(last=False)
        return True

    def rebase(self, snapshot: list[JobState]) -> None:
        """Forget what a snapshot read again shows to be another history: a job it
        lacks (its record expired or was lost: a write of it now starts anew) and a
        job written anew since (:func:`~immortus_async._follow.history_lost`).
        Every other job keeps its last seq, so a state already yielded is not
        yielded again (a terminal one above all)."""
        fresh = {state.job_id: state for state in snapshot}
        for job_id, last in list(self._states.items()):
            state = fresh.get(job_id)
            if state is None or history_lost(last, state):
                del self._states[job_id]


async def follow_owner(
    subscription: AbstractAsyncContextManager[None],
    buffer: FeedBuffer,
    snapshot: Callable[[], Awaitable[list[JobState]]],
    read: Callable[[str], Awaitable[JobState]],
) -> AsyncIterator[JobState]:
    """Yield the owner's snapshot once ``subscription`` is live, then every change.

    Never ends by itself. A change older than the state already yielded for its
    job is skipped; after a resync (a lost connection, a full buffer) the
    snapshot is read again and the same rule applies to it: a job's state comes
    again only if it changed meanwhile, or if Redis lost the job's history and
    it was written anew (its seq counts from 1 again). No state, terminal or
    not, is yielded twice.
    """
    async with subscription:
        seen = _Seen()
        pending = await snapshot()
        while True:
            for state in pending:
                if seen.news(state):
                    yield state
            item = await buffer.get()
            if item is RESYNC:
                pending = await snapshot()
                seen.rebase(pending)
            elif isinstance(item, Reread):
                pending = [await read(item.job_id)]
            else:
                assert isinstance(item, JobState)
                pending = [item]
