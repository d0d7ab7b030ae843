"""StateBuffer: bounded, seq-ordered, the latest and the terminal state always kept."""

from __future__ import annotations

import asyncio
import contextlib

from immortus_async import JobState, JobStatus
from immortus_async._buffer import RESYNC, StateBuffer, Wakeup
from immortus_async._follow import follow


def state(seq: int, status: JobStatus = JobStatus.STARTED) -> JobState:
    return JobState(job_id="b", status=status, seq=seq, progress=None)


async def test_bounded_drops_oldest_keeps_terminal() -> None:
    """A full buffer drops the oldest states; the last (terminal) one survives."""
    buffer = StateBuffer(maxsize=3)
    for seq in range(1, 100):
        buffer.push(state(seq))
    buffer.push(state(100, JobStatus.FINISHED))
    stats = buffer.statistics()
    assert (stats.size, stats.maxsize, stats.dropped) == (3, 3, 97)
    got = [await buffer.get() for _ in range(3)]
    assert [s.seq for s in got if isinstance(s, JobState)] == [98, 99, 100]


async def test_old_and_duplicate_states_are_ignored() -> None:
    """Only states newer than everything seen get in."""
    buffer = StateBuffer()
    buffer.seen(state(5))
    for seq in (3, 5, 6, 6, 4):
        buffer.push(state(seq))
    assert buffer.statistics().size == 1


async def test_state_pushed_during_a_reset_is_kept() -> None:
    """After Redis lost the record, a state that arrived while re-reading is not lost."""
    buffer = StateBuffer()
    buffer.seen(state(7))
    buffer.request_resync()
    assert await buffer.get() is RESYNC
    buffer.push(state(1, JobStatus.FINISHED))  # the new history's first state
    buffer.seen(JobState(job_id="b"), reset=True)  # the snapshot read: unknown
    got = await buffer.get()
    assert isinstance(got, JobState) and got.status is JobStatus.FINISHED


async def test_wakeup_is_an_event_for_one_waiter() -> None:
    """Wakeup: wait() returns at once when set, else when set() is called."""
    import asyncio

    from immortus_async._buffer import Wakeup

    wakeup = Wakeup()
    wakeup.set()
    await wakeup.wait()
    wakeup.clear()
    assert not wakeup.is_set()
    waiter = asyncio.create_task(wakeup.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    wakeup.set()
    await asyncio.wait_for(waiter, 1)


async def test_wakeup_wakes_every_waiting_task() -> None:
    """Several tasks wait on one Wakeup: set() wakes them all; a cancelled one leaves
    the others waiting."""
    wakeup = Wakeup()
    waiters = [asyncio.create_task(wakeup.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0)
    assert waiters[0].cancelled() and not any(w.done() for w in waiters[1:])
    wakeup.set()
    await asyncio.wait_for(asyncio.gather(*waiters[1:]), 1)


async def test_a_recheck_racing_a_push_skips_no_change() -> None:
    """A state pushed while a recheck reads a newer snapshot is still yielded, in order."""
    buffer = StateBuffer()
    snapshots = iter([state(1), state(3)])

    async def read() -> JobState:
        snapshot = next(snapshots)
        if snapshot.seq == 3:
            buffer.push(state(2))  # published while the snapshot was being read
        return snapshot

    states = follow("j", contextlib.nullcontext(), buffer, read, recheck=lambda s: 0.0)
    seen = [(await anext(states)).seq for _ in range(3)]
    await states.aclose()
    assert seen == [1, 2, 3]
