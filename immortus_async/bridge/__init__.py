"""The websocket bridge: browsers follow jobs live, and ``/verify`` answers over HTTP.

>>> from immortus_async.bridge import serve
>>> async with serve("redis://localhost:6379/0", port=8765) as bridge:  # doctest: +SKIP
...     await bridge.wait_closed()

Or from a shell: ``IMMORTUS_SECRET=... immortus-async bridge --redis redis://...``.
The wire protocol, its error codes and close codes are in ``docs/protocol.md``.
"""

from .auth import Authorize, AuthorizeOwner, Gatekeeper, not_found, owner_not_found
from .http import (
    EVENTS_SUFFIX,
    METRICS_PATH,
    STATIC_FILES,
    VERIFY_PATH,
    Answer,
    EventStream,
    HttpRoutes,
    check_metrics_token,
)
from .logs import REDACTED, RedactingLogger, redact
from .outbox import Outbox, OutboxStatistics
from .protocol import (
    ABORT_SUFFIX,
    JOBS_PATH,
    MAX_JOB_ID_LENGTH,
    OWNERS_PATH,
    Abort,
    AbortReply,
    ClientMessage,
    CloseCode,
    ErrorCode,
    Rejection,
    Subscribe,
    SubscribeOwner,
    Unsubscribe,
    UnsubscribeOwner,
    check_job_id,
    check_owner,
    error_frame,
    owner_state_frame,
    parse_connect_path,
    parse_message,
    state_frame,
)
from .server import DEFAULT_REDIS_URL, Bridge, BridgeStatistics, check_options, serve
from .session import Disconnected, Session, Transport, abort_job

__all__ = [
    "ABORT_SUFFIX",
    "DEFAULT_REDIS_URL",
    "EVENTS_SUFFIX",
    "JOBS_PATH",
    "MAX_JOB_ID_LENGTH",
    "METRICS_PATH",
    "OWNERS_PATH",
    "REDACTED",
    "STATIC_FILES",
    "VERIFY_PATH",
    "Abort",
    "AbortReply",
    "Answer",
    "Authorize",
    "AuthorizeOwner",
    "Bridge",
    "BridgeStatistics",
    "ClientMessage",
    "CloseCode",
    "Disconnected",
    "ErrorCode",
    "EventStream",
    "Gatekeeper",
    "HttpRoutes",
    "Outbox",
    "OutboxStatistics",
    "RedactingLogger",
    "Rejection",
    "Session",
    "Subscribe",
    "SubscribeOwner",
    "Transport",
    "Unsubscribe",
    "UnsubscribeOwner",
    "abort_job",
    "check_job_id",
    "check_metrics_token",
    "check_options",
    "check_owner",
    "error_frame",
    "not_found",
    "owner_not_found",
    "owner_state_frame",
    "parse_connect_path",
    "parse_message",
    "redact",
    "serve",
    "state_frame",
]
