"""What one websocket connection still has to send, bounded whatever the client does."""

from __future__ import annotations

from dataclasses import dataclass

from .. import metrics
from .._buffer import Wakeup
from .._feed import OWNER_SNAPSHOT_LIMIT
from ..state import JobState
from .protocol import AbortReply, Rejection, owner_state_frame, state_frame

__all__ = ["Outbox", "OutboxStatistics"]


@dataclass(frozen=True, slots=True)
class OutboxStatistics:
    """How full an outbox is and what it has dropped to stay bounded.

    ``jobs``: jobs with a frame waiting; ``errors``: connection-level errors waiting;
    ``replaced``: states overwritten by a newer one before they were sent;
    ``errors_dropped``: connection-level errors dropped when the queue was full;
    ``feeds``: owner feeds with a frame waiting; ``feed_dropped``: states of a
    feed dropped because more than :data:`OWNER_SNAPSHOT_LIMIT` of its jobs waited.
    """

    jobs: int
    errors: int
    replaced: int
    errors_dropped: int
    feeds: int = 0
    feed_dropped: int = 0


@dataclass(slots=True)
class _Pending:
    state: JobState | None = None
    end: Rejection | None = None


@dataclass(slots=True)
class _FeedPending:
    states: dict[str, JobState]
    end: Rejection | None = None


class Outbox:
    """The frames a connection has not sent yet: only the latest state per job.

    A newer state of a job replaces the one waiting (a client that reads slowly
    skips intermediate progress); a job's terminal state is the last of its
    subscription, so it is never replaced and so never lost. A subscription that ends
    with an error (``token_expired``) leaves that error after the job's state.
    Errors about the input itself (bad JSON, a refused subscribe) wait in a
    queue of ``max_errors``; when it is full the oldest is dropped. So the
    outbox holds at most one state and one error per followed job, plus
    ``max_errors`` errors.

    An owner's feed is kept apart, as ``owner_state`` frames: the latest state
    per job of the feed, at most :data:`OWNER_SNAPSHOT_LIMIT` jobs a feed (one
    more drops the oldest waiting state, a non-terminal one if there is one), and
    the error that ended the feed.

    One consumer (the connection's sender) calls :meth:`take`. Not thread-safe.
    """

    def __init__(self, max_errors: int = 16) -> None:
        if max_errors < 1:
            raise ValueError(f"max_errors must be at least 1, got {max_errors}")
        self._jobs: dict[str, _Pending] = {}
        self._feeds: dict[str, _FeedPending] = {}
        self._feed_dropped = 0
        # Lists, not deques, and a Wakeup, not an Event: an empty deque is 760
        # bytes, and a bridge holds one outbox per connection.
        self._errors: list[Rejection | AbortReply] = []
        self._max_errors = max_errors
        self._replaced = 0
        self._errors_dropped = 0
        self._wakeup = Wakeup()
        # Made on first use: most connections never wait for it, and an idle
        # connection's memory is what a bridge with thousands of them pays.
        self._taken: Wakeup | None = None

    def put_state(self, state: JobState) -> None:
        """Queue ``state``, replacing the job's waiting state unless that one is terminal.

        States come from one follower per job, in the order the job had them, so
        the last one given is the newest, whatever its ``seq``: after Redis lost a
        job's history, ``seq`` counts again from 1. A terminal state is the last
        of a subscription: it is never replaced and nothing is queued after it.
        """
        pending = self._jobs.setdefault(state.job_id, _Pending())
        if pending.state is not None:
            if pending.state.completed:
                return
            self._replaced += 1
            metrics.state_coalesced()
        pending.state = state
        self._wakeup.set()

    def end(self, rejection: Rejection) -> None:
        """Queue the error that ended the subscription to ``rejection.job_id``.

        Ignored while the job's terminal state waits: that state already ended it.
        """
        assert rejection.job_id is not None, "a subscription's end names its job"
        pending = self._jobs.setdefault(rejection.job_id, _Pending())
        if pending.state is not None and pending.state.completed:
            return
        pending.end = rejection
        metrics.error(rejection.code)
        self._wakeup.set()

    def put_owner_state(self, owner: str, state: JobState) -> None:
        """Queue ``state`` on ``owner``'s feed, replacing the job's waiting state."""
        pending = self._feeds.setdefault(owner, _FeedPending({}))
        states = pending.states
        if state.job_id in states:
            self._replaced += 1
            del states[state.job_id]  # to the end: the order is that of the changes
        elif len(states) >= OWNER_SNAPSHOT_LIMIT:
            going = next((job for job, s in states.items() if not s.completed), None)
            del states[going if going is not None else next(iter(states))]
            self._feed_dropped += 1
        states[state.job_id] = state
        self._wakeup.set()

    def end_owner(self, rejection: Rejection) -> None:
        """Queue the error that ended the feed of ``rejection.owner``."""
        assert rejection.owner is not None, "a feed's end names its owner"
        self._feeds.setdefault(rejection.owner, _FeedPending({})).end = rejection
        self._wakeup.set()

    def discard_owner(self, owner: str) -> None:
        """Forget everything waiting for ``owner``'s feed (the client unsubscribed)."""
        self._feeds.pop(owner, None)

    def owners(self) -> set[str]:
        """The owner feeds with something waiting to be sent."""
        return set(self._feeds)

    def reject(self, rejection: Rejection) -> None:
        """Queue an error about the client's input; the oldest goes when full."""
        metrics.error(rejection.code)
        self._answer(rejection)

    def reply(self, reply: AbortReply) -> None:
        """Queue the answer to a request (an ``abort``), with the input's errors."""
        self._answer(reply)

    def _answer(self, answer: Rejection | AbortReply) -> None:
        if len(self._errors) >= self._max_errors:
            del self._errors[0]
            self._errors_dropped += 1
        self._errors.append(answer)
        self._wakeup.set()

    def discard(self, job_id: str) -> None:
        """Forget everything waiting for ``job_id`` (the client unsubscribed)."""
        self._jobs.pop(job_id, None)

    def jobs(self) -> set[str]:
        """The jobs with something waiting to be sent."""
        return set(self._jobs)

    async def take(self) -> list[str]:
        """Wait until something is waiting, then return every waiting frame, in order.

        Errors about input come first, then each job's state and end, jobs in
        the order they first had something waiting, then each feed's states and end.
        """
        while not (self._jobs or self._errors or self._feeds):
            self._wakeup.clear()
            await self._wakeup.wait()
        frames = [rejection.frame() for rejection in self._errors]
        for pending in self._jobs.values():
            if pending.state is not None:
                frames.append(state_frame(pending.state))
            if pending.end is not None:
                frames.append(pending.end.frame())
        for owner, feed in self._feeds.items():
            frames.extend(owner_state_frame(owner, state) for state in feed.states.values())
            if feed.end is not None:
                frames.append(feed.end.frame())
        self._errors.clear()
        self._jobs.clear()
        self._feeds.clear()
        if self._taken is not None:
            self._taken.set()
        return frames

    async def taken(self, job_id: str) -> None:
        """Return once nothing of ``job_id`` waits any more (the sender took it).

        Any number of subscriptions may wait at once; one :meth:`take` wakes them all.
        """
        while job_id in self._jobs:
            if self._taken is None:
                self._taken = Wakeup()
            self._taken.clear()
            await self._taken.wait()

    def statistics(self) -> OutboxStatistics:
        """Current fill and what was dropped so far."""
        return OutboxStatistics(
            len(self._jobs),
            len(self._errors),
            self._replaced,
            self._errors_dropped,
            len(self._feeds),
            self._feed_dropped,
        )
