"""RedisPubSubStrategy against a real Redis: atomic updates, TTL, tombstone, parity."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from immortus_async import (
    InvalidStateError,
    JobState,
    JobStatus,
    JobUpdate,
    MemoryStrategy,
    RedisPubSubStrategy,
    RedisServer,
    Tracker,
)
from immortus_async.state import utcnow

from .test_status import TRANSITIONS
from .utils import wait_until

S = JobStatus


def update(job_id: str, status: JobStatus, attempt: int = 1, **fields: object) -> JobUpdate:
    return JobUpdate(job_id=job_id, status=status, attempt=attempt, **fields)  # type: ignore[arg-type]


async def test_late_started_after_finished_is_dropped(redis: Redis) -> None:
    """A late `started` after `finished` changes nothing, and seq only grows."""
    strategy = RedisPubSubStrategy(redis)
    seqs = []
    for status in (S.QUEUED, S.STARTED, S.FINISHED):
        state = await strategy.apply(update("j", status, attempt=0 if status is S.QUEUED else 1))
        assert state is not None
        seqs.append(state.seq)
    assert seqs == [1, 2, 3]
    assert await strategy.apply(update("j", S.STARTED)) is None
    assert await strategy.apply(update("j", S.STARTED, attempt=2)) is None
    now = await strategy.status("j")
    assert (now.status, now.seq, now.progress) == (S.FINISHED, 3, 1.0)


async def test_each_update_is_published_with_the_full_state(redis: Redis) -> None:
    """Every accepted update PUBLISHes the state JSON; a dropped one publishes nothing."""
    strategy = RedisPubSubStrategy(redis)
    pubsub = redis.pubsub()
    await pubsub.subscribe(strategy.keys.channel("p"))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    await strategy.apply(update("p", S.STARTED, progress=0.5, meta={"rows": [], "n": 1}))
    await strategy.apply(update("p", S.QUEUED, attempt=0))  # backwards: dropped
    await strategy.apply(update("p", S.FAILED, error="boom"))
    received = []
    while len(received) < 2:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None, "a published state never arrived"
        received.append(JobState.from_json(message["data"]))
    assert [(s.status, s.seq) for s in received] == [(S.STARTED, 1), (S.FAILED, 2)]
    assert received[0].meta == {"rows": [], "n": 1}  # an empty list stays a list
    assert received[1].error == "boom" and received[1].completed
    assert json.loads(received[1].to_json())["completed"] is True
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05) is None
    await pubsub.aclose()


async def test_ttl_starts_at_terminal_state_and_expired_differs_from_unknown(
    redis: Redis,
) -> None:
    """TTL is set at the terminal state; past it the job reads expired; a new id unknown."""
    strategy = RedisPubSubStrategy(redis, ttl=0.2, tombstone_ttl=60)
    await strategy.apply(update("t", S.STARTED))
    running_ttl = await redis.pttl(strategy.keys.record("t"))
    assert running_ttl > 1000 * 60  # the long active TTL, not the terminal one
    await strategy.apply(update("t", S.FINISHED))
    assert 0 < await redis.pttl(strategy.keys.record("t")) <= 200
    assert await redis.pttl(strategy.keys.tombstone("t")) > 1000
    expired = await wait_until(
        lambda: _status_if(strategy, "t", S.EXPIRED), timeout=5, message="the record to expire"
    )
    assert expired.completed and expired.seq > 2
    assert (await strategy.status("never-seen")).status is S.UNKNOWN
    assert await strategy.apply(update("t", S.STARTED, attempt=2)) is None


async def _status_if(strategy: RedisPubSubStrategy, job_id: str, status: JobStatus):  # type: ignore[no-untyped-def]
    state = await strategy.status(job_id)
    return state if state.status is status else None


async def test_completed_on_expired_job_returns_expired(redis: Redis) -> None:
    """completed() on an expired job returns the expired state, it does not raise."""
    strategy = RedisPubSubStrategy(redis, ttl=0.05)
    await strategy.apply(update("e", S.FINISHED))
    await wait_until(lambda: _status_if(strategy, "e", S.EXPIRED), timeout=5)
    async with Tracker(redis, tracking_strategy=strategy) as tracker:
        state = await tracker.completed("e", timeout=5)
    assert state.status is S.EXPIRED


WRITABLE = [row for row in TRANSITIONS if S.EXPIRED not in row and row[2] is not S.UNKNOWN]


@pytest.mark.parametrize(("current", "ca", "new", "na", "accepted"), WRITABLE)
async def test_lua_script_follows_the_transition_table(
    redis: Redis, current: JobStatus, ca: int, new: JobStatus, na: int, accepted: bool
) -> None:
    """The Lua script accepts and drops exactly what is_forward does."""
    strategy = RedisPubSubStrategy(redis)
    if current is not S.UNKNOWN:
        await strategy.apply(update("x", current, attempt=ca))
    result = await strategy.apply(update("x", new, attempt=na))
    assert (result is not None) is accepted


async def test_lua_and_memory_agree_on_a_long_history(redis: Redis) -> None:
    """The same updates through Lua and through apply_update give the same states."""
    history = [
        update("h", S.QUEUED, attempt=0, function="f", meta={"a": 1}),
        update("h", S.STARTED, progress=0.1),
        update("h", S.STARTED, progress=0.2, meta={"b": [1, 2], "a": None}),
        update("h", S.QUEUED, attempt=0),
        update("h", S.RETRYING, error="try again"),
        update("h", S.STARTED, attempt=2),
        update("h", S.STARTED, attempt=1),
        update("h", S.STARTED, attempt=2, progress=1 / 3),
        update("h", S.FAILED, attempt=2, error="no"),
        update("h", S.FINISHED, attempt=2),
    ]
    lua, memory = RedisPubSubStrategy(redis), MemoryStrategy()
    for item in history:
        a, b = await lua.apply(item), await memory.apply(item)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            # Lua keeps 14 significant digits of a float.
            assert a.to_dict() | {"progress": None} == b.to_dict() | {"progress": None}
            assert a.progress == pytest.approx(b.progress)
    assert (await lua.status("h")).to_dict() == (await memory.status("h")).to_dict() | {
        "progress": (await lua.status("h")).progress
    }


async def test_corrupt_record_raises_clear_error(redis: Redis) -> None:
    """A record with malformed JSON or a bad status raises InvalidStateError."""
    strategy = RedisPubSubStrategy(redis)
    await redis.hset(strategy.keys.record("bad"), mapping={"state": "{oops", "meta": "{}"})
    with pytest.raises(InvalidStateError, match="not valid JSON"):
        await strategy.status("bad")
    await redis.hset(
        strategy.keys.record("bad2"),
        mapping={"state": '{"job_id": "bad2", "status": "exploded"}', "meta": "{}"},
    )
    with pytest.raises(InvalidStateError, match="exploded"):
        await strategy.status("bad2")


async def test_one_round_trip_per_update(redis: Redis) -> None:
    """An update costs one EVALSHA and nothing else (after the script is cached)."""
    strategy = RedisPubSubStrategy(redis)
    await strategy.apply(update("warm", S.STARTED))
    await redis.config_resetstat()
    for status in (S.STARTED, S.STARTED, S.FINISHED):
        await strategy.apply(update("r", status))
    stats = await redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
    # Redis counts the commands a script runs too; those are what the script may run.
    inside_script = {"hmget", "exists", "get", "hdel", "hset", "pexpire", "set", "publish"}
    outside = {name: n for name, n in calls.items() if name not in inside_script}
    outside.pop("config|resetstat", None)
    assert outside == {"evalsha": 3}
    assert calls["publish"] == 3


async def test_started_update_carries_the_first_heartbeat(redis: Redis) -> None:
    """apply(started, stalled_after=...) records the beat in the same round trip."""
    strategy = RedisPubSubStrategy(redis)
    record = strategy.keys.record("hb")
    await strategy.apply(update("hb", S.QUEUED, attempt=0), stalled_after=1.0)
    assert await redis.hget(record, "hb") is None  # only a started job beats
    await strategy.apply(update("hb", S.STARTED), stalled_after=1.0)
    assert (await redis.hget(record, "hb") or b"").startswith(b"1:1000:")
    assert (await strategy.status("hb")).stalled is False


class _RacedFallback:
    """A fallback whose read races a write of the job's own (its end, written meanwhile)."""

    def __init__(self, writer: RedisPubSubStrategy) -> None:
        self._writer = writer

    async def status(self, job_id: str) -> JobState:
        await self._writer.apply(update(job_id, S.ABORTED))
        return JobState(job_id=job_id, status=S.QUEUED, seq=1)


async def test_a_fallback_read_raced_by_the_job_side_reads_the_newer_record(redis: Redis) -> None:
    """When the job side writes while the fallback is read, status() returns that write,
    not the stale "unknown" from before it (which made completed() raise JobNotFound)."""
    writer = RedisPubSubStrategy(redis)
    strategy = RedisPubSubStrategy(redis, fallback=_RacedFallback(writer))
    state = await strategy.status("raced")
    assert (state.status, state.seq) == (S.ABORTED, 1)


async def test_a_result_travels_verbatim_in_the_finished_state(redis: Redis) -> None:
    """A finished update's result is in the published and the stored state, exactly
    as given (an empty list stays a list, a long int keeps its digits)."""
    strategy = RedisPubSubStrategy(redis)
    pubsub = redis.pubsub()
    await pubsub.subscribe(strategy.keys.channel("res"))
    await pubsub.get_message(timeout=1)
    result = {"rows": [], "total": 12345678901234567890, "name": "é"}
    await strategy.apply(update("res", S.STARTED))
    finished = await strategy.apply(update("res", S.FINISHED, result=result))
    assert finished is not None and finished.result == result
    assert (await strategy.status("res")).result == result
    published = []
    while len(published) < 2:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None
        published.append(JobState.from_json(message["data"]))
    assert [state.result for state in published] == [None, result]


async def test_lua_and_memory_agree_on_a_new_run_of_an_id(redis: Redis) -> None:
    """A queued update with `since` after the record ended starts the id afresh, with
    seq going on; one with `since` before that end, or none, is dropped."""
    lua, memory = RedisPubSubStrategy(redis), MemoryStrategy()
    first = [
        update("n", S.QUEUED, attempt=0, meta={"a": 1}),
        update("n", S.STARTED),
        update("n", S.FINISHED, result=[1]),
    ]
    for item in first:
        await lua.apply(item)
        await memory.apply(item)
    ended = (await lua.status("n")).finished_at
    assert ended is not None
    before = update("n", S.QUEUED, attempt=0, since=ended - timedelta(seconds=1))
    plain = update("n", S.QUEUED, attempt=0)
    for stale in (before, plain):
        assert await lua.apply(stale) is None and await memory.apply(stale) is None
    again = update("n", S.QUEUED, attempt=0, since=ended + timedelta(milliseconds=1))
    a, b = await lua.apply(again), await memory.apply(again)
    assert a is not None and b is not None
    assert a.to_dict() == b.to_dict()
    assert (a.status, a.seq, a.meta, a.result, a.attempt) == (S.QUEUED, 4, {}, None, 0)
    assert a.started_at is None and a.finished_at is None
    started = await lua.apply(update("n", S.STARTED))
    assert started is not None and started.status is S.STARTED


async def test_a_new_run_of_an_expired_id_goes_on_from_its_tombstone(redis: Redis) -> None:
    """Past its record's TTL an id reads expired; an enqueue with `since` starts it
    again, with a seq above the expired one."""
    strategy = RedisPubSubStrategy(redis, ttl=0.05, tombstone_ttl=60)
    await strategy.apply(update("e", S.FINISHED))

    async def gone() -> bool:
        return not await redis.exists(strategy.keys.record("e"))

    await wait_until(gone, message="the record's TTL to pass")
    expired = await strategy.status("e")
    assert expired.status is S.EXPIRED
    assert await strategy.apply(update("e", S.QUEUED, attempt=0)) is None
    again = await strategy.apply(update("e", S.QUEUED, attempt=0, since=utcnow()))
    assert again is not None and again.status is S.QUEUED and again.seq > expired.seq


def _calls(stats: dict[str, Any]) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


async def test_readers_that_come_at_once_share_one_script_load(redis: Redis) -> None:
    """The first of 50 readers in a new process runs the read script alone (NOSCRIPT,
    SCRIPT LOAD, EVALSHA); the other 49 wait for it and send one EVALSHA each, rather
    than each being told NOSCRIPT and loading the script itself."""
    strategy = RedisPubSubStrategy(redis)
    await redis.config_resetstat()
    states = await asyncio.gather(*(strategy.status(f"r{i}") for i in range(50)))
    calls = _calls(await redis.info("commandstats"))
    await strategy.aclose()
    assert {state.status for state in states} == {S.UNKNOWN}
    assert (calls.get("script|load"), calls.get("evalsha")) == (1, 51)


@pytest.mark.parametrize("lost", ["flushed", "restarted"])
async def test_a_waiter_reads_its_state_after_the_script_cache_is_lost(
    redis_server: RedisServer, lost: str
) -> None:
    """Redis forgets the loaded scripts (SCRIPT FLUSH, or a restart): the readers that
    find it missing load it once between them, and a waiter still gets its state."""
    reader = RedisPubSubStrategy(redis_server.url)
    tracker = Tracker(redis_server.url, tracking_strategy=reader)
    writer = RedisPubSubStrategy(redis_server.url)
    client = Redis.from_url(redis_server.url)
    try:
        await writer.apply(update("w", S.STARTED))
        assert (await tracker.status("w")).status is S.STARTED  # the scripts known
        if lost == "flushed":
            await client.script_flush()
        else:
            redis_server.restart()
        await writer.apply(update("w", S.FINISHED))
        await client.config_resetstat()
        states = await asyncio.gather(*(tracker.status("w") for _ in range(20)))
        async with asyncio.timeout(10):
            done = await tracker.completed("w")
        calls = _calls(await client.info("commandstats"))
    finally:
        await tracker.aclose()
        await reader.aclose()
        await writer.aclose()
        await client.aclose()
    assert {state.status for state in states} == {S.FINISHED}
    assert done.status is S.FINISHED
    assert calls.get("script|load") == 1
