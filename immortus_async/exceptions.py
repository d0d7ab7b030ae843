"""Every error immortus-async raises on purpose derives from :class:`ImmortusError`.

The tree::

    ImmortusError
    ├── StrategyNotFound       no tracking strategy matches a name, class or path
    ├── JobNotFound            no record of the job anywhere (ours nor the queue's)
    ├── TrackerClosed          the Tracker was closed while, or before, it was used
    ├── InvalidStateError      a stored or published job state is not valid
    └── TokenError             a subscription token was refused
        ├── TokenInvalid       forged, malformed, or for another job
        └── TokenExpired       its ``exp`` has passed

Waiting with a timeout raises the built-in :class:`TimeoutError`, and bad arguments
raise :class:`ValueError` or :class:`TypeError`, as Python code expects.
"""

from __future__ import annotations

__all__ = [
    "ImmortusError",
    "InvalidStateError",
    "JobNotFound",
    "StrategyNotFound",
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

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}: it has no tracking record and no queue record")
        self.job_id = job_id


class TrackerClosed(ImmortusError, RuntimeError):
    """The Tracker was closed; create a new one (or use ``async with``)."""


class InvalidStateError(ImmortusError, ValueError):
    """A job state read from Redis, or a message published for a job, is not valid."""


class TokenError(ImmortusError):
    """A subscription token was refused."""


class TokenInvalid(TokenError):
    """The token is malformed, its signature does not match, or it names another job."""


class TokenExpired(TokenError):
    """The token's ``exp`` claim has passed: mint a new one."""
