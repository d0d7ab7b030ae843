"""The bridge: a websockets server that pushes job states to browsers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from types import TracebackType

from redis.asyncio import BlockingConnectionPool, Redis
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as websockets_serve

from ..keys import DEFAULT_PREFIX
from ..registry import StrategySpec
from ..tracker import Tracker
from .auth import Gatekeeper
from .http import HttpRoutes
from .logs import RedactingLogger
from .protocol import CloseCode
from .session import Session

__all__ = ["DEFAULT_REDIS_URL", "Bridge", "BridgeStatistics", "serve"]

logger = RedactingLogger(logging.getLogger("immortus_async.bridge"))

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


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
        redis: a Redis URL (the bridge opens a bounded pool and closes it) or a
            ``redis.asyncio.Redis`` it uses as is.
        host: the interface to listen on; loopback by default.
        port: the port; 0 picks a free one (see :attr:`Bridge.port`).
        prefix: the prefix of the jobs' Redis keys and channels.
        tracking_strategy: the strategy that reads jobs; default the global or
            inferred one (``"redis_pub_sub"``).
        secret: the token signing secret; default ``$IMMORTUS_SECRET``.
        insecure_no_auth: follow any job without a token (development only).
        allowed_origins: browser origins allowed besides the bridge's own
            (``"*"``: any); other origins get HTTP 403. Requests without an
            ``Origin`` header (not browsers) are allowed.
        max_frame_size: the largest inbound frame, in bytes; a larger one
            closes the connection with code 1009.
        max_subscriptions: jobs one connection may follow at once.
        write_limit: bytes buffered per connection before a send waits.
        redis_connections: Redis connections for snapshots and ``/verify``
            (the pub/sub connection is separate).
        ping_interval: seconds between keepalive pings (None: no pings).
        ping_timeout: seconds without a pong before a connection is dropped.
        send_timeout: seconds a client may leave a send blocked (it does not
            read) before it is closed with code 4008.
        open_timeout: seconds a client has to complete the opening handshake.
        close_timeout: seconds the closing handshake may take before the TCP
            connection is aborted.
        redis_timeout: seconds ``/verify`` and ``/healthz`` wait on Redis.

    Raises:
        ValueError: no secret and ``insecure_no_auth`` is False, a secret
            shorter than 32 bytes, or a limit or timeout that is not positive.
    """

    def __init__(
        self,
        redis: Redis | str = DEFAULT_REDIS_URL,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        prefix: str = DEFAULT_PREFIX,
        tracking_strategy: StrategySpec | None = None,
        # Security
        secret: str | bytes | None = None,
        insecure_no_auth: bool = False,
        allowed_origins: Sequence[str] = (),
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
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of origins, not a string")
        for name, value in (
            ("max_frame_size", max_frame_size),
            ("max_subscriptions", max_subscriptions),
            ("write_limit", write_limit),
            ("redis_connections", redis_connections),
        ):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, seconds in (
            ("send_timeout", send_timeout),
            ("open_timeout", open_timeout),
            ("close_timeout", close_timeout),
            ("redis_timeout", redis_timeout),
        ):
            if seconds <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
        self._gate = Gatekeeper(
            secret=secret, insecure_no_auth=insecure_no_auth, allowed_origins=allowed_origins
        )
        self._redis_spec = redis
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
        self._redis: Redis | None = None
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
        outboxes = [session.outbox.statistics() for session in self._sessions]
        return BridgeStatistics(
            connections=len(self._sessions),
            subscriptions=sum(session.subscriptions for session in self._sessions),
            pending=sum(outbox.jobs for outbox in outboxes),
            replaced=sum(outbox.replaced for outbox in outboxes),
        )

    async def start(self) -> Bridge:
        """Connect to Redis lazily and start listening. Returns the bridge."""
        if self._server is not None:
            return self
        if isinstance(self._redis_spec, str):
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
        self._tracker = Tracker(
            self._redis, tracking_strategy=self._tracking_strategy, prefix=self._prefix
        )
        routes = HttpRoutes(self._tracker, self._gate, redis_timeout=self._redis_timeout)
        try:
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
            )
        except BaseException:
            await self._close_redis()
            raise
        logger.info("bridge listening on %s", self.url)
        return self

    async def _handle(self, websocket: ServerConnection) -> None:
        assert self._tracker is not None
        session = Session(
            websocket,
            self._tracker,
            self._gate,
            max_subscriptions=self._max_subscriptions,
            send_timeout=self._send_timeout,
            close_timeout=self._close_timeout,
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


serve = Bridge
"""``serve(...)`` is ``Bridge(...)``: ``async with serve(redis_url, port=8765) as bridge``."""
