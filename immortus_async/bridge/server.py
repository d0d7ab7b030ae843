"""The bridge: a websockets server that pushes job states to browsers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import CONNECTING, OPEN

from .. import metrics
from .._redis import CLUSTER_SCHEMES, Client, client_from
from ..exceptions import RedisUnavailable
from ..keys import DEFAULT_PREFIX
from ..registry import StrategySpec
from ..strategies._connected import address
from ..tracker import Tracker
from .auth import Gatekeeper
from .http import HttpRoutes, check_metrics_token
from .logs import RedactingLogger
from .protocol import CloseCode
from .session import Disconnected, Session

__all__ = ["DEFAULT_REDIS_URL", "Bridge", "BridgeStatistics", "check_options", "serve"]

logger = RedactingLogger(logging.getLogger("immortus_async.bridge"))

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def check_options(
    allowed_origins: Sequence[str], *, counts: Mapping[str, int], seconds: Mapping[str, float]
) -> None:
    """Check a server's options, the bridge's or the mount's, by their names.

    Raises:
        TypeError: ``allowed_origins`` is one string, not a list of them.
        ValueError: a count below 1, or a number of seconds that is not positive.
    """
    if isinstance(allowed_origins, str):
        raise TypeError("allowed_origins must be a list of origins, not a string")
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, number in seconds.items():
        if number <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {number!r}")


@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    """What a bridge serves now.

    ``connections``: open websocket connections; ``subscriptions``: jobs they
    follow; ``pending``: jobs with a frame waiting for a slow client; ``replaced``:
    states the open connections' clients skipped because a newer one came first.
    """

    connections: int
    subscriptions: int
    pending: int
    replaced: int

    @classmethod
    def of(cls, sessions: Iterable[Session]) -> BridgeStatistics:
        """The statistics of these open sessions."""
        sessions = list(sessions)
        outboxes = [session.outbox.statistics() for session in sessions]
        return cls(
            connections=len(sessions),
            subscriptions=sum(session.subscriptions for session in sessions),
            pending=sum(outbox.jobs for outbox in outboxes),
            replaced=sum(outbox.replaced for outbox in outboxes),
        )


# SO_LINGER on, with a zero timeout: close() drops what the kernel still holds
# for the peer and sends a reset, instead of a FIN queued behind that data.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class _Connection(ServerConnection):
    """websockets' server connection, bounded against clients that do not read.

    websockets answers pings (and close frames) as it reads them, whatever its
    write buffer holds; a client that sends pings and never reads would grow it
    without bound. Here reading stops while the write buffer is above
    ``write_limit`` and resumes below it, so such a client only fills its own
    socket buffers. A buffer that stays above the limit for ``send_timeout``
    seconds closes the connection with code 4008 and aborts it ``close_timeout``
    later.

    Every abort is a TCP reset, so that a socket whose peer does not read is gone
    at once instead of lingering in FIN-WAIT-1 with its unsent data.

    The handshake request is read alone: bytes that follow it in the same read
    (a second, pipelined HTTP request) wait until it is answered, so that they
    cannot be parsed as websocket frames before the answer is written. After a
    plain HTTP answer (``Connection: close``) they are discarded.
    """

    def __init__(self, *args: Any, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_timeout = send_timeout
        self._stalled: asyncio.TimerHandle | None = None
        # The last bytes of the request head seen, to find its end across reads.
        self._head_tail = b""
        # What came after the request head, until the request is answered.
        self._held: bytearray | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Make the transport's abort a reset (see the class docstring)."""
        super().connection_made(transport)
        abort = self.transport.abort
        sock = self.transport.get_extra_info("socket")

        def reset() -> None:
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            abort()

        # websockets calls transport.abort() itself (close timeouts, handshake
        # failures), so the transport's own method is what must reset.
        self.transport.abort = reset  # type: ignore[method-assign]

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """websockets' opening handshake; then what the client sent after it is read."""
        try:
            await super().handshake(*args, **kwargs)
        finally:
            self._release()  # the handshake failed or timed out before any answer

    def send_data(self) -> None:
        """Write what websockets has to send; once the answer is out, read on."""
        super().send_data()
        if self._held is not None and self.response is not None:
            if self.protocol.state is OPEN or self.protocol.eof_sent:
                # Now, not when handshake() returns: after a plain HTTP answer it
                # waits for the client to close, which it must be able to read.
                self._release()

    def data_received(self, data: bytes) -> None:
        """Feed websockets, holding back what follows the handshake request."""
        if self._held is not None:
            self._held += data
            return
        if self.protocol.state is CONNECTING and self.request is None:
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            if end == -1:
                self._head_tail = seen[-3:]
            else:
                cut = end + 4 - len(self._head_tail)
                data, self._held = data[:cut], bytearray(data[cut:])
                self.transport.pause_reading()
        super().data_received(data)
        if self.request is None:
            # Not a request websockets could parse: it has already answered or
            # given up; let it read on to the end of the connection.
            self._release()
        elif self.paused:
            # websockets may have written pongs past the limit: read no more pings.
            self.transport.pause_reading()

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if not self.paused:
            self.transport.resume_reading()
        if held and self.protocol.state is OPEN:
            super().data_received(bytes(held))

    def pause_writing(self) -> None:
        """The write buffer is over ``write_limit``: stop reading, start the clock."""
        super().pause_writing()
        self.transport.pause_reading()
        self._stalled = self.loop.call_later(self._send_timeout, self._close_stalled)

    def resume_writing(self) -> None:
        """The client read: read from it again, unless websockets' own queue is full."""
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        if self._held is None and not self.recv_messages.paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """websockets' teardown, and no timer left behind."""
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().connection_lost(exc)

    def _close_stalled(self) -> None:
        logger.warning(
            "closing a client that read nothing for %.1fs (%s)",
            self._send_timeout,
            self.remote_address,
        )
        if self.protocol.state is OPEN:
            metrics.slow_client_closed()  # once: the session's own timeout may have closed it
            # The close frame goes in the buffer behind everything else: a client
            # that starts reading now still learns why.
            self.protocol.fail(CloseCode.SLOW_CLIENT, "the client does not read")
            self.send_data()
        self._stalled = self.loop.call_later(self.close_timeout or 0, self.transport.abort)


class _Transport:
    """A websockets connection as a session's :class:`~.session.Transport`."""

    def __init__(self, websocket: ServerConnection, close_timeout: float) -> None:
        self._ws = websocket
        self._close_timeout = close_timeout
        # A frame that fits in the write buffer's high-water mark (UTF-8 is at
        # most 4 bytes a character, the header at most 14) cannot make send()
        # wait when the buffer is empty: it needs no timer.
        self._fits = (websocket.write_limit_high - 14) // 4

    @property
    def peer(self) -> object:
        """The client's address."""
        return self._ws.remote_address

    async def receive(self) -> str | bytes:
        """The next frame; :class:`Disconnected` once the connection is closed."""
        try:
            return await self._ws.recv()
        except ConnectionClosed:
            raise Disconnected from None

    async def send(self, frame: str, timeout: float) -> None:
        """Send ``frame``, timing the wait only when the write buffer may make one."""
        try:
            if len(frame) <= self._fits and not self._ws.transport.get_write_buffer_size():
                await self._ws.send(frame)
                return
            async with asyncio.timeout(timeout):
                await self._ws.send(frame)
        except ConnectionClosed:
            raise Disconnected from None

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close with ``code``; abort the TCP connection if the client does not read."""
        if code is CloseCode.SLOW_CLIENT and self._ws.protocol.state is OPEN:
            metrics.slow_client_closed()  # not when the connection's own timer closed it
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._ws.close(code, reason)
        except TimeoutError:
            self._ws.transport.abort()


class Bridge:
    """Serves job states to browsers over websockets, and ``/verify`` over HTTP.

    Not listening until started: ``async with serve(...) as bridge:``, or
    ``bridge = await serve(...)`` and later ``await bridge.aclose()``.

    >>> async with serve("redis://localhost:6379/0", port=8765) as bridge:  # doctest: +SKIP
    ...     await bridge.wait_closed()

    One :class:`~immortus_async.Tracker`, so one Redis pub/sub connection, serves
    every client; a job's channel is subscribed once however many follow it.
    The protocol, its error codes and close codes are in ``docs/protocol.md``.

    Args:
        redis: a Redis URL (the bridge opens a bounded pool and closes it), a
            ``redis+cluster://host:port`` URL (a Redis Cluster client, closed
            with the bridge), or a ``redis.asyncio.Redis`` or
            ``redis.asyncio.cluster.RedisCluster`` it uses as is.
        queue_redis: the queue's own Redis when tracking lives on another
            one: a URL or a ``redis.asyncio.Redis`` (an arq pool), passed to the
            bridge's :class:`~immortus_async.Tracker` (its ``queue_redis``).
            Default: ``redis``.
        host: the interface to listen on; loopback by default.
        port: the port; 0 picks a free one (see :attr:`Bridge.port`).
        prefix: the prefix of the jobs' Redis keys and channels.
        tracking_strategy: the strategy that reads jobs; default the global or
            inferred one (``"redis_pub_sub"``).
        secret: the token signing secret; default ``$IMMORTUS_SECRET``.
        insecure_no_auth: follow any job without a token (development only).
        allow_abort: take abort requests (the ``abort`` message and ``POST
            /jobs/<job_id>/abort``), authorised by the job's token; they call
            :meth:`Tracker.abort <immortus_async.Tracker.abort>` on the bridge's
            tracker, which aborts through the configured queue adapter on
            ``queue_redis`` (arq), else through ``queue``. Off by default: refused
            with ``abort_disabled``.
        queue: what the bridge's tracker aborts through (its ``queue``: a
            taskiq broker, a streaQ worker); default the queue Redis, all arq needs.
        allowed_origins: browser origins allowed besides the bridge's own
            (``"*"``: any); other origins get HTTP 403. Requests without an
            ``Origin`` header (not browsers) are allowed.
        metrics_token: serve the Prometheus metrics at ``GET /metrics`` to
            requests with ``Authorization: Bearer <metrics_token>``; metrics are
            turned on (:func:`immortus_async.metrics.enable`) if they are not.
            None (the default): no ``/metrics``.
        max_frame_size: the largest inbound frame, in bytes; a larger one
            closes the connection with code 1009.
        max_subscriptions: jobs one connection may follow at once.
        write_limit: bytes buffered per connection before a send waits; while
            more is buffered, nothing more is read from that client either (so
            its pings cannot pile up pongs).
        redis_connections: Redis connections for snapshots and ``/verify``
            (the pub/sub connection is separate).
        ping_interval: seconds between keepalive pings (None: no pings).
        ping_timeout: seconds without a pong before a connection is dropped.
        send_timeout: seconds a client may leave the bridge's writes blocked
            (it does not read: frames, pongs) before it is closed with code 4008;
            the TCP connection is reset ``close_timeout`` later.
        open_timeout: seconds a client has to complete the opening handshake.
        close_timeout: seconds the closing handshake may take before the TCP
            connection is aborted.
        redis_timeout: seconds ``/verify`` and ``/healthz`` wait on Redis.

    Raises:
        ValueError: no secret and ``insecure_no_auth`` is False, a secret
            shorter than 32 bytes, or a limit or timeout that is not positive.
        ImportError: a ``metrics_token`` without ``prometheus-client`` installed.
    """

    def __init__(
        self,
        redis: Client | str = DEFAULT_REDIS_URL,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        queue_redis: Redis | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        tracking_strategy: StrategySpec | None = None,
        # Security
        secret: str | bytes | None = None,
        insecure_no_auth: bool = False,
        allowed_origins: Sequence[str] = (),
        metrics_token: str | None = None,
        allow_abort: bool = False,
        queue: object | None = None,
        # Limits
        max_frame_size: int = 4096,
        max_subscriptions: int = 100,
        write_limit: int = 32 * 1024,
        redis_connections: int = 16,
        # Timeouts
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        send_timeout: float = 30.0,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        redis_timeout: float = 5.0,
    ) -> None:
        check_options(
            allowed_origins,
            counts={
                "max_frame_size": max_frame_size,
                "max_subscriptions": max_subscriptions,
                "write_limit": write_limit,
                "redis_connections": redis_connections,
            },
            seconds={
                "send_timeout": send_timeout,
                "open_timeout": open_timeout,
                "close_timeout": close_timeout,
                "redis_timeout": redis_timeout,
            },
        )
        self._gate = Gatekeeper(
            secret=secret,
            insecure_no_auth=insecure_no_auth,
            allowed_origins=allowed_origins,
            allow_abort=allow_abort,
        )
        check_metrics_token(metrics_token)
        self._metrics_token = metrics_token
        self._redis_spec = redis
        self._queue_redis = queue_redis
        self._queue = queue
        self._host, self._port = host, port
        self._prefix = prefix
        self._tracking_strategy = tracking_strategy
        self._max_frame_size = max_frame_size
        self._max_subscriptions = max_subscriptions
        self._write_limit = write_limit
        self._redis_connections = redis_connections
        self._ping = (ping_interval, ping_timeout)
        self._send_timeout = send_timeout
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._redis_timeout = redis_timeout
        self._redis: Client | None = None
        self._owns_cluster = False
        self._pool: BlockingConnectionPool | None = None
        self._tracker: Tracker | None = None
        self._server: Server | None = None
        self._sessions: set[Session] = set()
        self._closed = asyncio.Event()

    @property
    def tracker(self) -> Tracker:
        """The one Tracker (one Redis pub/sub connection) serving every client."""
        if self._tracker is None:
            raise RuntimeError("the bridge is not started: use 'async with serve(...)'")
        return self._tracker

    @property
    def port(self) -> int:
        """The port it listens on (the real one when started with port 0)."""
        if self._server is None:
            raise RuntimeError("the bridge is not started: use 'async with serve(...)'")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``ws://host:port``; the HTTP routes are on ``http://`` at the same place."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"ws://{host}:{self.port}"

    def statistics(self) -> BridgeStatistics:
        """Open connections, their subscriptions, and how far behind their clients are."""
        return BridgeStatistics.of(self._sessions)

    async def start(self) -> Bridge:
        """Check that Redis answers, then start listening. Returns the bridge.

        Raises:
            RedisUnavailable: Redis did not answer PING within ``redis_timeout``
                (the message names it, without its password); nothing listens.
        """
        if self._server is not None:
            return self
        if isinstance(self._redis_spec, str) and self._redis_spec.startswith(CLUSTER_SCHEMES):
            # A cluster client: a pool per node, closed with it.
            self._redis, self._owns_cluster = client_from(self._redis_spec)
        elif isinstance(self._redis_spec, str):
            # Bounded, so that a thousand clients subscribing at once queue for a
            # connection instead of opening a thousand.
            self._pool = BlockingConnectionPool.from_url(
                self._redis_spec,
                max_connections=self._redis_connections,
                timeout=self._redis_timeout,
            )
            self._redis = Redis(connection_pool=self._pool)
        else:
            self._redis = self._redis_spec
        try:
            await self._check_redis()
            self._tracker = Tracker(
                self._redis,
                tracking_strategy=self._tracking_strategy,
                prefix=self._prefix,
                queue_redis=self._queue_redis,
                queue=self._queue,
            )
            routes = HttpRoutes(
                self._tracker,
                self._gate,
                redis_timeout=self._redis_timeout,
                metrics_token=self._metrics_token,
            )
            self._server = await websockets_serve(
                self._handle,
                self._host,
                self._port,
                process_request=routes,
                server_header=None,
                compression=None,
                open_timeout=self._open_timeout,
                ping_interval=self._ping[0],
                ping_timeout=self._ping[1],
                close_timeout=self._close_timeout,
                max_size=self._max_frame_size,
                max_queue=4,
                write_limit=self._write_limit,
                logger=RedactingLogger(logging.getLogger("websockets.server")),
                # websockets documents create_connection as taking "a wrapper or a
                # subclass"; its annotation only names classes.
                create_connection=cast(
                    type[ServerConnection],
                    functools.partial(_Connection, send_timeout=self._send_timeout),
                ),
            )
        except BaseException:
            await self._close_redis()
            raise
        logger.info("bridge listening on %s", self.url)
        return self

    async def _check_redis(self) -> None:
        assert self._redis is not None
        try:
            async with asyncio.timeout(self._redis_timeout):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            # Not "listening": a bridge on a Redis that is not there serves nobody.
            raise RedisUnavailable(
                f"cannot reach Redis at {_describe(self._redis_spec)} "
                f"within {self._redis_timeout:g}s: {exc or type(exc).__name__}"
            ) from exc

    async def _handle(self, websocket: ServerConnection) -> None:
        assert self._tracker is not None
        session = Session(
            _Transport(websocket, self._close_timeout),
            self._tracker,
            self._gate,
            path=websocket.request.path if websocket.request is not None else None,
            max_subscriptions=self._max_subscriptions,
            send_timeout=self._send_timeout,
        )
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)

    async def aclose(self) -> None:
        """Stop listening, close every connection (code 1001), then close Redis.

        Clients that do not read are aborted after ``close_timeout``. Idempotent.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        server, self._server = self._server, None
        if server is not None:
            # Sessions close their own connections: websockets' close() could wait
            # forever on a client that reads nothing.
            server.close(close_connections=False)
            closing = [
                session.close(CloseCode.GOING_AWAY, "the bridge is shutting down")
                for session in list(self._sessions)
            ]
            await asyncio.gather(*closing)
            await server.wait_closed()
        await self._close_redis()
        logger.info("bridge closed")

    async def _close_redis(self) -> None:
        if self._tracker is not None:
            await self._tracker.aclose()
        if self._pool is not None:
            assert self._redis is not None
            await self._redis.aclose()
            await self._pool.disconnect()
        if self._owns_cluster and self._redis is not None:
            await self._redis.aclose()

    async def wait_closed(self) -> None:
        """Return once :meth:`aclose` has been called (from elsewhere)."""
        await self._closed.wait()

    def __await__(self) -> Generator[None, None, Bridge]:
        return self.start().__await__()

    async def __aenter__(self) -> Bridge:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _describe(redis: Client | str) -> str:
    """Where ``redis`` points, for a message: its URL or address without a password."""
    if isinstance(redis, str):
        parts = urlsplit(redis)
        if parts.password is None:
            return redis
        netloc = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{parts.username or ''}:***@{netloc}").geturl()
    if not isinstance(redis, Redis):
        return address(redis)
    options = redis.connection_pool.connection_kwargs
    if "path" in options:
        return f"unix://{options['path']}"
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"


serve = Bridge
"""``serve(...)`` is ``Bridge(...)``: ``async with serve(redis_url, port=8765) as bridge``."""
