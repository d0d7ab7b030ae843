"""The bridge's wire protocol: client messages, server frames, codes and limits.

No I/O here: every function takes text and returns values, so the whole protocol
is tested without an event loop or a socket. ``docs/protocol.md`` describes the
same messages for client authors.

Client messages (JSON text frames)::

    {"type": "subscribe", "job_id": "42", "token": "<jwt>", "since_seq": 3}
    {"type": "unsubscribe", "job_id": "42"}
    {"type": "subscribe_owner", "owner": "user-42", "token": "<jwt>"}
    {"type": "unsubscribe_owner", "owner": "user-42"}
    {"type": "abort", "job_id": "42", "token": "<jwt>"}      (when the server allows it)

Server frames::

    {"type": "state", "job_id": "42", "status": "started", "seq": 4, ...}
    {"type": "owner_state", "owner": "user-42", "job_id": "42", "status": ..., ...}
    {"type": "error", "code": "token_expired", "message": "...", "job_id": "42"}
    {"type": "abort", "job_id": "42", "requested": true}
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..state import JobState

__all__ = [
    "ABORT_SUFFIX",
    "JOBS_PATH",
    "MAX_JOB_ID_LENGTH",
    "OWNERS_PATH",
    "Abort",
    "AbortReply",
    "ClientMessage",
    "CloseCode",
    "ErrorCode",
    "Rejection",
    "Subscribe",
    "SubscribeOwner",
    "Unsubscribe",
    "UnsubscribeOwner",
    "check_job_id",
    "check_owner",
    "error_frame",
    "owner_state_frame",
    "parse_connect_path",
    "parse_message",
    "state_frame",
]

MAX_JOB_ID_LENGTH = 200
"""The longest job id accepted, in characters (arq's are 32)."""

JOBS_PATH = "/jobs/"
"""``ws://host:port/jobs/<job_id>?token=...`` subscribes to that job on connect."""

OWNERS_PATH = "/owners/"
"""``ws://host:port/owners/<owner>?token=...`` subscribes to that owner's feed on
connect (and ``GET /owners/<owner>/events`` streams it, on the mount)."""
ABORT_SUFFIX = "/abort"
"""``POST /jobs/<job_id>/abort?token=...`` asks the job's queue to abort it (when allowed)."""


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` frame, and of an HTTP error's JSON body. Stable."""

    INVALID_JSON = "invalid_json"
    """The frame is not JSON, or is nested too deeply to read."""
    INVALID_MESSAGE = "invalid_message"
    """The JSON is not an object, or a field is missing or of the wrong type."""
    UNKNOWN_TYPE = "unknown_type"
    """``type`` is none of ``subscribe``, ``unsubscribe``, ``subscribe_owner``,
    ``unsubscribe_owner``, ``abort``."""
    BINARY_FRAME = "binary_frame"
    """A binary frame: the protocol is JSON text only."""
    INVALID_JOB_ID = "invalid_job_id"
    """Empty, longer than :data:`MAX_JOB_ID_LENGTH`, with control characters, or
    not encodable as UTF-8 (a lone surrogate)."""
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    """The connection already holds the maximum number of subscriptions."""
    TOKEN_REQUIRED = "token_required"
    """No token was given and the bridge requires one."""
    TOKEN_INVALID = "token_invalid"
    """Malformed, badly signed, or for another job."""
    TOKEN_EXPIRED = "token_expired"
    """The token's ``exp`` has passed; on a live subscription, it has ended."""
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    """HTTP only: the request's ``Origin`` is not allowed (status 403)."""
    NOT_FOUND = "not_found"
    """No such path (HTTP 404), or a job the app's ``authorize`` refused: HTTP 404, or
    on a websocket the end of that subscription. A refused job and a job that does
    not exist get the same answer, so that ids cannot be probed."""
    REDIS_UNAVAILABLE = "redis_unavailable"
    """Redis did not answer in time: HTTP status 503, or, on a websocket, the end of
    a subscription that could not reach Redis for longer than allowed (retry later)."""
    BAD_REQUEST = "bad_request"
    """HTTP only: a header that may appear once (``Host``, ``Origin``) appears twice (400)."""
    METHOD_NOT_ALLOWED = "method_not_allowed"
    """HTTP only: a method other than GET and HEAD (status 405, ``Allow: GET, HEAD``)."""
    INTERNAL_ERROR = "internal_error"
    """The bridge could not follow the job (a corrupt record; the subscription ended),
    or could not handle a frame (a bug: it is logged); retry later."""
    ABORT_DISABLED = "abort_disabled"
    """The server does not take ``abort`` (HTTP 403): it runs without
    ``allow_abort`` (the default). Said before anything about the job is read."""
    ABORT_UNSUPPORTED = "abort_unsupported"
    """The job's queue cannot abort a job (taskiq), or the server's tracker was not
    given what it aborts through (HTTP 501)."""
    TOO_MANY_ABORTS = "too_many_aborts"
    """The connection already has the maximum number of ``abort`` requests in flight."""
    JOB_LOST = "job_lost"
    """Redis lost the job's record (restarted without data, flushed, failed over to an
    empty replica): its end will never be known; the subscription ended."""


class CloseCode(IntEnum):
    """The websocket close codes the bridge uses. Stable."""

    NORMAL_CLOSURE = 1000
    """The client or the bridge is done."""
    GOING_AWAY = 1001
    """The bridge is shutting down: reconnect (to another instance) with backoff."""
    PROTOCOL_ERROR = 1002
    """The client broke the websocket protocol (an unmasked or malformed frame)."""
    INVALID_DATA = 1007
    """A text frame that is not valid UTF-8."""
    MESSAGE_TOO_BIG = 1009
    """An inbound frame exceeded the size limit (4 KiB by default)."""
    INTERNAL_ERROR = 1011
    """A keepalive ping went unanswered, or the bridge failed: reconnect with backoff."""
    SLOW_CLIENT = 4008
    """The client did not read for longer than the bridge's ``send_timeout``."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Follow ``job_id``: its snapshot (if newer than ``since_seq``), then each change."""

    job_id: str
    token: str | None = None
    since_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop following ``job_id``. Idempotent."""

    job_id: str


@dataclass(frozen=True, slots=True)
class SubscribeOwner:
    """Follow ``owner``'s feed: a snapshot of the owner's jobs, then each change."""

    owner: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Abort:
    """Ask the queue of ``job_id`` to abort it, authorised as a subscription is."""

    job_id: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class UnsubscribeOwner:
    """Stop following ``owner``'s feed. Idempotent."""

    owner: str


@dataclass(frozen=True, slots=True)
class AbortReply:
    """The answer to an :class:`Abort`: ``requested`` False when the job had ended.

    An ``abort`` frame on a websocket, the JSON body of a 200 on HTTP. The job's
    end (``aborted``, or how else it ended first) comes to its subscribers.
    """

    job_id: str
    requested: bool

    def frame(self) -> str:
        """This reply as an ``abort`` frame."""
        body = {"type": "abort", "job_id": self.job_id, "requested": self.requested}
        return json.dumps(body, separators=(",", ":"))


ClientMessage = Subscribe | Unsubscribe | SubscribeOwner | UnsubscribeOwner | Abort
"""What a client's frame asks for, once read."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a client's input was refused: becomes an ``error`` frame or an HTTP error."""

    code: ErrorCode
    message: str
    job_id: str | None = None
    owner: str | None = None
    """Set instead of ``job_id`` when it concerns an owner's feed."""

    def frame(self) -> str:
        """This rejection as an ``error`` frame."""
        return error_frame(self.code, self.message, self.job_id, owner=self.owner)


def check_job_id(value: Any, name: str = "job_id") -> str | Rejection:
    """``value`` if it is an acceptable job id, else the :class:`Rejection` saying why."""
    if not isinstance(value, str):
        return Rejection(ErrorCode.INVALID_MESSAGE, f"{name} must be a string")
    if not value:
        return Rejection(ErrorCode.INVALID_JOB_ID, f"{name} must not be empty")
    if len(value) > MAX_JOB_ID_LENGTH:
        return Rejection(
            ErrorCode.INVALID_JOB_ID, f"{name} is longer than {MAX_JOB_ID_LENGTH} characters"
        )
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in value):
        # Control characters would forge log lines and Redis key names.
        return Rejection(ErrorCode.INVALID_JOB_ID, f"{name} contains control characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        # JSON's "\ud800" decodes to a lone surrogate: no Redis key or channel
        # name can hold it.
        return Rejection(
            ErrorCode.INVALID_JOB_ID, f"{name} is not valid Unicode (a lone surrogate)"
        )
    return value


def check_owner(value: Any) -> str | Rejection:
    """``value`` if it is an acceptable owner (the rules of a job id), else why not."""
    return check_job_id(value, "owner")


def _since_seq(value: Any) -> int | Rejection | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return Rejection(ErrorCode.INVALID_MESSAGE, "since_seq must be a non-negative integer")
    return value


def _subscribe(job_id: str, token: Any, since_seq: Any) -> Subscribe | Rejection:
    if token is not None and not isinstance(token, str):
        return Rejection(ErrorCode.INVALID_MESSAGE, "token must be a string", job_id)
    seq = _since_seq(since_seq)
    if isinstance(seq, Rejection):
        return Rejection(seq.code, seq.message, job_id)
    return Subscribe(job_id, token or None, seq)


def parse_message(data: str | bytes) -> ClientMessage | Rejection:
    """Read one client frame: a text frame arrives as ``str``, a binary one as ``bytes``."""
    if isinstance(data, bytes):
        return Rejection(ErrorCode.BINARY_FRAME, "send JSON in text frames, not binary")
    try:
        message = json.loads(data)
    except ValueError:
        return Rejection(ErrorCode.INVALID_JSON, "the frame is not valid JSON")
    except RecursionError:
        # A few kilobytes of "[" exhaust the decoder's recursion limit.
        return Rejection(ErrorCode.INVALID_JSON, "the frame's JSON is nested too deeply")
    if not isinstance(message, dict):
        return Rejection(ErrorCode.INVALID_MESSAGE, "a message must be a JSON object")
    kind = message.get("type")
    if kind in ("subscribe_owner", "unsubscribe_owner"):
        return _owner_message(kind, message)
    if kind not in ("subscribe", "unsubscribe", "abort"):
        return Rejection(
            ErrorCode.UNKNOWN_TYPE,
            'type must be "subscribe", "unsubscribe", "subscribe_owner", "unsubscribe_owner" '
            'or "abort"',
        )
    if "job_id" not in message:
        return Rejection(ErrorCode.INVALID_MESSAGE, f"a {kind} message needs a job_id")
    job_id = check_job_id(message["job_id"])
    if isinstance(job_id, Rejection):
        return job_id
    if kind == "unsubscribe":
        return Unsubscribe(job_id)
    if kind == "abort":
        token = message.get("token")
        if token is not None and not isinstance(token, str):
            return Rejection(ErrorCode.INVALID_MESSAGE, "token must be a string", job_id)
        return Abort(job_id, token or None)
    return _subscribe(job_id, message.get("token"), message.get("since_seq"))


def _owner_message(kind: str, message: dict[str, Any]) -> ClientMessage | Rejection:
    if "owner" not in message:
        return Rejection(ErrorCode.INVALID_MESSAGE, f"a {kind} message needs an owner")
    owner = check_owner(message["owner"])
    if isinstance(owner, Rejection):
        return owner
    if kind == "unsubscribe_owner":
        return UnsubscribeOwner(owner)
    return _subscribe_owner(owner, message.get("token"))


def _subscribe_owner(owner: str, token: Any) -> SubscribeOwner | Rejection:
    if token is not None and not isinstance(token, str):
        return Rejection(ErrorCode.INVALID_MESSAGE, "token must be a string", owner=owner)
    return SubscribeOwner(owner, token or None)


def parse_connect_path(path: str) -> Subscribe | SubscribeOwner | Rejection | None:
    """The subscription a connection's request path asks for, if any.

    ``/`` asks for none (the client will send ``subscribe`` messages);
    ``/jobs/<job_id>?token=...&since_seq=N`` asks for one, the job id
    percent-encoded; ``/owners/<owner>?token=...`` for an owner's feed. The
    result is checked like a ``subscribe`` (``subscribe_owner``) message.
    """
    parts = urlsplit(path)
    if parts.path.startswith(OWNERS_PATH):
        owner = check_owner(unquote(parts.path[len(OWNERS_PATH) :]))
        if isinstance(owner, Rejection):
            return owner
        return _subscribe_owner(owner, parse_qs(parts.query).get("token", [None])[0])
    if not parts.path.startswith(JOBS_PATH):
        return None
    job_id = check_job_id(unquote(parts.path[len(JOBS_PATH) :]))
    if isinstance(job_id, Rejection):
        return job_id
    query = parse_qs(parts.query)
    token = query.get("token", [None])[0]
    since: Any = query.get("since_seq", [None])[0]
    if since is not None:
        since = _query_int(since)
    return _subscribe(job_id, token, since)


def _query_int(text: str) -> int | str:
    """A query parameter of ASCII digits as an int; else ``text`` itself, which
    :func:`_since_seq` then refuses like any other non-integer."""
    # str.isdigit() is also true for "²" and other digits int() refuses.
    if text.isascii() and text.isdigit():
        with contextlib.suppress(ValueError):  # more digits than int() reads (4300)
            return int(text)
    return text


_last_frame: tuple[JobState, str] | None = None


def state_frame(state: JobState) -> str:
    """A ``state`` frame: ``{"type": "state"}`` plus every field of the state's wire form.

    The frame of the last state encoded is kept: every follower of a job gets the
    same :class:`JobState` object (decoded once per Redis message), so a job with a
    thousand followers is encoded once, not a thousand times.
    """
    global _last_frame
    last = _last_frame
    if last is not None and last[0] is state:
        return last[1]
    frame = json.dumps({"type": "state", **state.to_dict()}, separators=(",", ":"))
    _last_frame = (state, frame)
    return frame


def owner_state_frame(owner: str, state: JobState) -> str:
    """An ``owner_state`` frame: a state of one of ``owner``'s jobs, on that owner's feed."""
    body = {"type": "owner_state", "owner": owner, **state.to_dict()}
    return json.dumps(body, separators=(",", ":"))


def error_frame(
    code: ErrorCode, message: str, job_id: str | None = None, *, owner: str | None = None
) -> str:
    """An ``error`` frame; ``job_id`` (or ``owner``) names the subscription it concerns."""
    body: dict[str, Any] = {"type": "error", "code": code.value, "message": message}
    if job_id is not None:
        body["job_id"] = job_id
    if owner is not None:
        body["owner"] = owner
    return json.dumps(body, separators=(",", ":"))
