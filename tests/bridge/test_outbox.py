"""The per-connection outbox: latest state per job, terminal never lost, bounded."""

from __future__ import annotations

import asyncio
import json

import pytest

from immortus_async import JobState, JobStatus
from immortus_async.bridge import ErrorCode, Outbox, Rejection

S = JobStatus


def _state(job_id: str, seq: int, status: JobStatus = S.STARTED) -> JobState:
    return JobState(job_id=job_id, status=status, seq=seq, progress=None)


async def _take(outbox: Outbox) -> list[dict[str, object]]:
    return [json.loads(frame) for frame in await asyncio.wait_for(outbox.take(), 1)]


async def test_only_the_latest_state_of_a_job_waits() -> None:
    """Ten states of one job while nobody reads: one frame, the newest; order of jobs kept."""
    outbox = Outbox()
    outbox.put_state(_state("a", 1))
    outbox.put_state(_state("b", 1))
    for seq in range(2, 11):
        outbox.put_state(_state("a", seq))
    frames = await _take(outbox)
    assert [(f["job_id"], f["seq"]) for f in frames] == [("a", 10), ("b", 1)]
    stats = outbox.statistics()
    assert (stats.jobs, stats.replaced) == (0, 9)


async def test_the_terminal_state_is_never_replaced_or_lost() -> None:
    """Progress then finished while nobody reads: the finished state is what is sent."""
    outbox = Outbox()
    for seq in range(1, 1000):
        outbox.put_state(_state("a", seq))
    outbox.put_state(_state("a", 1000, S.FINISHED))
    [frame] = await _take(outbox)
    assert (frame["status"], frame["seq"]) == ("finished", 1000)


async def test_a_terminal_state_with_a_lower_seq_is_kept() -> None:
    """After Redis lost a job's history its seq counts from 1 again: the new history's
    states, the terminal one above all, replace a waiting state with a higher seq."""
    outbox = Outbox()
    outbox.put_state(_state("a", 7))
    outbox.put_state(_state("a", 1))
    outbox.put_state(_state("a", 2, S.FINISHED))
    [frame] = await _take(outbox)
    assert (frame["status"], frame["seq"]) == ("finished", 2)


async def test_nothing_is_queued_after_a_terminal_state() -> None:
    """While a job's terminal state waits, a later state or a subscription's end is
    ignored: the terminal state is the last frame of its subscription."""
    outbox = Outbox()
    outbox.put_state(_state("a", 3, S.FINISHED))
    outbox.put_state(_state("a", 4))
    outbox.end(Rejection(ErrorCode.TOKEN_EXPIRED, "m", "a"))
    frames = await _take(outbox)
    assert [(f["type"], f.get("status")) for f in frames] == [("state", "finished")]


async def test_a_subscriptions_end_follows_its_last_state() -> None:
    """token_expired is sent after the job's waiting state; discard drops both."""
    outbox = Outbox()
    outbox.put_state(_state("a", 3))
    outbox.end(Rejection(ErrorCode.TOKEN_EXPIRED, "m", "a"))
    outbox.put_state(_state("b", 1))
    outbox.end(Rejection(ErrorCode.TOKEN_EXPIRED, "m", "b"))
    outbox.discard("b")
    assert outbox.jobs() == {"a"}
    frames = await _take(outbox)
    assert [f["type"] for f in frames] == ["state", "error"]


async def test_input_errors_are_bounded_oldest_dropped() -> None:
    """A client that sends garbage and never reads holds at most max_errors errors."""
    outbox = Outbox(max_errors=4)
    for n in range(10):
        outbox.reject(Rejection(ErrorCode.INVALID_JSON, f"error {n}"))
    assert outbox.statistics().errors_dropped == 6
    frames = await _take(outbox)
    assert [f["message"] for f in frames] == ["error 6", "error 7", "error 8", "error 9"]


async def test_take_waits_for_something_to_send() -> None:
    """take() blocks while empty and wakes on the first put."""
    outbox = Outbox()
    waiter = asyncio.ensure_future(outbox.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    outbox.put_state(_state("a", 1))
    assert len(await asyncio.wait_for(waiter, 1)) == 1


def test_max_errors_must_be_positive() -> None:
    """A zero-sized error queue is a configuration mistake."""
    with pytest.raises(ValueError, match="max_errors"):
        Outbox(max_errors=0)


async def test_taken_returns_once_the_sender_has_the_jobs_frame() -> None:
    """taken(job) waits while the job's state waits, and returns once take() has it."""
    outbox = Outbox()
    await outbox.taken("7")  # nothing waiting: at once
    outbox.put_state(_state("7", 3, S.FINISHED))
    waiter = asyncio.create_task(outbox.taken("7"))
    await asyncio.sleep(0)
    assert not waiter.done()
    assert [frame["seq"] for frame in await _take(outbox)] == [3]
    await asyncio.wait_for(waiter, 1)


async def test_several_jobs_wait_for_taken_at_once() -> None:
    """Subscriptions whose jobs end together all wait in taken(); one take() releases
    every one of them."""
    outbox = Outbox()
    jobs = [str(n) for n in range(5)]
    for job_id in jobs:
        outbox.put_state(_state(job_id, 3, S.FINISHED))
    waiters = [asyncio.create_task(outbox.taken(job_id)) for job_id in jobs]
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)
    assert len(await _take(outbox)) == len(jobs)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)


async def test_a_feed_waits_as_the_latest_state_per_job_bounded() -> None:
    """A feed's states coalesce per job; past the cap the oldest non-terminal goes first,
    so a job's end waits while a slow client falls behind on a busy owner."""
    from immortus_async._feed import OWNER_SNAPSHOT_LIMIT

    outbox = Outbox()
    outbox.put_owner_state("ada", _state("done", 2, S.FINISHED))
    for n in range(OWNER_SNAPSHOT_LIMIT + 20):
        outbox.put_owner_state("ada", _state(f"job-{n}", 1))
        outbox.put_owner_state("ada", _state(f"job-{n}", 2))
    outbox.put_owner_state("bob", _state("theirs", 1))
    waiting = outbox.statistics()
    assert (waiting.feeds, waiting.feed_dropped) == (2, 21)  # 121 jobs, 100 kept
    frames = await _take(outbox)
    ada = [f for f in frames if f["owner"] == "ada"]
    assert len(ada) == OWNER_SNAPSHOT_LIMIT
    assert {f["type"] for f in frames} == {"owner_state"}
    assert ada[0]["job_id"] == "done" and all(f["seq"] == 2 for f in ada)
    assert [f["job_id"] for f in frames if f["owner"] == "bob"] == ["theirs"]
