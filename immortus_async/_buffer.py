"""A bounded, seq-ordered mailbox of job states for one waiter."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .state import JobState

__all__ = ["RESYNC", "BufferStatistics", "StateBuffer", "Wakeup"]


class Wakeup:
    """``asyncio.Event`` without the Event's waiter deque, for any number of tasks.

    A bridge holds one per connection and one per subscription; an Event with its
    deque is ~1.1 KB where this is ~100 bytes, and ten thousand idle connections
    pay that difference in RSS. The futures of waiting tasks live only while they
    wait. :meth:`set` wakes every task waiting then; a waiter that is cancelled
    leaves the others waiting.
    """

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        """Whether :meth:`set` was called since the last :meth:`clear`."""
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiting task."""
        self._flag = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        """Reset the flag."""
        self._flag = False

    async def wait(self) -> None:
        """Return once the flag is set (at once if it is)."""
        if self._flag:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
        finally:
            # Cancelled before set(): leave the list of those still waiting.
            waiters = self._waiters
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    self._waiters = None


class _Resync:
    def __repr__(self) -> str:
        return "RESYNC"


RESYNC = _Resync()
"""Returned by :meth:`StateBuffer.get` when messages may have been lost (a dropped
connection): the reader must re-read the job's snapshot."""


@dataclass(frozen=True, slots=True)
class BufferStatistics:
    """How full a buffer is and how many states it has dropped to stay bounded."""

    size: int
    maxsize: int
    dropped: int


class _Signals:
    """What a pub/sub hub tells a sink besides its items: an error, a resync."""

    def __init__(self) -> None:
        self._error: BaseException | None = None
        self._resync = False
        self._wakeup = Wakeup()

    def fail(self, error: BaseException) -> None:
        """Make the next :meth:`get` raise ``error``."""
        self._error = error
        self._wakeup.set()

    def request_resync(self) -> None:
        """Make the next :meth:`get` return :data:`RESYNC`."""
        self._resync = True
        self._wakeup.set()

    def _signalled(self) -> _Resync | None:
        """Raise the error given to :meth:`fail`, else RESYNC once if asked, else None."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._resync:
            self._resync = False
            return RESYNC
        return None


class StateBuffer(_Signals):
    """Holds the states a waiter has not read yet, oldest first.

    Only states newer (by ``seq``) than everything already accepted get in, so
    duplicates and late arrivals vanish. When full, the *oldest* state is dropped:
    the latest state always survives, and so does a terminal one, which is the last
    a job ever publishes. Not thread-safe; one event loop.
    """

    def __init__(self, maxsize: int = 64) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        super().__init__()
        # A list, not a deque: at most maxsize items, and an empty deque is 760 bytes.
        self._items: list[JobState] = []
        self._maxsize = maxsize
        self._last_seq = -1
        self._last_stalled = False
        self._last_completed = False
        self._dropped = 0

    def push(self, state: JobState) -> None:
        """Accept ``state`` if it is newer than anything seen, flips ``stalled``, or is
        the first terminal state (whatever its seq: a Redis that lost its data
        starts counting again, and the end of a job must never be dropped)."""
        accepted = (
            state.seq > self._last_seq
            or (state.seq == self._last_seq and state.stalled != self._last_stalled)
            or (state.completed and not self._last_completed)
        )
        if not accepted:
            return
        self._remember(state)
        if len(self._items) >= self._maxsize:
            del self._items[0]
            self._dropped += 1
        self._items.append(state)
        self._wakeup.set()

    def _remember(self, state: JobState) -> None:
        self._last_seq = state.seq
        self._last_stalled = state.stalled
        self._last_completed = state.completed

    def seen(self, state: JobState, *, reset: bool = False) -> None:
        """Record that the reader already has ``state`` (a snapshot), so older ones vanish.

        With ``reset``, ``state`` starts a new history (the record was lost and
        written anew), and it becomes the baseline even if its seq is lower. States
        already buffered stay: they may be of the new history, pushed while the
        snapshot was being read.
        """
        if reset:
            self._remember(state)
            return
        if state.seq >= self._last_seq:
            self._remember(state)
        while self._items and self._items[0].seq <= state.seq:
            del self._items[0]

    def pop_older(self, seq: int) -> list[JobState]:
        """Remove and return the buffered states older than ``seq``, oldest first."""
        older = [state for state in self._items if state.seq < seq]
        if older:
            self._items = [state for state in self._items if state.seq >= seq]
        return older

    async def get(self) -> JobState | _Resync:
        """Wait for the next state, a resync request, or an error (raised)."""
        while True:
            signal = self._signalled()
            if signal is not None:
                return signal
            if self._items:
                return self._items.pop(0)
            self._wakeup.clear()
            await self._wakeup.wait()

    def statistics(self) -> BufferStatistics:
        """Current fill, capacity, and states dropped so far."""
        return BufferStatistics(len(self._items), self._maxsize, self._dropped)
