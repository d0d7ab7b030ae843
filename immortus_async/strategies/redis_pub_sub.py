"""``"redis_pub_sub"``: state in one Redis hash per job, every change published."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from .._buffer import StateBuffer
from .._follow import follow
from .._pubsub import PubSubHub, connection_factory
from .._redis import client_from
from ..exceptions import InvalidStateError
from ..keys import DEFAULT_PREFIX, Keys
from ..state import JobState, JobUpdate
from ..status import JobStatus
from .base import StateReader

__all__ = ["RedisPubSubStrategy"]

_SCRIPT = resources.files(__package__).joinpath("redis_pub_sub.lua").read_text()
_DAY_MS = 86_400_000


def _decode_state(stored_state: Any, stored_meta: Any) -> dict[str, Any]:
    try:
        data = json.loads(stored_state)
        encoded_meta = json.loads(stored_meta) if stored_meta else {}
        data["meta"] = {key: json.loads(value) for key, value in encoded_meta.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidStateError(f"a stored job state is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidStateError("a stored job state is not a JSON object")
    return data


class RedisPubSubStrategy:
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

    Args:
        redis: a ``redis.asyncio.Redis`` (an arq pool is one) or a URL.
        prefix: the prefix of every key and channel.
        ttl: seconds a terminal job's record is kept.
        active_ttl: seconds a job's record is kept after its last change while it
            is not terminal (a job abandoned by every worker disappears eventually).
        tombstone_ttl: seconds the tombstone outlives the record.
        fallback: a strategy to answer from for a job with no record of ours (the
            arq strategy, for jobs enqueued by code that never heard of us).
        buffer_size: states kept per waiter that has not read them yet (the
            oldest go first; the latest and the terminal one are always kept).
    """

    def __init__(
        self,
        redis: Redis | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        # Retention
        ttl: float = 86_400,
        active_ttl: float = 7 * 86_400,
        tombstone_ttl: float = 7 * 86_400,
        # Reading
        fallback: StateReader | None = None,
        buffer_size: int = 64,
    ) -> None:
        for name, value in (("ttl", ttl), ("active_ttl", active_ttl)):
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if tombstone_ttl < 0:
            raise ValueError(f"tombstone_ttl must not be negative, got {tombstone_ttl!r}")
        self.redis, self._owns_redis = client_from(redis)
        self.keys = Keys(prefix)
        self._ttl_ms = str(max(1, int(ttl * 1000)))
        self._active_ttl_ms = str(max(1, int(active_ttl * 1000)))
        self._tombstone_ms = str(int(tombstone_ttl * 1000))
        self._script = self.redis.register_script(_SCRIPT)
        self._fallback = fallback
        self._buffer_size = buffer_size
        self._hub: PubSubHub | None = None

    # Writing

    async def apply(self, update: JobUpdate) -> JobState | None:
        """Apply ``update`` atomically; return the new state, or None if dropped."""
        body = update.to_dict()
        if update.meta:
            body["meta"] = {key: json.dumps(value) for key, value in update.meta.items()}
        job_id = update.job_id
        wire = await self._script(
            keys=[self.keys.record(job_id), self.keys.tombstone(job_id)],
            args=[
                self.keys.channel(job_id),
                job_id,
                json.dumps(body),
                self._active_ttl_ms,
                self._ttl_ms,
                self._tombstone_ms,
            ],
        )
        return JobState.from_json(wire) if wire else None

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

    # Reading

    async def status(self, job_id: str) -> JobState:
        """The job's state now; ``expired`` past its TTL; else what the fallback knows.

        Raises:
            InvalidStateError: the stored record is not a valid job state.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.record(job_id), ["state", "meta"])
            pipe.get(self.keys.tombstone(job_id))
            (stored_state, stored_meta), tombstone = await pipe.execute()
        if stored_state is not None:
            return JobState.from_dict(_decode_state(stored_state, stored_meta))
        if tombstone is not None:
            return JobState(job_id=job_id, status=JobStatus.EXPIRED, seq=int(tombstone) + 1)
        if self._fallback is not None:
            return await self._fallback.status(job_id)
        return JobState(job_id=job_id)

    async def completed(self, job_id: str) -> bool:
        """True when the job is in a terminal state."""
        return (await self.status(job_id)).completed

    async def meta(self, job_id: str) -> dict[str, Any]:
        """The meta the job has reported so far."""
        return (await self.status(job_id)).meta

    def watch(self, job_id: str, **options: Any) -> AsyncIterator[JobState]:
        """Yield the job's state now, then each change, until a terminal state.

        Keyword options: ``buffer_size`` overrides the strategy's per-waiter buffer.
        """
        buffer = StateBuffer(options.get("buffer_size", self._buffer_size))
        hub = self._pubsub()
        subscription = hub.subscription(self.keys.channel(job_id), buffer)
        return follow(job_id, subscription, buffer, lambda: self.status(job_id))

    def _pubsub(self) -> PubSubHub:
        if self._hub is None:
            self._hub = PubSubHub(connection_factory(self.redis), JobState.from_json)
        return self._hub

    async def aclose(self) -> None:
        """Close the pub/sub connection, and the client if this object created it."""
        if self._hub is not None:
            await self._hub.aclose()
        if self._owns_redis:
            await self.redis.aclose()
