"""Plain HTTP beside the websocket: ``/verify``, ``/healthz``, event streams, the client.

:meth:`HttpRoutes.route` decides every answer as an :class:`Answer`, whatever the
server: websockets hands every request to :meth:`HttpRoutes.__call__` (its
``process_request`` hook) before the websocket handshake, where returning a
response answers the request as plain HTTP and None lets the handshake go on;
the ASGI mount (:mod:`immortus_async.asgi`) sends the same answers through ASGI.
"""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import json
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .. import metrics
from ..exceptions import ImmortusError
from ..tracker import Tracker
from .auth import Gatekeeper, not_found, owner_not_found
from .logs import RedactingLogger
from .protocol import (
    ABORT_SUFFIX,
    JOBS_PATH,
    OWNERS_PATH,
    Abort,
    ErrorCode,
    Rejection,
    check_job_id,
    check_owner,
    error_frame,
)
from .session import abort_job

__all__ = [
    "EVENTS_SUFFIX",
    "METRICS_PATH",
    "STATIC_FILES",
    "VERIFY_PATH",
    "Answer",
    "EventStream",
    "HttpRoutes",
    "check_metrics_token",
]

logger = RedactingLogger(logging.getLogger("immortus_async.bridge"))

VERIFY_PATH = "/verify/"
"""``GET /verify/<job_id>?token=...`` answers the job's state as JSON."""

EVENTS_SUFFIX = "/events"
"""``GET /jobs/<job_id>/events?token=...``: the job's states as Server-Sent Events
(the ASGI mount; the bridge answers 404). ``GET /owners/<owner>/events`` streams
that owner's feed."""

METRICS_PATH = "/metrics"
"""``GET /metrics`` with ``Authorization: Bearer <metrics_token>``: the Prometheus
metrics (:mod:`immortus_async.metrics`), served only with a ``metrics_token``."""

STATIC_FILES = {
    "/immortus.js": "immortus.js",
    "/immortus.mjs": "immortus.mjs",
    "/immortus.d.ts": "immortus.d.ts",
}
"""The browser client: a classic script, an ES module that wraps it, its types."""

_JSON = "application/json"
_JAVASCRIPT = "text/javascript; charset=utf-8"
_TYPESCRIPT = "application/typescript; charset=utf-8"
_REDIS_DOWN = (RedisError, OSError, TimeoutError)
_SINGLE_HEADERS = ("Host", "Origin")
_MAX_REFUSED = 1000
_STATUS_OF = {
    ErrorCode.TOKEN_REQUIRED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.TOKEN_INVALID: HTTPStatus.FORBIDDEN,
    ErrorCode.TOKEN_EXPIRED: HTTPStatus.FORBIDDEN,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.ABORT_DISABLED: HTTPStatus.FORBIDDEN,
    ErrorCode.ABORT_UNSUPPORTED: HTTPStatus.NOT_IMPLEMENTED,
    ErrorCode.REDIS_UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.INTERNAL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
}


@dataclass(slots=True)
class Answer:
    """An HTTP answer in no server's types: its status, headers and body.

    The headers are those of the content; each server adds its own (``Date``,
    ``Connection``).
    """

    status: HTTPStatus
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    def allow_origin(self, origin: str) -> None:
        """Let a page of ``origin`` read this answer (CORS)."""
        self.headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]


@dataclass(frozen=True, slots=True)
class EventStream:
    """A granted event stream: the server streams the session of :attr:`path`.

    ``path`` is a ``/jobs/<job_id>?...`` connect path carrying the token and the
    ``since_seq`` to resume from; ``origin`` gets CORS headers when set.
    """

    path: str
    origin: str | None


def _response(
    status: HTTPStatus,
    body: str,
    content_type: str = _JSON,
    *,
    cache: str = "no-store",
    allow_origin: str | None = None,
) -> Answer:
    data = body.encode()
    answer = Answer(
        status,
        data,
        [
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", cache),
            ("X-Content-Type-Options", "nosniff"),
        ],
    )
    if allow_origin is not None:
        answer.allow_origin(allow_origin)
    return answer


def _error(status: HTTPStatus, code: ErrorCode, message: str) -> Answer:
    metrics.error(code)
    return _response(status, error_frame(code, message))


def _refusal(rejection: Rejection) -> Answer:
    """A refused job id, token or job, as verify and event streams answer it."""
    return _error(
        _STATUS_OF.get(rejection.code, HTTPStatus.BAD_REQUEST), rejection.code, rejection.message
    )


def _not_allowed(method: str, allow: str) -> Answer:
    answer = _error(
        HTTPStatus.METHOD_NOT_ALLOWED, ErrorCode.METHOD_NOT_ALLOWED, f"{method} is not allowed here"
    )
    answer.headers.append(("Allow", allow))
    return answer


def check_metrics_token(token: str | None) -> None:
    """Check a ``metrics_token`` option, and turn metrics on when it serves them.

    Metrics go on the registry of :func:`immortus_async.metrics.enable`; when it
    was not called, on ``prometheus_client.REGISTRY``.

    Raises:
        ValueError: an empty token, or one that cannot be sent in a header.
        ImportError: ``prometheus-client`` is not installed (with the command).
    """
    if token is None:
        return
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("metrics_token must be a non-empty token of printable ASCII, no spaces")
    if metrics.enabled_registry() is None:
        metrics.enable()


def _events_path(path: str) -> bool:
    return path.startswith((JOBS_PATH, OWNERS_PATH)) and path.endswith(EVENTS_SUFFIX)


def _abort_path(path: str) -> bool:
    return (
        path.startswith(JOBS_PATH)
        and path.endswith(ABORT_SUFFIX)
        and len(path) > len(JOBS_PATH) + len(ABORT_SUFFIX)
    )


def _last_event_id(text: str | None) -> int | None:
    """A ``Last-Event-ID``: the seq of the last state the client has, if it reads as one."""
    if text is not None and text.isascii() and text.isdigit() and len(text) < 20:
        return int(text)
    return None


class HttpRoutes:
    """Answers the HTTP requests of the bridge and of the ASGI mount.

    Routes:
        ``GET /verify/<job_id>?token=...``: the job's state (its wire form), 200;
        401 without a token, 403 with a bad one or from a foreign origin, 404
        ``not_found`` for a job the app's ``authorize`` refuses, 400 for a bad
        job id, 503 when Redis does not answer. Errors have a JSON body
        ``{"type": "error", "code": ..., "message": ...}``.
        ``GET /healthz``: 200 ``{"status": "ok", "redis": "up", ...}`` (with
        :meth:`Tracker.stats`) when Redis
        answers PING within ``redis_timeout`` and every pub/sub hub of the
        tracker is connected (:attr:`Tracker.healthy`), else 503.
        ``GET /immortus.js``, ``/immortus.mjs``, ``/immortus.d.ts``: the browser
        client and its types, to any origin.
        ``/`` and ``/jobs/<job_id>``: websocket handshakes, 403 from a foreign origin.
        On the mount, a plain ``GET /jobs/<job_id>`` is verify, and
        ``GET /jobs/<job_id>/events`` an :class:`EventStream`, refused as verify is.
        ``POST /jobs/<job_id>/abort?token=...`` (bridge and mount): asks the job's
        queue to abort it, 200 ``{"type": "abort", "job_id": ..., "requested":
        true}`` (``false``: it had ended); 403 ``abort_disabled`` unless the
        server allows aborts; refused as verify is otherwise (404 ``not_found``
        for a job the caller may not see or no one knows); 501
        ``abort_unsupported`` for a queue that cannot abort.
        Anything else: 404.

    ``HEAD`` is answered as ``GET`` without the body (405 on the handshake
    paths); any other method gets 405 with an ``Allow`` header; a request with
    two ``Host`` or two ``Origin`` headers gets 400 ``bad_request``. A refused
    origin gets CORS headers, so that the page can read why, and is logged at
    WARNING (once per origin) with the option that allows it.

    Args:
        tracker: the server's tracker, for job states and Redis's health.
        gate: checks tokens, origins, and asks the app's ``authorize``.
        redis_timeout: seconds a request may wait on Redis.
        origin_option: how to allow an origin, for the refusal's message
            (``{origin}`` is replaced).
        metrics_token: serve ``GET /metrics`` to requests with ``Authorization:
            Bearer <metrics_token>`` (401 without it, 403 with another); None
            (the default): ``/metrics`` is 404, as any unknown path.
    """

    def __init__(
        self,
        tracker: Tracker,
        gate: Gatekeeper,
        *,
        redis_timeout: float,
        origin_option: str = (
            "start the bridge with --allowed-origin {origin} (serve(allowed_origins=[...]))"
        ),
        metrics_token: str | None = None,
    ) -> None:
        check_metrics_token(metrics_token)
        self._metrics_token = None if metrics_token is None else metrics_token.encode()
        self._tracker = tracker
        self._gate = gate
        self._redis_timeout = redis_timeout
        self._origin_option = origin_option
        folder = resources.files(__package__).joinpath("static")
        self._static = {
            path: folder.joinpath(name).read_text(encoding="utf-8")
            for path, name in STATIC_FILES.items()
        }
        # Origins already warned about: a misconfigured page loaded a thousand
        # times is one WARNING, and a client inventing origins cannot grow this.
        self._refused: set[str] = set()

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        """websockets' ``process_request``: an HTTP response, or None for a handshake."""
        answer = await self.route(request.method, request.path, request.headers.get_all)
        assert not isinstance(answer, EventStream)  # only the mount streams
        status = answer.status.value if answer is not None else "handshake"
        logger.debug(
            "%s %s from %s: %s", request.method, request.path, connection.remote_address, status
        )
        if answer is None:
            return None
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                *answer.headers,
            ]
        )
        # HEAD: the GET answer's status and headers, Content-Length included (RFC 9110 9.3.2).
        body = b"" if request.method == "HEAD" else answer.body
        return Response(answer.status.value, answer.status.phrase, headers, body)

    async def route(
        self,
        method: str,
        target: str,
        header: Callable[[str], list[str]],
        *,
        websocket: bool | None = None,
        scope: MutableMapping[str, Any] | None = None,
    ) -> Answer | EventStream | None:
        """The answer to a request for ``target`` (path and query, percent-encoded).

        Args:
            method: the request's method.
            target: the path relative to where the protocol is served, with its query.
            header: the values of a request header, by name.
            websocket: whether the request is a websocket handshake; None (the
                bridge): the path says, and a handshake path is always one.
            scope: the ASGI scope, for the app's ``authorize``.

        Returns:
            The answer; None to let a websocket handshake go on; an
            :class:`EventStream` for the server to stream.
        """
        parts = urlsplit(target)
        path = parts.path
        abort = method == "POST" and websocket is not True and _abort_path(path)
        handshake = path == "/" or path.startswith((JOBS_PATH, OWNERS_PATH))
        if websocket is not None:
            handshake = websocket
        stream = websocket is False and _events_path(path)
        # A websocket handshake is a GET (RFC 6455 4.1); websockets would accept
        # a HEAD. An event stream has no HEAD: its answer never ends.
        methods = ("GET",) if handshake or stream else ("GET", "HEAD")
        if method not in methods and not abort:
            return _not_allowed(method, ", ".join(methods))
        for name in _SINGLE_HEADERS:
            if len(header(name)) > 1:
                return _error(
                    HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, f"more than one {name} header"
                )
        origins = header("Origin")
        origin = origins[0] if origins else None
        hosts = header("Host")
        allowed = self._gate.origin_allowed(origin, hosts[0] if hosts else None)
        if abort:
            # A foreign page's POST carries the user's cookies (what an app's
            # authorize may trust): refused first, as a cross-site request forgery.
            if not allowed:
                assert origin is not None
                return self._foreign_origin(origin)
            abort_answer = await self._abort(
                path[len(JOBS_PATH) : -len(ABORT_SUFFIX)], parts.query, scope
            )
            if origin is not None:
                abort_answer.allow_origin(origin)
            return abort_answer
        if handshake and websocket is None and not header("Upgrade") and _events_path(path):
            # The bridge streams no events: say so readably (CORS), so that a
            # client moves on to /verify at once instead of retrying a failure.
            none = _error(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "no event streams here")
            if origin is not None and allowed:
                none.allow_origin(origin)
            return none
        if handshake:
            if allowed:
                return None
            assert origin is not None  # no Origin is always allowed
            return self._foreign_origin(origin)
        if stream and path.startswith(OWNERS_PATH):
            if not allowed:
                assert origin is not None
                return self._foreign_origin(origin)
            raw_owner = path[len(OWNERS_PATH) : len(path) - len(EVENTS_SUFFIX)]
            feed = await self._owner_events(raw_owner, parts.query, scope)
            if origin is not None and isinstance(feed, Answer):
                feed.allow_origin(origin)
            elif isinstance(feed, EventStream) and origin is not None:
                feed = EventStream(feed.path, origin)
            return feed
        job = None
        if path.startswith(VERIFY_PATH):
            job = path[len(VERIFY_PATH) :]
        elif websocket is False and path.startswith(JOBS_PATH):
            job = path[len(JOBS_PATH) : len(path) - len(EVENTS_SUFFIX) if stream else None]
        elif websocket is False and path in ("", "/"):
            return _error(
                HTTPStatus.UPGRADE_REQUIRED, ErrorCode.BAD_REQUEST, "open a websocket here"
            )
        if job is not None:
            if not allowed:
                assert origin is not None
                return self._foreign_origin(origin)
            if stream:
                answer: Answer | EventStream = await self._events(job, parts.query, header, scope)
            else:
                answer = await self._verify(job, parts.query, scope)
            if origin is not None and isinstance(answer, Answer):
                answer.allow_origin(origin)
            elif isinstance(answer, EventStream) and origin is not None:
                answer = EventStream(answer.path, origin)
            return answer
        if path == "/healthz":
            return await self._healthz()
        if path == METRICS_PATH and self._metrics_token is not None:
            return self._metrics(header("Authorization"))
        if path in self._static:
            return _response(
                HTTPStatus.OK,
                self._static[path],
                _TYPESCRIPT if path.endswith(".ts") else _JAVASCRIPT,
                cache="public, max-age=60",
                allow_origin="*",
            )
        return _error(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "no such path")

    async def _abort(
        self, raw_job_id: str, query: str, scope: MutableMapping[str, Any] | None
    ) -> Answer:
        job_id = check_job_id(unquote(raw_job_id))
        if isinstance(job_id, Rejection):
            return _refusal(job_id)
        token = parse_qs(query).get("token", [None])[0]
        answer = await abort_job(self._tracker, self._gate, Abort(job_id, token), scope)
        if isinstance(answer, Rejection):
            return _refusal(answer)
        return _response(HTTPStatus.OK, answer.frame())

    def _foreign_origin(self, origin: str) -> Answer:
        option = self._origin_option.format(origin="'*'" if origin == "null" else origin)
        if origin in self._refused or len(self._refused) >= _MAX_REFUSED:
            level = logging.DEBUG
        else:
            self._refused.add(origin)
            level = logging.WARNING
        logger.log(
            level,
            "refused a request from origin %r: %s to allow it",
            origin,
            option,
        )
        answer = _error(
            HTTPStatus.FORBIDDEN,
            ErrorCode.ORIGIN_NOT_ALLOWED,
            f"the origin {origin!r} is not allowed: {option}",
        )
        # Without this header the browser hides the answer from the page, which
        # then cannot tell a refusal from a server that is down.
        answer.allow_origin(origin)
        return answer

    async def _admit(
        self, raw_job_id: str, token: str | None, scope: MutableMapping[str, Any] | None
    ) -> str | Rejection:
        """The job id, once the token or the app's ``authorize`` lets the caller see it."""
        job_id = check_job_id(unquote(raw_job_id))
        if isinstance(job_id, Rejection):
            return job_id
        grant = self._gate.authorize(job_id, token)
        if isinstance(grant, Rejection):
            return grant
        if self._gate.asks_app(token) and not await self._gate.app_allows(scope, job_id):
            return not_found(job_id)
        return job_id

    async def _events(
        self,
        raw_job_id: str,
        query: str,
        header: Callable[[str], list[str]],
        scope: MutableMapping[str, Any] | None,
    ) -> Answer | EventStream:
        params = parse_qs(query)
        token = params.get("token", [None])[0]
        job_id = await self._admit(raw_job_id, token, scope)
        if isinstance(job_id, Rejection):
            return _refusal(job_id)
        # Last-Event-ID (an EventSource's reconnection) is newer than the query's
        # since_seq (the URL the page first opened).
        last = header("Last-Event-ID")
        since = _last_event_id(last[0]) if last else None
        connect = {"token": token, "since_seq": since}
        if since is None:
            connect["since_seq"] = params.get("since_seq", [None])[0]
        query = urlencode({name: value for name, value in connect.items() if value is not None})
        return EventStream(f"{JOBS_PATH}{quote(job_id, safe='')}?{query}", None)

    async def _owner_events(
        self, raw_owner: str, query: str, scope: MutableMapping[str, Any] | None
    ) -> Answer | EventStream:
        """An owner's feed as an event stream, once the token or the app's
        ``authorize_owner`` lets the caller follow it."""
        token = parse_qs(query).get("token", [None])[0]
        owner = check_owner(unquote(raw_owner))
        if isinstance(owner, Rejection):
            return _refusal(owner)
        grant = self._gate.authorize_owner(owner, token)
        if isinstance(grant, Rejection):
            return _refusal(grant)
        if self._gate.asks_app(token, owner=True) and not await self._gate.app_allows_owner(
            scope, owner
        ):
            return _refusal(owner_not_found(owner))
        connect = urlencode({"token": token} if token else {})
        return EventStream(f"{OWNERS_PATH}{quote(owner, safe='')}?{connect}", None)

    async def _verify(
        self, raw_job_id: str, query: str, scope: MutableMapping[str, Any] | None
    ) -> Answer:
        token = parse_qs(query).get("token", [None])[0]
        job_id = await self._admit(raw_job_id, token, scope)
        if isinstance(job_id, Rejection):
            return _refusal(job_id)
        try:
            async with asyncio.timeout(self._redis_timeout):
                state = await self._tracker.status(job_id)
        except _REDIS_DOWN:
            return _error(
                HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.REDIS_UNAVAILABLE, "Redis is unavailable"
            )
        except ImmortusError:
            logger.exception("reading job %r failed", job_id)
            return _error(
                HTTPStatus.INTERNAL_SERVER_ERROR, ErrorCode.INTERNAL_ERROR, "cannot read this job"
            )
        return _response(HTTPStatus.OK, state.to_json())

    def _metrics(self, authorization: list[str]) -> Answer:
        assert self._metrics_token is not None
        scheme, _, given = (authorization[0] if len(authorization) == 1 else "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            answer = _error(
                HTTPStatus.UNAUTHORIZED,
                ErrorCode.TOKEN_REQUIRED,
                "send Authorization: Bearer <metrics token>",
            )
            answer.headers.append(("WWW-Authenticate", 'Bearer realm="metrics"'))
            return answer
        if not hmac.compare_digest(given.strip().encode("latin-1", "replace"), self._metrics_token):
            return _error(HTTPStatus.FORBIDDEN, ErrorCode.TOKEN_INVALID, "not the metrics token")
        exposition = metrics.exposition()
        if exposition is None:  # metrics.disable() was called since
            return _error(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "metrics are off")
        body, content_type = exposition
        return Answer(
            HTTPStatus.OK,
            body,
            [
                ("Content-Length", str(len(body))),
                ("Content-Type", content_type),
                ("Cache-Control", "no-store"),
            ],
        )

    async def _healthz(self) -> Answer:
        redis = self._tracker.redis
        up = False
        if redis is not None:
            try:
                async with asyncio.timeout(self._redis_timeout):
                    up = bool(await redis.ping())
            except _REDIS_DOWN:
                up = False
        # A pub/sub connection down (or its task restarting) pushes nothing to
        # anyone, even while PING answers: take this bridge out of rotation.
        healthy = up and self._tracker.healthy
        body = {"status": "ok" if healthy else "unavailable", "redis": "up" if up else "down"}
        body.update(self._tracker.stats())  # how the queue's own endings reach waiters
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return _response(status, json.dumps(body))
