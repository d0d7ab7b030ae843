"""``"redis_pub_sub"``: state in one Redis hash per job, every change published."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from .. import config
from .._buffer import StateBuffer
from .._closing import close_all
from .._feed import OWNER_SNAPSHOT_LIMIT, FeedBuffer, decode_feed_message, follow_owner
from .._follow import follow, retrying
from .._key_watch import KeyWatch, tracked_read
from .._pipe import ScriptPipe
from .._pubsub import connection_factory
from .._redis import Client, is_cluster
from .._script import SharedScript, raced
from ..exceptions import InvalidStateError
from ..keys import DEFAULT_PREFIX, Keys
from ..state import JobState, JobUpdate, _wire_json
from ..status import JobStatus, is_forward
from ._connected import Connected
from .base import StateReader

__all__ = ["RedisPubSubStrategy"]

_SCRIPT = resources.files(__package__).joinpath("redis_pub_sub.lua").read_text()

# On a Redis Cluster the same script publishes with SPUBLISH: the job's channel is
# in its keys' slot (keys.py), so only that shard's subscribers are sent the state.
# A plain PUBLISH there would cross the cluster bus to every node, for every change.
_PUBLISH = "redis.call('PUBLISH', ARGV[1], wire)"
assert _SCRIPT.count(_PUBLISH) == 1, "redis_pub_sub.lua must publish the state once"
_SHARDED_SCRIPT = _SCRIPT.replace(_PUBLISH, "redis.call('SPUBLISH', ARGV[1], wire)")

# The heartbeat rides on the job's own hash: a field "<attempt>:<stalled_after ms>:
# <TTL ms>" and the hash's TTL, refreshed together. Time since the last beat is then
# TTL ms - PTTL, measured by Redis alone: no clock of ours is compared with another.
_HEARTBEAT = """
local stored = redis.call('HGET', KEYS[1], 'state')
if not stored then return 0 end
local state = cjson.decode(stored)
if state.status ~= 'started' or state.attempt ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'hb', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# A watcher's read of a job's record, in one command (its snapshot, and every
# re-read): the hash's fields, its TTL (for the heartbeat) and the tombstone.
_READ = """
local r = redis.call('HMGET', KEYS[1], 'state', 'meta', 'hb', 'result')
return {r[1], r[2], r[3], r[4], redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}
"""


# A fallback that cannot push is read at its interval, growing by half with each
# read that finds the job where it was, up to this: many waiters on jobs that sit in
# a queue stay cheap, and a job the queue ends on its own is still seen within it.
_POLL_MAX = 2.0

# The heartbeats announced by the `started` messages of the jobs followed here:
# job id -> (attempt, seconds to stale, loop time the message arrived). Filled by
# the channels' decoder (one per channel, whichever strategy subscribed it first),
# emptied as the last watcher of a job leaves.
_announced: dict[str, tuple[int, float, float]] = {}
_following: Counter[str] = Counter()


def _decode_message(payload: bytes) -> JobState:
    """A job's published state; a ``started`` one's heartbeat noted in ``_announced``."""
    data = _wire_json(payload)
    state = JobState.from_dict(data)
    if state.status is JobStatus.STARTED and state.job_id in _following:
        try:
            attempt, stalled_ms, _ = (int(part) for part in str(data.get("hb")).split(":"))
        except (ValueError, TypeError, AttributeError):
            return state
        if attempt == state.attempt:
            # Fresh as it arrives: the beat rode on this very write.
            _announced[state.job_id] = (attempt, stalled_ms / 1000, _now())
    return state


# A change of the queue's records that the job side reports itself (arq marks a job
# in progress as @tracked writes `started`) needs no re-read: it is read only if no
# `started` state with a heartbeat is pushed within this many seconds of it.
_SETTLE = 0.02


class _Settling:
    """The sink of a job's channel, and what the fallback nudges: a nudge re-reads
    the job after ``_SETTLE`` unless a beating ``started`` state was pushed meanwhile.

    Such a push proves the job side alive and reporting; what the queue did on its
    own at that very moment is then read at the heartbeat's deadline at the latest.
    Any other state (``retrying``: arq may end the job at its next try, on its own)
    is read again, and so is the next state pushed that is not such a beat after a
    read was skipped: the queue's records re-read (which tracks their keys again,
    see :meth:`KeyWatch.read`) once the job side stops saying where the job is.
    """

    # One of each per waiter (a bridge holds thousands): no __dict__.
    __slots__ = ("_beating", "_job_id", "_pushes", "_skipped", "_timer", "buffer", "unconfirmed")

    def __init__(self, job_id: str, buffer: StateBuffer) -> None:
        self._job_id = job_id
        self.buffer = buffer
        self.unconfirmed: _Unconfirmed | None = None
        self._pushes = 0
        self._beating = False  # the last state pushed is started, with a heartbeat
        self._skipped = False  # a nudge was answered by the job side's beat alone
        self._timer: asyncio.TimerHandle | None = None

    def push(self, item: Any) -> None:
        self._pushes += 1
        announced = _announced.get(self._job_id)
        self._beating = (
            isinstance(item, JobState)
            and item.status is JobStatus.STARTED
            and announced is not None
            and announced[0] == item.attempt
        )
        if self.unconfirmed is not None:
            self.unconfirmed.pushed(item)
        self.buffer.push(item)
        if self._skipped and not self._beating:
            self._skipped = False
            self.nudge()

    def fail(self, error: BaseException) -> None:
        self.buffer.fail(error)

    def request_resync(self) -> None:
        """What the hub asks after a reconnection: at once."""
        self.buffer.request_resync()

    def nudge(self) -> None:
        if self._timer is None:
            seen = self._pushes
            self._timer = asyncio.get_running_loop().call_later(_SETTLE, self._settled, seen)

    def _settled(self, seen: int) -> None:
        self._timer = None
        self._skipped = self._pushes != seen and self._beating
        if not self._skipped:
            self.buffer.request_resync()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _Nudged:
    """What the fallback's ``changes`` is given in place of the buffer."""

    __slots__ = ("_settling",)

    def __init__(self, settling: _Settling) -> None:
        self._settling = settling

    def request_resync(self) -> None:
        self._settling.nudge()

    def request_resync_now(self) -> None:
        """The queue ended the job (its result written): nothing to wait for."""
        self._settling.request_resync()

    def fail(self, error: BaseException) -> None:
        self._settling.fail(error)


class _Unconfirmed:
    """Whether a waiter's snapshot, read before its channel's subscription was
    confirmed, may have missed a change: the first state in one round trip.

    The snapshot is read on a client-side caching connection while the SUBSCRIBE is
    on its way (:func:`~immortus_async._key_watch.tracked_read`), so a write after
    the read and before the subscription took effect, whose message is lost, is
    announced by an invalidation (this is its sink). The job is then read again
    unless a message newer than the snapshot arrives within ``_SETTLE`` (a newer
    state holds all of it: the changes in between are superseded, an end is never
    followed by another state). A snapshot read without tracking, or in a caching
    connection that has since been lost, is read again once the subscription is
    confirmed. Reads made after that need none of this.
    """

    __slots__ = ("_buffer", "_pushed", "_read", "_reading", "_timer", "_watch", "live")

    def __init__(self, buffer: StateBuffer, watch: KeyWatch) -> None:
        self.live = False  # the subscription is confirmed
        self._buffer = buffer
        self._watch = watch
        self._reading = 0  # reads issued before it was, still in flight
        self._read: tuple[int | None, int] | None = None  # (generation, seq) of the last such read
        self._pushed = -1  # the newest seq pushed on the channel
        self._timer: asyncio.TimerHandle | None = None

    def pushed(self, item: Any) -> None:
        if isinstance(item, JobState):
            self._pushed = max(self._pushed, item.seq)
            if self._read is not None and not self._reading and item.seq > self._read[1]:
                # Written after the subscription took effect: whatever the read
                # could have missed is older, and this holds all of it.
                self._read = None

    def issued(self) -> bool:
        """A read is issued: True if it is one to track (made before the subscription)."""
        if self.live:
            return False
        self._reading += 1
        return True

    def answered(self, generation: int | None, seq: int) -> None:
        """The tracked read issued last is answered: in ``generation`` (None: untracked)."""
        self._reading -= 1
        self._read = (generation, seq)
        if self.live and not self._reading:
            self._check()

    def safe(self) -> None:
        """A read made after the subscription was confirmed: nothing was missed before it."""
        self._read = None

    def confirmed(self) -> None:
        self.live = True
        if not self._reading and self._read is not None:
            self._check()

    def _check(self) -> None:
        assert self._read is not None
        generation = self._read[0]
        if generation is None or not self._watch.connected or self._watch.generation != generation:
            self._read = None
            self._buffer.request_resync()

    def request_resync(self) -> None:
        """The record changed after a tracked read (or caching reconnected, or is off)."""
        if self._read is None and not self._reading:
            return
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_SETTLE, self._settled)

    def _settled(self) -> None:
        self._timer = None
        if self._reading or (self._read is not None and self._pushed <= self._read[1]):
            self._buffer.request_resync()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@dataclass(slots=True)
class _Recheck:
    """When a watcher must read its job again though nothing was published.

    Only a ``started`` job whose worker beats is read again, once its heartbeat
    may have gone stale: the deadline comes from the last read (its ``hb`` field
    and TTL) or from the ``started`` message, which carries the heartbeat. A job
    that ends first costs no read; one that runs past the deadline one read per
    deadline, which tells the next.
    """

    job_id: str
    poll: float | None = None  # the fallback's polling interval; None when it pushes
    read: JobState | None = None  # what the last read returned
    stale_at: float | None = None  # loop time at which its heartbeat goes stale
    read_at: float = 0.0  # loop time of the last read
    reads: int = 0  # reads since the watcher's (status, attempt) last changed
    step: tuple[JobStatus, int] | None = None

    def seen(self, state: JobState, stale_in: float | None) -> None:
        self.read = state
        self.read_at = _now()
        self.stale_at = None if stale_in is None else self.read_at + stale_in
        self.reads += 1

    def next(self, state: JobState) -> float | None:
        """Seconds until the next read, given the state the watcher has now."""
        if state.completed:
            return None
        if (state.status, state.attempt) != self.step:
            self.step, self.reads = (state.status, state.attempt), 0
        waits = []
        beating = False
        if state.status is JobStatus.STARTED:
            stale_at = None
            read = self.read
            if read is not None and read.attempt == state.attempt:
                stale_at = self.stale_at
            announced = _announced.get(self.job_id)
            if announced is not None and announced[0] == state.attempt:
                _, stale_in, at = announced
                if stale_at is None or at > self.read_at:
                    stale_at = at + stale_in
            if stale_at is not None:
                waits.append(max(stale_at - _now(), 0.0) + 0.01)
                # A job whose worker beats needs no polling: that worker writes its end.
                beating = not state.stalled
        if self.poll is not None and not beating:
            waits.append(min(self.poll * 1.5**self.reads, max(self.poll, _POLL_MAX)))
        return min(waits, default=None)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _heartbeat(state: JobState, beat: Any, ttl_left: int) -> tuple[JobState, float | None]:
    """``state`` with ``stalled`` set from its heartbeat, and the seconds until the
    heartbeat goes stale or, once stalled, until it is worth looking again: half the
    threshold, so that a beat made just after this read is still fresh then."""
    if state.status is not JobStatus.STARTED or beat is None or ttl_left < 0:
        return state, None
    try:
        attempt, stalled_ms, ttl_ms = (int(part) for part in _text(beat).split(":"))
    except ValueError:
        return state, None
    if attempt != state.attempt:
        return state, None
    silent_ms = ttl_ms - ttl_left
    if silent_ms > stalled_ms:
        return replace(state, stalled=True), stalled_ms / 2000
    return state, (stalled_ms - silent_ms) / 1000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(job_id: str, fields: list[Any]) -> tuple[JobState, float | None]:
    """A job's state from its record's fields (state, meta, hb, result, PTTL,
    tombstone), and the seconds until its heartbeat goes stale."""
    stored_state, stored_meta, beat, stored_result, ttl_left, tombstone = fields
    if stored_state is not None:
        state = JobState.from_dict(_decode_state(stored_state, stored_meta, stored_result))
        return _heartbeat(state, beat, ttl_left)
    if tombstone is not None:
        return JobState(job_id=job_id, status=JobStatus.EXPIRED, seq=int(tombstone) + 1), None
    return JobState(job_id=job_id), None


def _decode_state(stored_state: Any, stored_meta: Any, stored_result: Any = None) -> dict[str, Any]:
    try:
        data = json.loads(stored_state)
        encoded_meta = json.loads(stored_meta) if stored_meta else {}
        data["meta"] = {key: json.loads(value) for key, value in encoded_meta.items()}
        data["result"] = json.loads(stored_result) if stored_result else None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise InvalidStateError(f"a stored job state is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidStateError("a stored job state is not a JSON object")
    return data


class RedisPubSubStrategy(Connected):
    """Tracks jobs in Redis and pushes every change through pub/sub.

    Each change is one atomic Lua step (one round trip): check that it moves the
    job forward (a backward one is dropped), merge it into the job's hash, bump
    ``seq``, set the TTL and ``PUBLISH`` the full state on the job's channel. The
    TTL is ``active_ttl`` while the job runs and ``ttl`` from its terminal state on;
    a tombstone lives ``tombstone_ttl`` longer, so an expired job reads ``expired``
    rather than ``unknown``.

    Waiters share one pub/sub connection per strategy instance (a
    :class:`~immortus_async.Tracker` builds one instance), with each job's channel
    subscribed once however many wait on it.

    On a Redis Cluster (a ``redis.asyncio.cluster.RedisCluster``, or a
    ``redis+cluster://`` URL) a job's keys and channel share one slot: each change
    is published with ``SPUBLISH`` to that shard alone, and waiters share one
    connection per master (``SSUBSCRIBE``), following the slots as they migrate
    or fail over.

    Heartbeats: a running job's worker calls :meth:`heartbeat` every few seconds
    (``@tracked`` does, every ``heartbeat_interval``). A ``started`` job whose last
    beat is older than the ``stalled_after`` its worker announced reads
    ``stalled=True``; a watcher reads the job again when that deadline passes, so it
    sees the flag without polling. Any update of the job counts as a beat.

    With a ``fallback`` (the queue's own records), a job with no record of ours, or
    one whose record says it is still going while the queue has ended it (arq ends
    some jobs without calling anything: retries exhausted, aborted before start,
    expired, function not found), reads what the fallback says; that state is
    written here too (forward-only, like any update), so every waiter gets it as a
    message. A watcher also follows the fallback's changes: pushed when it can, else
    read while no worker beats for the job, from every ``poll_interval`` of the
    fallback, growing by half with each read that finds nothing new, up to 2 s.

    Args:
        redis: a ``redis.asyncio.Redis`` (an arq pool is one), a
            ``redis.asyncio.cluster.RedisCluster``, or a URL
            (``redis+cluster://host:port`` for a cluster).
        prefix: the prefix of every key and channel.
        ttl: seconds a terminal job's record is kept.
        active_ttl: seconds a job's record is kept after its last change while it
            is not terminal (a job abandoned by every worker disappears eventually).
        tombstone_ttl: seconds the tombstone outlives the record.

            Each of the three, when not given, is the process-wide value of
            :func:`~immortus_async.configure` when the strategy is built (by
            default 3600, 86400 and 3600: a finished job is kept an hour, as
            arq keeps its result).
        fallback: a strategy to answer from for a job with no record of ours (the
            queue adapter's reader of the queue's own records, for jobs enqueued
            by code that never heard of us).
        buffer_size: states kept per waiter that has not read them yet (the
            oldest go first; the latest and the terminal one are always kept).
        client_tracking: False to go without client-side caching: a waiter's
            first read then waits for its subscription to be live (two round
            trips, not one); None (default) uses it on one server that allows
            it (Redis 6 or later, ``CLIENT`` not denied), not on a cluster.
        unreachable_timeout: seconds a waiter rides out a Redis it cannot reach
            (at its first read or mid-wait) before it raises
            :class:`~immortus_async.RedisUnavailable`; None: for ever.
    """

    def __init__(
        self,
        redis: Client | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        # Retention
        ttl: float | None = None,
        active_ttl: float | None = None,
        tombstone_ttl: float | None = None,
        # Reading
        fallback: StateReader | None = None,
        buffer_size: int = 64,
        client_tracking: bool | None = None,
        unreachable_timeout: float | None = 30.0,
    ) -> None:
        retention = config._retention
        ttl = retention.ttl if ttl is None else ttl
        active_ttl = retention.active_ttl if active_ttl is None else active_ttl
        tombstone_ttl = retention.tombstone_ttl if tombstone_ttl is None else tombstone_ttl
        for name, value in (("ttl", ttl), ("active_ttl", active_ttl)):
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if tombstone_ttl < 0:
            raise ValueError(f"tombstone_ttl must not be negative, got {tombstone_ttl!r}")
        super().__init__(redis, decode=_decode_message, unreachable_timeout=unreachable_timeout)
        self.keys = Keys(prefix)
        self._ttl_ms = str(max(1, int(ttl * 1000)))
        self._active_ttl_ms = str(max(1, int(active_ttl * 1000)))
        self._tombstone_ms = str(int(tombstone_ttl * 1000))
        # An owner's index outlives its last enqueue by as long as a job queued
        # then keeps a record after its end.
        self._owner_ttl_ms = max(1, int((active_ttl + ttl) * 1000))
        client = self.redis
        self._script = SharedScript(client, _SHARDED_SCRIPT if is_cluster(client) else _SCRIPT)
        self._beat = SharedScript(client, _HEARTBEAT)
        self._reader = SharedScript(client, _READ)
        # On one Redis, writes go out pipelined on a connection of their own (see
        # _pipe): a worker's concurrent jobs share round trips, and each costs less
        # CPU. A cluster's writes go to the node of each job's slot, one by one.
        self._pipe = ScriptPipe(client) if isinstance(client, Redis) else None
        # A waiter's snapshot read with client-side caching goes out with its
        # SUBSCRIBE (see _Unconfirmed); one server only: a cluster's slots move.
        self._watch: KeyWatch | None = None
        self._tracking = client_tracking is not False
        self._fallback = fallback
        self._buffer_size = buffer_size

    # Writing

    async def apply(
        self,
        update: JobUpdate,
        *,
        stalled_after: float | None = None,
        owner: str | None = None,
    ) -> JobState | None:
        """Apply ``update`` atomically; return the new state, or None if dropped.

        With ``stalled_after``, a ``started`` update is also a heartbeat (see
        :meth:`heartbeat`), in the same round trip: the job side's first beat rides
        on its ``started``.

        With ``owner`` (the queued write of an enqueue), the job joins that owner's
        feed (see :meth:`watch_owner`), unless it has an owner already: every
        change of the job from then on, whoever writes it, is published on the
        owner's channel too. That holds even when the update is dropped because
        the worker wrote first.
        """
        if owner is not None:
            await self._index(owner, update.job_id)
        keys, args = self._call(update, stalled_after, owner)
        wire = await self._write(self._script, keys, args)
        return JobState.from_json(wire) if wire else None

    def _applied(self, update: JobUpdate, *, stalled_after: float | None) -> Awaitable[Any]:
        """:meth:`apply`'s write, for the job side: its reply (the new state as JSON,
        or None when dropped) is left unparsed, as the job side never reads it (parsing
        it cost some 4% of a worker running trivial tracked jobs). On one Redis the
        write is queued at once and the awaitable is its future; on a cluster, a
        coroutine that writes when awaited."""
        keys, args = self._call(update, stalled_after)
        return self._write(self._script, keys, args)

    def _queued(
        self, update: JobUpdate, *, stalled_after: float | None
    ) -> asyncio.Future[Any] | None:
        """:meth:`_applied`, written to the pipe's connection at once (with what was
        queued before it) for a caller that goes on without awaiting it: its future.
        None without a pipe (a cluster), with nothing written."""
        if self._pipe is None:
            return None
        keys, args = self._call(update, stalled_after)
        return self._pipe.call(self._script, keys, args, now=True)

    def _call(
        self,
        update: JobUpdate,
        stalled_after: float | None,
        owner: str | None = None,
        *,
        unmoved: int | None = None,
    ) -> tuple[list[str], list[Any]]:
        """The script's keys and arguments for ``update`` (``unmoved``: the record's
        seq it was decided on, for the script to drop it if the record moved)."""
        body = update.to_dict()
        if update.meta:
            body["meta"] = {key: json.dumps(value) for key, value in update.meta.items()}
        if update.result is not None:
            body["result"] = json.dumps(update.result)
        job_id = update.job_id
        return (
            [self.keys.record(job_id), self.keys.tombstone(job_id)],
            [
                self.keys.channel(job_id),
                job_id,
                json.dumps(body),
                self._active_ttl_ms,
                self._ttl_ms,
                self._tombstone_ms,
                "" if stalled_after is None else self._beat_field(update.attempt, stalled_after),
                owner or "",
                self.keys.owner_channel_head,
                "" if unmoved is None else unmoved,
            ],
        )

    async def _apply_unmoved(self, update: JobUpdate, seq: int) -> JobState | None:
        """:meth:`apply`, unless the job's record has moved past ``seq`` meanwhile.

        What a catch-up writes was true when the record was read at ``seq``: written
        over what the job side said since (``started`` over its progress is a move
        forward), it would tell every waiter that again, as a new state. The script
        checks the seq itself, in the same step (no WATCH: a cluster has none).
        """
        keys, args = self._call(update, None, unmoved=seq)
        wire = await self._write(self._script, keys, args)
        return JobState.from_json(wire) if wire else None

    async def _index(self, owner: str, job_id: str) -> None:
        """Add the job to its owner's index, before the job's own write: a feed
        whose snapshot misses it is subscribed in time for that write's message."""
        index = self.keys.owner_index(owner)
        async with self.redis.pipeline(transaction=False) as pipe:
            # Microseconds: jobs enqueued one after the other in one millisecond
            # keep their order.
            pipe.zadd(index, {job_id: time.time_ns() // 1000})
            pipe.zremrangebyrank(index, 0, -OWNER_SNAPSHOT_LIMIT - 1)
            pipe.pexpire(index, self._owner_ttl_ms)
            await pipe.execute()

    def _beat_field(self, attempt: int, stalled_after: float) -> str:
        return f"{attempt}:{max(1, int(stalled_after * 1000))}:{self._active_ttl_ms}"

    async def job_enqueued(self, job_id: str) -> None:
        """Immortus callback: the job is queued."""
        await self.apply(JobUpdate(job_id=job_id, status=JobStatus.QUEUED, attempt=0))

    async def job_started(self, job_id: str) -> None:
        """Immortus callback: the job's first attempt started."""
        await self.apply(JobUpdate(job_id=job_id, status=JobStatus.STARTED))

    async def job_finished(self, job_id: str) -> None:
        """Immortus callback: the job succeeded."""
        await self.apply(JobUpdate(job_id=job_id, status=JobStatus.FINISHED))

    async def job_failed(self, job_id: str, error: str) -> None:
        """The job failed with ``error``."""
        await self.apply(JobUpdate(job_id=job_id, status=JobStatus.FAILED, error=error))

    async def heartbeat(self, job_id: str, attempt: int, *, stalled_after: float) -> bool:
        """Tell readers that attempt ``attempt`` of the job is alive.

        Until the next beat, readers report the job ``stalled`` once
        ``stalled_after`` seconds have passed. Returns False, writing nothing, when
        the job is not ``started`` at that attempt (it ended, or was never started).
        """
        beat = self._beat_field(attempt, stalled_after)
        written = await self._write(
            self._beat, [self.keys.record(job_id)], [attempt, beat, self._active_ttl_ms]
        )
        return bool(written)

    def _write(self, script: SharedScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        # Not a coroutine: on the pipe, the write is queued as it is called (its
        # future is the reply), and no coroutine is made for it.
        if self._pipe is None:
            return script(keys, args)
        return self._pipe.call(script, keys, args)

    async def aclose(self) -> None:
        """Give the writes' connection back, close client-side caching's, then as
        :class:`Connected` does. Idempotent."""
        pipe, watch = self._pipe, self._watch
        await close_all(
            [
                None if pipe is None else pipe.aclose,
                None if watch is None else watch.aclose,
                super().aclose,
            ]
        )

    # Reading

    async def status(self, job_id: str) -> JobState:
        """The job's state now; ``expired`` past its TTL; else what the fallback knows.

        ``stalled`` is set on a ``started`` job whose heartbeat has gone stale. A
        state the fallback knows better (see the class) is recorded before it is
        returned.

        Raises:
            InvalidStateError: the stored record is not a valid job state.
        """
        return await self._status(job_id, catch_up=True)

    async def _status(self, job_id: str, *, catch_up: bool) -> JobState:
        return (await self._read(job_id, catch_up=catch_up))[0]

    async def _read(
        self, job_id: str, *, catch_up: bool, track: _Unconfirmed | None = None
    ) -> tuple[JobState, float | None]:
        """The job's state and the seconds until its heartbeat goes stale (None: none).

        Our record and the fallback's are read at once: one round trip's wait.
        ``track``: a waiter's, whose read before its subscription is confirmed is
        tracked (see :class:`_Unconfirmed`).
        """
        fallback = self._fallback if catch_up else None
        if fallback is None:
            state, stale_in = await self._record(job_id, track)
        else:
            (state, stale_in), theirs = await asyncio.gather(
                self._record(job_id, track), fallback.status(job_id)
            )
            if not state.completed:
                caught = await self._catch_up(state, theirs)
                if caught is not state:
                    state, stale_in = caught, None
        return state, stale_in

    async def _record(
        self, job_id: str, track: _Unconfirmed | None = None
    ) -> tuple[JobState, float | None]:
        keys = [self.keys.record(job_id), self.keys.tombstone(job_id)]
        if track is None or not track.issued():
            read = _decoded(job_id, await self._record_fields(keys))
            if track is not None:
                track.safe()
            return read
        generation, seq = None, -1
        try:
            fields, generation = await tracked_read(
                self._watch, job_id, self._reader, keys, [], self.reading
            )
            read = _decoded(job_id, fields)
            seq = read[0].seq
        finally:
            track.answered(generation, seq)
        return read

    async def _record_fields(self, keys: list[str]) -> list[Any]:
        """HMGET's four fields, the PTTL and the tombstone."""
        async with self.reading:
            # Not through the writes' pipe: a waiter's timeout cancels its read,
            # which there would cost every write in flight its connection.
            if is_cluster(self.redis):
                # One command each: while the slot migrates, a script naming the
                # tombstone that is not there (yet) answers TRYAGAIN until the
                # move ends; a lone GET follows ASK to where it is.
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hmget(keys[0], ["state", "meta", "hb", "result"])
                    pipe.pttl(keys[0])
                    pipe.get(keys[1])
                    with raced(cluster=True):
                        fields, ttl_left, tombstone = await pipe.execute()
                return [*fields, ttl_left, tombstone]
            return list(await self._reader(keys, []))

    async def _catch_up(self, state: JobState, theirs: JobState) -> JobState:
        """Record what the fallback knows (``theirs``) when it is ahead of our record."""
        if (
            theirs.status is JobStatus.UNKNOWN
            or (theirs.status, theirs.attempt) == (state.status, state.attempt)
            or not is_forward(state.status, state.attempt, theirs.status, theirs.attempt)
        ):
            return state
        applied = await self._apply_unmoved(JobUpdate.from_state(theirs), state.seq)
        if applied is not None:
            return applied
        # Dropped: a write of the job's own raced this one and is ahead (the job
        # side moved it meanwhile); what was read before it is stale now.
        return await self._status(state.job_id, catch_up=False)

    async def completed(self, job_id: str) -> bool:
        """True when the job is in a terminal state."""
        return (await self.status(job_id)).completed

    async def meta(self, job_id: str) -> dict[str, Any]:
        """The meta the job has reported so far."""
        return (await self.status(job_id)).meta

    def watch(self, job_id: str, **options: Any) -> AsyncIterator[JobState]:
        """Yield the job's state now, then each change, until a terminal state.

        Keyword options: ``buffer_size`` overrides the strategy's per-waiter buffer.

        Raises:
            JobLost: Redis lost the job's record while it was followed.
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``.
            SubscriptionRefused: Redis refused to subscribe to the job's channel.
            InvalidStateError: a message on the job's channel is not a job state.
        """
        buffer = StateBuffer(options.get("buffer_size", self._buffer_size))
        recheck = _Recheck(job_id)
        settling = _Settling(job_id, buffer)

        async def read() -> JobState:
            track = settling.unconfirmed
            state, stale_in = await self._read(job_id, catch_up=True, track=track)
            recheck.seen(state, stale_in)
            return state

        subscription = self._subscription(job_id, settling, recheck)
        return follow(
            job_id,
            subscription,
            buffer,
            read,
            recheck=recheck.next,
            unreachable_timeout=self.unreachable_timeout,
            where=self.where,
        )

    def watch_owner(self, owner: str) -> AsyncIterator[JobState]:
        """Yield the owner's jobs, then each change of any of them, for ever.

        First the snapshot: the owner's newest jobs (at most
        :data:`~immortus_async._feed.OWNER_SNAPSHOT_LIMIT`, 100), enqueued within
        ``active_ttl + ttl`` of the owner's last enqueue and still recorded,
        oldest first; then every state any job of the owner is written in
        (queued, started, progress, terminal), in the order each job had them.
        A reader that falls behind gets only the latest state per job; one that
        falls behind on more than 100 jobs gets the snapshot again.

        Raises:
            RedisUnavailable: Redis could not be reached for ``unreachable_timeout``.
            SubscriptionRefused: Redis refused to subscribe to the owner's channel.
            InvalidStateError: a message on the owner's channel is not a job state.
        """
        buffer = FeedBuffer()
        channel = self.keys.owner_channel(owner)

        async def snapshot() -> list[JobState]:
            return await retrying(
                lambda: self._owner_jobs(owner),
                owner,
                unreachable_timeout=self.unreachable_timeout,
                where=self.where,
            )

        async def read(job_id: str) -> JobState:
            return await retrying(
                lambda: self.status(job_id),
                job_id,
                unreachable_timeout=self.unreachable_timeout,
                where=self.where,
            )

        subscription = self._plain_pubsub().subscription(channel, buffer, decode_feed_message)
        return follow_owner(subscription, buffer, snapshot, read)

    async def owner(self, job_id: str) -> str | None:
        """The job's owner, as its queued write recorded it; None without one."""
        async with self.reading:
            found: Any = await self.redis.hget(self.keys.record(job_id), "owner")  # type: ignore[misc, unused-ignore]
        return None if found is None else _text(found)

    async def _owner_jobs(self, owner: str) -> list[JobState]:
        """The owner's recorded jobs, oldest first: those whose record names this
        owner (an id enqueued again by another keeps its first owner)."""
        index = self.keys.owner_index(owner)
        async with self.reading:
            ids = [_text(job_id) for job_id in await self.redis.zrange(index, 0, -1)]
        async with self.reading, self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.keys.record(job_id), "owner")
            owners = await pipe.execute() if ids else []
        mine = [
            job_id
            for job_id, of in zip(ids, owners, strict=True)
            if of is not None and _text(of) == owner
        ]
        states = await asyncio.gather(*(self.status(job_id) for job_id in mine))
        gone = (JobStatus.UNKNOWN, JobStatus.EXPIRED)
        return [state for state in states if state.status not in gone]

    @contextlib.asynccontextmanager
    async def _subscription(
        self, job_id: str, settling: _Settling, recheck: _Recheck
    ) -> AsyncIterator[None]:
        # The channel's SUBSCRIBE, the fallback's registration (ArqStrategy.changes)
        # and, with client-side caching connected, the snapshot (see _Unconfirmed)
        # go out together: the first state comes after one round trip's wait.
        # Otherwise the snapshot waits for the subscription to be live.
        channel = self.keys.channel(job_id)
        hub = self._pubsub()
        _following[job_id] += 1
        subscribing = asyncio.ensure_future(hub.subscribe(channel, settling, self._decode))
        # Retrieved even when the block is left before it is awaited.
        subscribing.add_done_callback(lambda f: f.cancelled() or f.exception())
        watch = self._record_watch()
        unconfirmed: _Unconfirmed | None = None
        try:
            # Not while caching's connections are being made (a process's first
            # waiters): they would wait for them, longer than for the subscription.
            if watch is not None and watch.ready():
                unconfirmed = _Unconfirmed(settling.buffer, watch)
                keys = [self.keys.record(job_id), self.keys.tombstone(job_id)]
                if await watch.watch(job_id, keys, unconfirmed) and watch.connected:
                    settling.unconfirmed = unconfirmed
                    subscribing.add_done_callback(partial(_subscribed, settling, unconfirmed))
            changes = getattr(self._fallback, "changes", None)
            if changes is None:
                if settling.unconfirmed is None:
                    await subscribing
                yield
                return
            async with changes(job_id, _Nudged(settling)) as poll:
                recheck.poll = poll
                if settling.unconfirmed is None:
                    await subscribing
                yield
        finally:
            subscribing.cancel()
            settling.cancel()
            if watch is not None and unconfirmed is not None:
                unconfirmed.cancel()
                watch.unwatch(job_id, unconfirmed)
            hub.unsubscribe(channel, settling)
            _following[job_id] -= 1
            if not _following[job_id]:
                del _following[job_id]
                _announced.pop(job_id, None)

    def _record_watch(self) -> KeyWatch | None:
        """Client-side caching of our records, made on first use; None on a cluster."""
        if self._watch is None and self._tracking and isinstance(self.redis, Redis):
            self._watch = KeyWatch(
                connection_factory(self.redis), on_off=_resync_all, storm_limit=None
            )
        return self._watch


def _subscribed(
    settling: _Settling, unconfirmed: _Unconfirmed, subscribing: asyncio.Future[Any]
) -> None:
    """The channel's subscription answered: confirmed, or its error for the waiter."""
    if subscribing.cancelled():
        return
    error = subscribing.exception()
    if error is not None:
        settling.fail(error)
    else:
        unconfirmed.confirmed()


def _resync_all(subjects: dict[str, set[Any]]) -> None:
    """Caching of our records turned off: whoever may have missed a change reads again."""
    for sinks in subjects.values():
        for sink in sinks:
            sink.request_resync()
