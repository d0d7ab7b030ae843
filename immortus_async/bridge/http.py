"""Plain HTTP on the websocket port: ``/verify``, ``/healthz`` and the browser client.

websockets hands every request to :meth:`HttpRoutes.__call__` (its
``process_request`` hook) before the websocket handshake: returning a response
answers the request as plain HTTP, returning None lets the handshake go on.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from http import HTTPStatus
from importlib import resources
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..exceptions import ImmortusError
from ..tracker import Tracker
from .auth import Gatekeeper
from .logs import RedactingLogger
from .protocol import JOBS_PATH, ErrorCode, Rejection, check_job_id, error_frame

__all__ = ["STATIC_FILES", "VERIFY_PATH", "HttpRoutes"]

logger = RedactingLogger(logging.getLogger("immortus_async.bridge"))

VERIFY_PATH = "/verify/"
"""``GET /verify/<job_id>?token=...`` answers the job's state as JSON."""

STATIC_FILES = {"/immortus.js": "immortus.js", "/immortus.mjs": "immortus.mjs"}
"""The browser client: a classic script, and an ES module that wraps it."""

_JSON = "application/json"
_JAVASCRIPT = "text/javascript; charset=utf-8"
_REDIS_DOWN = (RedisError, OSError, TimeoutError)
_SINGLE_HEADERS = ("Host", "Origin")
_MAX_REFUSED = 1000
_STATUS_OF = {
    ErrorCode.TOKEN_REQUIRED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.TOKEN_INVALID: HTTPStatus.FORBIDDEN,
    ErrorCode.TOKEN_EXPIRED: HTTPStatus.FORBIDDEN,
}


def _response(
    status: HTTPStatus,
    body: str,
    content_type: str = _JSON,
    *,
    cache: str = "no-store",
    allow_origin: str | None = None,
) -> Response:
    data = body.encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", cache),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    response = Response(status.value, status.phrase, headers, data)
    if allow_origin is not None:
        _allow_origin(response, allow_origin)
    return response


def _error(status: HTTPStatus, code: ErrorCode, message: str) -> Response:
    return _response(status, error_frame(code, message))


def _not_allowed(method: str, allow: str) -> Response:
    response = _error(
        HTTPStatus.METHOD_NOT_ALLOWED, ErrorCode.METHOD_NOT_ALLOWED, f"{method} is not allowed here"
    )
    response.headers["Allow"] = allow
    return response


def _allow_origin(response: Response, origin: str) -> None:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"


class HttpRoutes:
    """Answers the bridge's HTTP requests; lets websocket handshakes through.

    Routes:
        ``GET /verify/<job_id>?token=...``: the job's state (its wire form), 200;
        401 without a token, 403 with a bad one or from a foreign origin, 400
        for a bad job id, 503 when Redis does not answer. Errors have a JSON
        body ``{"type": "error", "code": ..., "message": ...}``.
        ``GET /healthz``: 200 ``{"status": "ok", "redis": "up"}`` when Redis
        answers PING within ``redis_timeout`` and every pub/sub hub of the
        tracker is connected (:attr:`Tracker.healthy`), else 503.
        ``GET /immortus.js``, ``GET /immortus.mjs``: the browser client, to any origin.
        ``/`` and ``/jobs/<job_id>``: websocket handshakes, 403 from a foreign origin.
        Anything else: 404.

    ``HEAD`` is answered as ``GET`` without the body (405 on the handshake
    paths); any other method gets 405 with an ``Allow`` header; a request with
    two ``Host`` or two ``Origin`` headers gets 400 ``bad_request``. A refused
    origin gets CORS headers, so that the page can read why, and is logged at
    WARNING (once per origin) with the option that allows it.

    Args:
        tracker: the bridge's tracker, for job states and Redis's health.
        gate: checks tokens and origins.
        redis_timeout: seconds a request may wait on Redis.
    """

    def __init__(self, tracker: Tracker, gate: Gatekeeper, *, redis_timeout: float) -> None:
        self._tracker = tracker
        self._gate = gate
        self._redis_timeout = redis_timeout
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
        response = await self._route(request)
        if response is not None and request.method == "HEAD":
            # The GET answer's status and headers, Content-Length included (RFC 9110 9.3.2).
            response = Response(response.status_code, response.reason_phrase, response.headers)
        status = response.status_code if response is not None else "handshake"
        logger.debug(
            "%s %s from %s: %s", request.method, request.path, connection.remote_address, status
        )
        return response

    async def _route(self, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path
        handshake = path == "/" or path.startswith(JOBS_PATH)
        # A websocket handshake is a GET (RFC 6455 4.1); websockets would accept a HEAD.
        methods = ("GET",) if handshake else ("GET", "HEAD")
        if request.method not in methods:
            return _not_allowed(request.method, ", ".join(methods))
        for name in _SINGLE_HEADERS:
            if len(request.headers.get_all(name)) > 1:
                return _error(
                    HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, f"more than one {name} header"
                )
        origin = request.headers.get("Origin")
        allowed = self._gate.origin_allowed(origin, request.headers.get("Host"))
        if handshake:
            if allowed:
                return None
            assert origin is not None  # no Origin is always allowed
            return self._foreign_origin(origin)
        if path.startswith(VERIFY_PATH):
            if not allowed:
                assert origin is not None
                return self._foreign_origin(origin)
            response = await self._verify(unquote(path[len(VERIFY_PATH) :]), parts.query)
            if origin is not None:
                _allow_origin(response, origin)
            return response
        if path == "/healthz":
            return await self._healthz()
        if path in self._static:
            return _response(
                HTTPStatus.OK,
                self._static[path],
                _JAVASCRIPT,
                cache="public, max-age=60",
                allow_origin="*",
            )
        return _error(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "no such path")

    def _foreign_origin(self, origin: str) -> Response:
        option = "--allowed-origin '*'" if origin == "null" else f"--allowed-origin {origin}"
        if origin in self._refused or len(self._refused) >= _MAX_REFUSED:
            level = logging.DEBUG
        else:
            self._refused.add(origin)
            level = logging.WARNING
        logger.log(
            level,
            "refused a request from origin %r: start the bridge with %s "
            "(serve(allowed_origins=[...])) to allow it",
            origin,
            option,
        )
        response = _error(
            HTTPStatus.FORBIDDEN,
            ErrorCode.ORIGIN_NOT_ALLOWED,
            f"the origin {origin!r} is not allowed: start the bridge with {option}",
        )
        # Without this header the browser hides the answer from the page, which
        # then cannot tell a refusal from a bridge that is down.
        _allow_origin(response, origin)
        return response

    async def _verify(self, raw_job_id: str, query: str) -> Response:
        job_id = check_job_id(raw_job_id)
        if isinstance(job_id, Rejection):
            return _error(HTTPStatus.BAD_REQUEST, job_id.code, job_id.message)
        token = parse_qs(query).get("token", [None])[0]
        grant = self._gate.authorize(job_id, token)
        if isinstance(grant, Rejection):
            return _error(_STATUS_OF[grant.code], grant.code, grant.message)
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

    async def _healthz(self) -> Response:
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
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return _response(status, json.dumps(body))
