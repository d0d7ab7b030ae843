"""Every error immortus-async raises on purpose derives from :class:`ImmortusError`.

The tree::

    ImmortusError
    ├── StrategyNotFound       no tracking strategy matches a name, class or path
    ├── JobNotFound            no record of the job anywhere (ours nor the queue's)
    │   └── JobLost            it had a record, and Redis lost it (a restart without data)
    ├── RedisUnavailable       Redis could not be reached for longer than allowed
    ├── SubscriptionRefused    Redis refused to subscribe to a job's channel (ACL)
    ├── TrackerClosed          the Tracker was closed while, or before, it was used
    ├── InvalidStateError      a stored or published job state is not valid
    ├── AbortUnsupported       the job's queue cannot abort it (taskiq), or was not given
    └── TokenError             a subscription token was refused
        ├── TokenInvalid       forged, malformed, or for another job
        └── TokenExpired       its ``exp`` has passed

Waiting with a timeout raises the built-in :class:`TimeoutError`, and bad arguments
raise :class:`ValueError` or :class:`TypeError`, as Python code expects.
"""

from __future__ import annotations

__all__ = [
    "AbortUnsupported",
    "ImmortusError",
    "InvalidStateError",
    "JobLost",
    "JobNotFound",
    "RedisUnavailable",
    "StrategyNotFound",
    "SubscriptionRefused",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TrackerClosed",
]


class ImmortusError(Exception):
    """The base class of every error this library raises on purpose."""


class StrategyNotFound(ImmortusError, LookupError):
    """No tracking strategy matches; the message lists every place that was tried."""


class JobNotFound(ImmortusError, LookupError):
    """The job id has no record anywhere: neither a tracking record nor a queue record."""

    def __init__(self, job_id: str, message: str | None = None) -> None:
        super().__init__(
            message or f"no job {job_id!r}: it has no tracking record and no queue record"
        )
        self.job_id = job_id


class JobLost(JobNotFound):
    """The job was being followed, and Redis lost its record (restarted without data,
    flushed, or failed over to an empty replica): its end will never be known here."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            job_id,
            f"job {job_id!r} was lost: Redis no longer has its record "
            "(restarted without data, flushed, or failed over to an empty replica)",
        )


class RedisUnavailable(ImmortusError, ConnectionError):
    """Redis could not be reached for longer than the caller allows; the message says
    which Redis and for how long."""


class SubscriptionRefused(ImmortusError, PermissionError):
    """Redis refused to subscribe to a job's channel (an ACL user without channel
    permissions: grant them, e.g. ``ACL SETUSER <user> &immortus:*``)."""


class TrackerClosed(ImmortusError, RuntimeError):
    """The Tracker was closed; create a new one (or use ``async with``)."""


class InvalidStateError(ImmortusError, ValueError):
    """A job state read from Redis, or a message published for a job, is not valid."""


class AbortUnsupported(ImmortusError, NotImplementedError):
    """``Tracker.abort``: the job's queue has no way to abort it (taskiq, the memory
    adapter), or abort needs the queue object the Tracker was not given
    (``Tracker(queue=worker)`` for streaQ); the message says which."""


class TokenError(ImmortusError):
    """A subscription token was refused."""


class TokenInvalid(TokenError):
    """The token is malformed, its signature does not match, or it names another job."""


class TokenExpired(TokenError):
    """The token's ``exp`` claim has passed: mint a new one."""
