"""Reading a queue's own records: what every strategy that reads them shares.

A queue keeps a job's state in its own keys and pickles; a strategy that reads them
(no callbacks, jobs enqueued by code that never heard of us) derives a
:class:`~immortus_async.JobState` from them, and re-reads them when told that they
changed (:class:`Nudge`). No I/O here.
"""

from __future__ import annotations

import io
import pickle
from datetime import UTC, datetime
from typing import Any

from ._buffer import StateBuffer
from .status import JobStatus

__all__ = ["Nudge", "lifecycle_seq", "ms_time", "text", "unpickle"]

# Steps of one attempt: the seq of a state read from a queue's records is
# 4 * attempt + step, so it grows along any path a queue can take (queued, started,
# retrying, started, ..., end) and two readers of the same records agree on it.
_STEP = {JobStatus.QUEUED: 1, JobStatus.STARTED: 2, JobStatus.RETRYING: 3}


def lifecycle_seq(status: JobStatus, attempt: int) -> int:
    """The ``seq`` of a state read from a queue's records; 0 for ``unknown``."""
    if status is JobStatus.UNKNOWN:
        return 0
    return 4 * attempt + _STEP.get(status, 4)


def ms_time(ms: Any) -> datetime | None:
    """A queue's timestamp in milliseconds since the epoch as UTC; None if it is not one."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    ms = int(ms)
    try:
        return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
    except (OverflowError, OSError, ValueError):
        return None


def text(value: Any) -> str | None:
    """A record's field as text: bytes decoded, None kept."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class _StandIn(Exception):
    """An object of a class this process cannot import (a job's own exception
    class, say): its class name and arguments survive, for the error text."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):
            state = state[0]
        if isinstance(state, dict):
            self.__dict__.update(state)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_StandIn,), {"__module__": module})


def unpickle(raw: bytes) -> dict[str, Any]:
    """A pickled dict (arq's and streaQ's default), tolerant of classes only the worker has.

    Raises:
        TypeError: the pickle is not a dict. Anything ``pickle`` raises on bad data.
    """
    data = _Unpickler(io.BytesIO(raw)).load()
    if not isinstance(data, dict):
        raise TypeError(f"expected a dict, got {type(data).__name__}")
    return data


class Nudge:
    """A pub/sub sink that turns any message about a job's records into "re-read the job".

    The message itself (a keyspace event, a queue's own notice) is not trusted as a
    state: the records are read again.
    """

    __slots__ = ("_buffer",)

    def __init__(self, buffer: StateBuffer) -> None:
        self._buffer = buffer

    def push(self, item: Any) -> None:
        self._buffer.request_resync()

    def fail(self, error: BaseException) -> None:
        self._buffer.fail(error)

    def request_resync(self) -> None:
        self._buffer.request_resync()

    def request_resync_now(self) -> None:
        """The queue ended the job: re-read at once, where the buffer would wait."""
        getattr(self._buffer, "request_resync_now", self._buffer.request_resync)()
