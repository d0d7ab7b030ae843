"""The browser side inside the user's own ASGI app: websocket, event streams and verify.

>>> from fastapi import FastAPI  # doctest: +SKIP
>>> import immortus_async.asgi
>>> app = FastAPI()  # doctest: +SKIP
>>> app.mount("/immortus", immortus_async.asgi.app(tracker))  # doctest: +SKIP

Under the mount, the same routes and protocol as the bridge (``docs/protocol.md``),
served by the same sessions, limits and error codes; what this module adds is the
ASGI face, and ``GET /jobs/<job_id>`` (verify) and ``GET /jobs/<job_id>/events``
(Server-Sent Events). Plain ASGI: it needs no web framework, so any ASGI server
or framework that can mount an ASGI app serves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import unquote

from . import metrics
from .bridge.auth import Authorize, AuthorizeOwner, Gatekeeper
from .bridge.http import Answer, EventStream, HttpRoutes
from .bridge.logs import RedactingLogger
from .bridge.protocol import CloseCode
from .bridge.server import BridgeStatistics, check_options
from .bridge.session import Disconnected, Session
from .tracker import Tracker

__all__ = ["App", "app", "route_target"]

logger = RedactingLogger(logging.getLogger("immortus_async.asgi"))

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Errors an ASGI server raises from send() once the client is gone: uvicorn's
# ClientDisconnected is an OSError; a send after the close is a RuntimeError.
_GONE = (OSError, RuntimeError)
# A longer path cannot hold a valid job id (200 characters, percent-encoded).
_MAX_TARGET = 4096


def app(
    tracker: Tracker,
    *,
    # Security
    secret: str | bytes | None = None,
    authorize: Authorize | None = None,
    authorize_owner: AuthorizeOwner | None = None,
    allowed_origins: Sequence[str] = (),
    insecure_no_auth: bool = False,
    metrics_token: str | None = None,
    allow_abort: bool = False,
    # Limits
    max_frame_size: int = 4096,
    max_subscriptions: int = 100,
    # Timeouts
    send_timeout: float = 30.0,
    close_timeout: float = 5.0,
    redis_timeout: float = 5.0,
) -> App:
    """The ASGI app to mount: ``app.mount("/immortus", immortus_async.asgi.app(tracker))``.

    Args:
        tracker: the app's open :class:`~immortus_async.Tracker` (the app owns
            it: open it in its lifespan); one Redis pub/sub connection serves
            every client.
        secret: the token signing secret; default ``$IMMORTUS_SECRET``.
        authorize: the app's own check, asked about every request without a
            token: ``authorize(scope, job_id)``, sync or async, with the ASGI
            scope of the request or websocket (its cookies, the session a
            middleware put in it). A job it refuses is answered exactly as a job
            that does not exist: HTTP 404 ``not_found``, or on a websocket an
            ``error`` frame ``not_found`` ending that subscription.
        authorize_owner: the app's check for owner feeds, asked about every
            feed requested without a token: ``authorize_owner(scope, owner)``,
            sync or async (e.g. "is ``owner`` the user of this session?"). A
            refused feed is answered as ``authorize`` refuses a job
            (``not_found``). Without it, only an owner token opens a feed.
        allowed_origins: browser origins allowed besides the app's own (``"*"``: any).
        insecure_no_auth: follow any job without a token (development only).
        metrics_token: serve the Prometheus metrics at ``GET <mount>/metrics``
            to requests with ``Authorization: Bearer <metrics_token>``, turning
            them on (:func:`immortus_async.metrics.enable`) if they are not;
            None (the default): no ``/metrics``.
        allow_abort: take abort requests, the websocket's ``abort`` message and
            ``POST .../jobs/<job_id>/abort``, authorised as a subscription is (a
            token for the job, or ``authorize``, which sees the request's method
            and path in the scope and may be stricter for an abort); they call
            :meth:`Tracker.abort <immortus_async.Tracker.abort>`. Off by default:
            refused with ``abort_disabled``.
        max_frame_size: the largest inbound websocket frame, in bytes; a larger
            one closes the connection with code 1009. The ASGI server reads the
            frame first: keep its own limit low too (uvicorn ``--ws-max-size``).
        max_subscriptions: jobs one websocket connection may follow at once.
        send_timeout: seconds a client may leave a send blocked before it is
            closed (code 4008 on a websocket; an event stream just ends).
        close_timeout: seconds a close may take.
        redis_timeout: seconds verify and ``/healthz`` wait on Redis.

    Keepalive pings and the inbound size limit of the websocket framing are the
    ASGI server's (uvicorn's ``--ws-ping-interval``, ``--ws-max-size``).

    Raises:
        ValueError: no secret, no ``authorize`` and ``insecure_no_auth`` is False;
            a secret shorter than 32 bytes; a limit or timeout that is not positive.
        ImportError: a ``metrics_token`` without ``prometheus-client`` installed.
    """
    return App(
        tracker,
        secret=secret,
        authorize=authorize,
        authorize_owner=authorize_owner,
        allowed_origins=allowed_origins,
        insecure_no_auth=insecure_no_auth,
        metrics_token=metrics_token,
        allow_abort=allow_abort,
        max_frame_size=max_frame_size,
        max_subscriptions=max_subscriptions,
        send_timeout=send_timeout,
        close_timeout=close_timeout,
        redis_timeout=redis_timeout,
    )


class App:
    """The ASGI app :func:`app` returns; see there for its arguments."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        secret: str | bytes | None,
        authorize: Authorize | None,
        authorize_owner: AuthorizeOwner | None,
        allowed_origins: Sequence[str],
        insecure_no_auth: bool,
        metrics_token: str | None,
        max_frame_size: int,
        max_subscriptions: int,
        send_timeout: float,
        close_timeout: float,
        redis_timeout: float,
        allow_abort: bool = False,
    ) -> None:
        check_options(
            allowed_origins,
            counts={"max_frame_size": max_frame_size, "max_subscriptions": max_subscriptions},
            seconds={
                "send_timeout": send_timeout,
                "close_timeout": close_timeout,
                "redis_timeout": redis_timeout,
            },
        )
        self.tracker = tracker
        self._gate = Gatekeeper(
            secret=secret,
            insecure_no_auth=insecure_no_auth,
            allowed_origins=allowed_origins,
            authorize=authorize,
            authorize_owner=authorize_owner,
            allow_abort=allow_abort,
        )
        self._routes = HttpRoutes(
            tracker,
            self._gate,
            redis_timeout=redis_timeout,
            origin_option="pass allowed_origins=[{origin!r}] to immortus_async.asgi.app()",
            metrics_token=metrics_token,
        )
        self._max_frame_size = max_frame_size
        self._max_subscriptions = max_subscriptions
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._sessions: set[Session] = set()

    def statistics(self) -> BridgeStatistics:
        """Open websocket connections and event streams, as the bridge counts them."""
        return BridgeStatistics.of(self._sessions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: HTTP, websocket, or (run alone) the lifespan."""
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        target = route_target(scope)
        headers = _Headers(scope.get("headers", ()))
        websocket = kind == "websocket"
        answer = await self._routes.route(
            scope.get("method", "GET"), target, headers.get_all, websocket=websocket, scope=scope
        )
        if websocket:
            if answer is None:
                await self._websocket(scope, receive, send, target)
            else:
                assert isinstance(answer, Answer)
                await _refuse_handshake(scope, send, answer)
        elif isinstance(answer, EventStream):
            await self._events(scope, receive, send, answer)
        elif answer is not None:
            await _answer(send, answer, head=scope.get("method") == "HEAD")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, target: str) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return  # the client left before the handshake ended
        await send({"type": "websocket.accept"})
        transport = _WebsocketTransport(
            receive, send, _peer(scope), self._max_frame_size, self._close_timeout
        )
        await self._serve(
            Session(
                transport,
                self.tracker,
                self._gate,
                path=target,
                scope=scope,
                max_subscriptions=self._max_subscriptions,
                send_timeout=self._send_timeout,
            )
        )

    async def _events(
        self, scope: Scope, receive: Receive, send: Send, stream: EventStream
    ) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            # Proxies that buffer answers (nginx) would hold every event back.
            (b"x-accel-buffering", b"no"),
        ]
        if stream.origin is not None:
            headers += [
                (b"access-control-allow-origin", stream.origin.encode("latin-1")),
                (b"vary", b"Origin"),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        session = Session(
            _EventTransport(send, _peer(scope), self._close_timeout),
            self.tracker,
            self._gate,
            path=stream.path,
            scope=scope,
            max_subscriptions=1,
            send_timeout=self._send_timeout,
            once=True,
            app_checked=True,
        )
        serving = asyncio.create_task(self._serve(session), name="immortus-asgi-events")
        # The session reads nothing from an event stream: watch for the client
        # leaving, which ends its subscription at once instead of at the job's end.
        leaving = asyncio.create_task(_disconnected(receive), name="immortus-asgi-disconnect")
        try:
            await asyncio.wait([serving, leaving], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, leaving):
                task.cancel()
            await asyncio.gather(serving, leaving, return_exceptions=True)

    async def _serve(self, session: Session) -> None:
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)


class _Headers:
    """An ASGI scope's headers, read as the routes read them."""

    def __init__(self, raw: Any) -> None:
        self._raw: list[tuple[bytes, bytes]] = list(raw)

    def get_all(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [value.decode("latin-1") for header, value in self._raw if header.lower() == key]


def route_target(scope: Scope) -> str:
    """The request's path under the mount, percent-encoded as sent, with its query.

    ``raw_path`` keeps a job id's encoded ``/`` (``a%2Fb``) apart from a path's
    ``/``; servers that do not give it leave the decoded path, where it cannot be.
    """
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    # Starlette's Mount keeps the whole path and extends root_path; other
    # servers and frameworks strip the root from the path.
    relative = path[len(root) :] if root and path.startswith(root) else path
    target = relative
    raw = scope.get("raw_path")
    if raw and len(raw) <= _MAX_TARGET:
        encoded = raw.decode("latin-1")
        # The raw form of `relative`: the suffix of raw_path that decodes to it,
        # starting at one of its slashes (or empty, at the mount's root).
        start = len(encoded)
        while start > 0:
            start = encoded.rfind("/", 0, start)
            if start < 0:
                break
            if unquote(encoded[start:]) == relative:
                target = encoded[start:]
                break
            if unquote(encoded[start:]).count("/") > relative.count("/"):
                break
    query = scope.get("query_string", b"")
    return f"{target}?{query.decode('latin-1')}" if query else target


def _peer(scope: Scope) -> object:
    client = scope.get("client")
    return tuple(client) if client else None


async def _answer(send: Send, answer: Answer, *, head: bool) -> None:
    headers = [(name.lower().encode(), value.encode("latin-1")) for name, value in answer.headers]
    await send({"type": "http.response.start", "status": answer.status.value, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else answer.body})


async def _refuse_handshake(scope: Scope, send: Send, answer: Answer) -> None:
    """Answer a refused websocket handshake with its HTTP status and body, if the
    server lets the app do that (ASGI's websocket.http.response extension); else
    close it, which the server answers with 403."""
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(n.lower().encode(), v.encode("latin-1")) for n, v in answer.headers]
        await send(
            {
                "type": "websocket.http.response.start",
                "status": answer.status.value,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": answer.body})
    else:
        await send({"type": "websocket.close", "code": CloseCode.NORMAL_CLOSURE})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # a request body: an event stream reads none


async def _lifespan(receive: Receive, send: Send) -> None:
    """Run alone (``uvicorn immortus_async...``), the app has nothing to start or stop:
    the tracker is the caller's."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _Transport:
    """What both ASGI transports share: the ``send`` channel, bounded by timeouts."""

    def __init__(self, send: Send, peer: object, close_timeout: float) -> None:
        self._send = send
        self._peer = peer
        self._close_timeout = close_timeout
        self._closed = False

    @property
    def peer(self) -> object:
        """The client's address."""
        return self._peer

    async def _push(self, message: Message, timeout: float) -> None:
        if self._closed:
            raise Disconnected
        try:
            async with asyncio.timeout(timeout):
                await self._send(message)
        except TimeoutError:
            raise  # an OSError too, but the client is there: it does not read
        except _GONE:
            self._closed = True
            raise Disconnected from None

    def _last(self, code: CloseCode, reason: str) -> Message:
        raise NotImplementedError

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close with ``code``, once; give up after the close timeout."""
        if self._closed:
            return
        if code is CloseCode.SLOW_CLIENT:
            metrics.slow_client_closed()
        last = self._last(code, reason)
        try:
            await self._push(last, self._close_timeout)
        except (TimeoutError, Disconnected):
            pass  # the client is gone or does not read: the server drops it when we return
        self._closed = True


class _WebsocketTransport(_Transport):
    """An ASGI websocket as a session's :class:`~immortus_async.bridge.Transport`."""

    def __init__(
        self, receive: Receive, send: Send, peer: object, max_size: int, close_timeout: float
    ) -> None:
        super().__init__(send, peer, close_timeout)
        self._receive = receive
        self._max_size = max_size
        # Set by close(): a client that reads nothing may never answer the close,
        # nor send anything, so the server's receive() would wait for ever.
        self._closing = asyncio.Event()

    async def receive(self) -> str | bytes:
        """The next frame; a frame over the size limit closes the connection (1009).

        Raises:
            Disconnected: the client left, or :meth:`close` was called.
        """
        while not self._closed:
            event = await self._next_event()
            if event["type"] == "websocket.disconnect":
                self._closed = True
                break
            if event["type"] != "websocket.receive":
                continue
            data: str | bytes | None = event.get("text")
            if data is None:
                data = event.get("bytes") or b""
            size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "replace"))
            if size > self._max_size:
                await self.close(CloseCode.MESSAGE_TOO_BIG, "frame too big")
                break
            return data
        raise Disconnected

    async def _next_event(self) -> Message:
        event = asyncio.ensure_future(self._receive())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait([event, closing], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not event.done():
                event.cancel()  # an ASGI receive() has no effect until it returns
        if event.cancelled():
            raise Disconnected
        return event.result()

    async def send(self, frame: str, timeout: float) -> None:
        """Send ``frame``; TimeoutError when the server's send stays blocked ``timeout``."""
        await self._push({"type": "websocket.send", "text": frame}, timeout)

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close with ``code``, and end a :meth:`receive` that waits."""
        self._closing.set()
        await super().close(code, reason)

    def _last(self, code: CloseCode, reason: str) -> Message:
        return {"type": "websocket.close", "code": code, "reason": reason}


class _EventTransport(_Transport):
    """An HTTP response body as an event stream, the transport of a ``once`` session.

    Each frame is one event, its data the websocket frame unchanged: a state with
    ``id: <seq>`` (what ``Last-Event-ID`` resumes from), an owner feed's state as
    ``event: owner_state``, an error as ``event: error``.
    """

    async def receive(self) -> str | bytes:
        """Nothing is read from an event stream (a ``once`` session never asks)."""
        raise Disconnected

    async def send(self, frame: str, timeout: float) -> None:
        """Write ``frame`` as one event."""
        message = json.loads(frame)
        if message["type"] == "state":
            event = f"id: {message['seq']}\ndata: {frame}\n\n"
        elif message["type"] == "owner_state":
            # No id: a feed resumes with a fresh snapshot, not from a seq.
            event = f"event: owner_state\ndata: {frame}\n\n"
        else:
            event = f"event: error\ndata: {frame}\n\n"
        await self._push(
            {"type": "http.response.body", "body": event.encode(), "more_body": True}, timeout
        )

    def _last(self, code: CloseCode, reason: str) -> Message:
        # The close code has no HTTP form: the last event said why.
        return {"type": "http.response.body", "body": b""}
