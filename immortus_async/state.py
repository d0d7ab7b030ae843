"""The state of one job, its wire form, and how an update changes it.

No I/O here. :func:`apply_update` is the reference semantics; the Redis strategy's
Lua script does the same inside Redis and the contract tests hold both to it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .exceptions import InvalidStateError
from .status import JobStatus, is_forward

__all__ = ["JobState", "JobUpdate", "apply_update", "utcnow"]

_TIME_FIELDS = ("enqueued_at", "started_at", "finished_at")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, to the millisecond (what the wire keeps)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidStateError(f"{name} must be an ISO 8601 string or null, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # A time near datetime's ends overflows once moved to UTC
        # ('0001-01-01T00:00:00+01:00' is in year 0).
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidStateError(f"{name} is not an ISO 8601 time in range: {value!r}") from None


def _check_progress(progress: Any) -> float | None:
    if progress is None:
        return None
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        raise ValueError(f"progress must be a number in [0, 1] or None, got {progress!r}")
    try:
        value = float(progress)
    except OverflowError:  # an int too large for a float: far outside [0, 1] anyway
        raise ValueError(f"progress must be a number in [0, 1] or None, got {progress!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"progress must be a number in [0, 1] or None, got {progress!r}")
    return value


def _check_result(result: Any) -> Any:
    """``result`` if it is a JSON value (NaN and infinities excluded), else InvalidStateError."""
    if result is None:
        return None
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        kind = type(result).__name__
        raise InvalidStateError(f"result must be a JSON value, got {kind}: {exc}") from None
    return result


@dataclass(frozen=True, slots=True)
class JobState:
    """Everything a waiter knows about one job at one moment. Immutable.

    ``seq`` grows by one on every accepted change of the job, so of two states of
    the same job the one with the larger ``seq`` is the newer. ``completed`` is
    derived from ``status``: True for every terminal status, failed included.
    ``stalled`` is set by a reader (never stored) when a started job's worker has
    stopped sending heartbeats. ``result`` is the job's return value (JSON types),
    in a ``finished`` state whose job side was asked to report it and found it
    JSON-able and small enough (see ``report_result`` on each queue's job side);
    None otherwise.
    """

    job_id: str
    status: JobStatus = JobStatus.UNKNOWN
    progress: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempt: int = 0
    seq: int = 0
    function: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stalled: bool = False
    result: Any = None

    @property
    def completed(self) -> bool:
        """True iff the status is terminal: the job will not change again."""
        return self.status.terminal

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a dict: JSON types only, ``completed`` included."""
        return {
            "job_id": self.job_id,
            "status": self.status.value,
            "completed": self.completed,
            "progress": self.progress,
            "meta": self.meta,
            "error": self.error,
            "attempt": self.attempt,
            "seq": self.seq,
            "function": self.function,
            "enqueued_at": _format_time(self.enqueued_at),
            "started_at": _format_time(self.started_at),
            "finished_at": _format_time(self.finished_at),
            "stalled": self.stalled,
            "result": self.result,
        }

    def to_json(self) -> str:
        """The wire form used everywhere: Redis messages, websocket frames, HTTP."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> JobState:
        """Build a state from its wire form.

        Raises:
            InvalidStateError: ``data`` is not a wire-form object (a missing job
                id, an unknown status, a field of the wrong type).
        """
        if not isinstance(data, dict):
            raise InvalidStateError(f"a job state must be a JSON object, got {type(data).__name__}")
        job_id = data.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise InvalidStateError(f"job_id must be a non-empty string, got {job_id!r}")
        try:
            status = JobStatus(data.get("status", "unknown"))
        except ValueError:
            raise InvalidStateError(
                f"unknown job status {data.get('status')!r} for job {job_id!r}"
            ) from None
        try:
            progress = _check_progress(data.get("progress"))
        except ValueError as exc:
            raise InvalidStateError(str(exc)) from None
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise InvalidStateError(f"meta must be a JSON object, got {meta!r}")
        ints = {}
        for name in ("attempt", "seq"):
            value = data.get(name, 0)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidStateError(f"{name} must be a non-negative integer, got {value!r}")
            ints[name] = value
        for name in ("error", "function"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise InvalidStateError(f"{name} must be a string or null, got {data[name]!r}")
        result = _check_result(data.get("result"))
        return cls(
            job_id=job_id,
            status=status,
            progress=progress,
            meta=meta,
            error=data.get("error"),
            attempt=ints["attempt"],
            seq=ints["seq"],
            function=data.get("function"),
            enqueued_at=_parse_time("enqueued_at", data.get("enqueued_at")),
            started_at=_parse_time("started_at", data.get("started_at")),
            finished_at=_parse_time("finished_at", data.get("finished_at")),
            stalled=bool(data.get("stalled", False)),
            result=result,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> JobState:
        """Parse the wire form.

        Any payload whatever either parses or raises :class:`InvalidStateError`:
        what arrives on a job's channel may come from anyone who can publish.

        Raises:
            InvalidStateError: ``raw`` is not JSON (nested too deep for the parser
                included), or not a valid job state.
        """
        return cls.from_dict(_wire_json(raw))


def _wire_json(raw: str | bytes) -> Any:
    """``raw`` parsed as JSON, for :meth:`JobState.from_dict`; a reader that wants
    fields beyond the state's (a heartbeat) parses once with this.

    Raises:
        InvalidStateError: ``raw`` is not JSON (nested too deep for the parser included).
    """
    try:
        return json.loads(raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidStateError(f"a job state is not valid JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One change a job side reports: a new status, progress, meta to merge, an error.

    Construct it with keywords; the constructor validates ``progress`` (a number in
    [0, 1]) and ``meta`` (a dict), raising ``ValueError`` otherwise.

    ``result`` (JSON types, checked by the job side) goes with a ``finished``
    update. ``since``, on a ``queued`` update of attempt 0, is when its enqueue
    began: a record that reached its terminal state before then is of an earlier
    run of the same id, and this update starts the id's new run (``seq`` goes on
    growing; everything else starts afresh). Without ``since`` a terminal record
    takes nothing more.
    """

    job_id: str
    status: JobStatus
    attempt: int = 1
    progress: float | None = None
    meta: dict[str, Any] | None = None
    error: str | None = None
    function: str | None = None
    at: datetime = field(default_factory=utcnow)
    result: Any = None
    since: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "progress", _check_progress(self.progress))
        if self.meta is not None and not isinstance(self.meta, dict):
            raise ValueError(f"meta must be a dict, got {type(self.meta).__name__}")
        if self.status in (JobStatus.UNKNOWN, JobStatus.EXPIRED):
            raise ValueError(f"{self.status.value!r} is read, never written")

    @classmethod
    def from_state(cls, state: JobState) -> JobUpdate:
        """The update that moves a record to ``state``'s status, attempt and error.

        Used to record what another source (the queue's own records) knows; its
        time is the one ``state`` gives for that status, else now.
        """
        if state.status is JobStatus.QUEUED:
            at = state.enqueued_at
        elif state.status is JobStatus.STARTED:
            at = state.started_at
        else:
            at = state.finished_at
        return cls(
            job_id=state.job_id,
            status=state.status,
            attempt=state.attempt,
            progress=state.progress,
            meta=state.meta or None,
            error=state.error,
            function=state.function,
            at=at or utcnow(),
        )

    def to_dict(self) -> dict[str, Any]:
        """The form the Redis script takes: JSON types only."""
        return {
            "status": self.status.value,
            "attempt": self.attempt,
            "progress": self.progress,
            "meta": self.meta,
            "error": self.error,
            "function": self.function,
            "at": _format_time(self.at),
            "result": self.result,
            "since": _format_time(self.since),
        }


def apply_update(current: JobState | None, update: JobUpdate) -> JobState | None:
    """Return the job's next state, or None when the update would move it backwards.

    Merging rules (the Lua script follows them too): ``meta`` merges key by key;
    ``progress`` and ``error`` are replaced when given; a new attempt's ``started``
    clears the previous attempt's progress and error; ``finished`` sets progress to
    1; ``queued``, ``started`` and terminal statuses stamp their time; ``seq`` grows
    by one. A ``queued`` update with ``since`` after a terminal record's end starts
    the id's new run (see :class:`JobUpdate`).
    """
    if current is None:
        current = JobState(job_id=update.job_id)
    if _renews(current, update):
        current = JobState(job_id=update.job_id, status=JobStatus.UNKNOWN, seq=current.seq)
    if not is_forward(current.status, current.attempt, update.status, update.attempt):
        return None
    new_attempt = update.attempt > current.attempt and update.status is JobStatus.STARTED
    progress = None if new_attempt else current.progress
    error = None if new_attempt else current.error
    changes: dict[str, Any] = {
        "status": update.status,
        "attempt": max(update.attempt, current.attempt),
        "seq": current.seq + 1,
        "meta": {**current.meta, **(update.meta or {})},
        "progress": update.progress if update.progress is not None else progress,
        "error": update.error if update.error is not None else error,
        "function": update.function or current.function,
    }
    if update.status is JobStatus.FINISHED:
        changes["progress"] = 1.0
        changes["result"] = update.result
    if update.status is JobStatus.QUEUED:
        changes["enqueued_at"] = current.enqueued_at or update.at
    elif update.status is JobStatus.STARTED and (new_attempt or current.started_at is None):
        changes["started_at"] = update.at
    elif update.status.terminal:
        changes["finished_at"] = update.at
    return replace(current, **changes)


def _renews(current: JobState, update: JobUpdate) -> bool:
    """Whether ``update`` starts a new run of a job id whose record has ended."""
    if update.since is None or update.status is not JobStatus.QUEUED or update.attempt != 0:
        return False
    if current.status is JobStatus.EXPIRED:
        return True
    ended = current.finished_at
    return current.completed and ended is not None and ended < update.since
