"""The websocket bridge: browsers follow jobs live, and ``/verify`` answers over HTTP.

>>> from immortus_async.bridge import serve
>>> async with serve("redis://localhost:6379/0", port=8765) as bridge:  # doctest: +SKIP
...     await bridge.wait_closed()

Or from a shell: ``IMMORTUS_SECRET=... immortus-async bridge --redis redis://...``.
The wire protocol, its error codes and close codes are in ``docs/protocol.md``.
"""

from .auth import Authorize, Gatekeeper, not_found
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
    JOBS_PATH,
    MAX_JOB_ID_LENGTH,
    CloseCode,
    ErrorCode,
    Rejection,
    Subscribe,
    Unsubscribe,
    check_job_id,
    error_frame,
    parse_connect_path,
    parse_message,
    state_frame,
)
from .server import DEFAULT_REDIS_URL, Bridge, BridgeStatistics, check_options, serve
from .session import Disconnected, Session, Transport

__all__ = [
    "DEFAULT_REDIS_URL",
    "EVENTS_SUFFIX",
    "JOBS_PATH",
    "MAX_JOB_ID_LENGTH",
    "METRICS_PATH",
    "REDACTED",
    "STATIC_FILES",
    "VERIFY_PATH",
    "Answer",
    "Authorize",
    "Bridge",
    "BridgeStatistics",
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
    "Transport",
    "Unsubscribe",
    "check_job_id",
    "check_metrics_token",
    "check_options",
    "error_frame",
    "not_found",
    "parse_connect_path",
    "parse_message",
    "redact",
    "serve",
    "state_frame",
]
