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
    if allow_origin is not None:
        headers["Access-Control-Allow-Origin"] = allow_origin
        headers["Vary"] = "Origin"
    return Response(status.value, status.phrase, headers, data)


def _error(status: HTTPStatus, code: ErrorCode, message: str) -> Response:
    return _response(status, error_frame(code, message))


class HttpRoutes:
    """Answers the bridge's HTTP requests; lets websocket handshakes through.

    Routes:
        ``GET /verify/<job_id>?token=...``: the job's state (its wire form), 200;
        401 without a token, 403 with a bad one or from a foreign origin, 400
        for a bad job id, 503 when Redis does not answer. Errors have a JSON
        body ``{"type": "error", "code": ..., "message": ...}``.
        ``GET /healthz``: 200 ``{"status": "ok", "redis": "up"}`` when Redis
        answers PING within ``redis_timeout``, else 503 with ``"redis": "down"``.
        ``GET /immortus.js``, ``GET /immortus.mjs``: the browser client, to any origin.
        ``/`` and ``/jobs/<job_id>``: websocket handshakes, 403 from a foreign origin.
        Anything else: 404.

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

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        """websockets' ``process_request``: an HTTP response, or None for a handshake."""
        parts = urlsplit(request.path)
        path = parts.path
        origin = request.headers.get("Origin")
        allowed = self._gate.origin_allowed(origin, request.headers.get("Host"))
        response: Response | None
        if path == "/" or path.startswith(JOBS_PATH):
            response = None if allowed else self._foreign_origin()
        elif path.startswith(VERIFY_PATH):
            if allowed:
                response = await self._verify(unquote(path[len(VERIFY_PATH) :]), parts.query)
                if origin is not None:
                    response.headers["Access-Control-Allow-Origin"] = origin
                    response.headers["Vary"] = "Origin"
            else:
                response = self._foreign_origin()
        elif path == "/healthz":
            response = await self._healthz()
        elif path in self._static:
            response = _response(
                HTTPStatus.OK,
                self._static[path],
                _JAVASCRIPT,
                cache="public, max-age=60",
                allow_origin="*",
            )
        else:
            response = _error(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "no such path")
        status = response.status_code if response is not None else "handshake"
        logger.debug("GET %s from %s: %s", request.path, connection.remote_address, status)
        return response

    def _foreign_origin(self) -> Response:
        return _error(
            HTTPStatus.FORBIDDEN,
            ErrorCode.ORIGIN_NOT_ALLOWED,
            "this origin is not allowed: start the bridge with --allowed-origin",
        )

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
        body = {"status": "ok" if up else "unavailable", "redis": "up" if up else "down"}
        status = HTTPStatus.OK if up else HTTPStatus.SERVICE_UNAVAILABLE
        return _response(status, json.dumps(body))
