"""One Redis pub/sub connection shared by every waiter of a process.

Why not redis-py's ``PubSub``: its first ``subscribe()`` opens the connection, so
concurrent first subscribers can each open one; its ``listen()`` never pings, so a
dead peer goes unnoticed; and it has no notion of "this channel's SUBSCRIBE has
been confirmed", which a waiter needs before it may read its snapshot. Here a
single reader task owns the connection (and reconnects it), a single writer task
batches SUBSCRIBE/UNSUBSCRIBE commands, and channels are reference-counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .exceptions import ImmortusError, TrackerClosed

__all__ = ["PubSubHub", "Sink", "connection_factory"]

logger = logging.getLogger("immortus_async.pubsub")

# RedisError covers a server that answers garbage while starting or stopping.
_LOST = (RedisError, ConnectionError, OSError, TimeoutError)


class Sink(Protocol):
    """Where the hub delivers a channel's messages: a :class:`StateBuffer` fits."""

    def push(self, item: Any) -> None: ...
    def fail(self, error: BaseException) -> None: ...
    def request_resync(self) -> None: ...


def connection_factory(redis: Redis) -> Callable[[], Awaitable[AbstractConnection]]:
    """Open dedicated connections with ``redis``'s settings, fit for pub/sub.

    A subscribed connection stays silent between messages, so no read timeout; the
    hub's own PING does the health check (redis-py's would read our messages).
    """
    pool = redis.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(socket_timeout=None, health_check_interval=0, decode_responses=False)

    async def connect() -> AbstractConnection:
        conn: AbstractConnection = pool.connection_class(**kwargs)
        await conn.connect()  # type: ignore[no-untyped-call]
        return conn

    return connect


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PubSubHub:
    """Delivers each channel's messages to every sink subscribed to it.

    Args:
        connect: opens a new connected Redis connection (:func:`connection_factory`).
        ping_interval: seconds of silence after which the hub sends PING; no answer
            within as long again means the connection is dead.
        backoff_min, backoff_max: reconnect delays, doubling from the first to the second.

    After a lost connection the hub reconnects, resubscribes every channel in one
    command and, once each is confirmed, asks its sinks to resync: messages
    published meanwhile are gone, the sinks re-read the state instead.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[AbstractConnection]],
        *,
        ping_interval: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        self._connect = connect
        self._ping_interval = ping_interval
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._sinks: dict[str, set[Sink]] = {}
        self._decoders: dict[str, Callable[[bytes], Any]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._inflight: dict[str, int] = {}
        self._resync_on_confirm: set[str] = set()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._dirty = asyncio.Event()
        self._conn: AbstractConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.connected = asyncio.Event()
        """Set while the hub has a live, subscribed connection."""

    # Public API

    @contextlib.asynccontextmanager
    async def subscription(
        self, channel: str, sink: Sink, decode: Callable[[bytes], Any]
    ) -> AsyncIterator[None]:
        """Subscribe ``sink`` to ``channel`` for the duration of the block.

        Entering returns once Redis has confirmed the channel's SUBSCRIBE, so a
        state read after that cannot miss a message published after it.
        """
        await self.subscribe(channel, sink, decode)
        try:
            yield
        finally:
            self.unsubscribe(channel, sink)

    async def subscribe(self, channel: str, sink: Sink, decode: Callable[[bytes], Any]) -> None:
        """Add ``sink`` to ``channel``; return when Redis has confirmed the channel.

        ``decode`` turns the channel's payloads into what its sinks receive, once
        per message whatever the number of sinks; an :class:`ImmortusError` it
        raises goes to that channel's sinks only. The first subscriber's decoder
        serves the channel (every subscriber of one channel passes the same).
        """
        if self._closed:
            raise TrackerClosed("the tracker's pub/sub connection is closed")
        self._start()
        sinks = self._sinks.get(channel)
        if sinks is None:
            self._sinks[channel] = {sink}
            self._decoders[channel] = decode
            ready = self._ready.get(channel)
            if ready is None or ready.done():
                ready = self._ready[channel] = asyncio.get_running_loop().create_future()
            self._to_subscribe.add(channel)
            self._dirty.set()
        else:
            sinks.add(sink)
            ready = self._ready.get(channel)
        if ready is not None and not ready.done():
            try:
                await asyncio.shield(ready)
            except BaseException:
                # Cancelled (a timeout) or closed before the confirmation: the caller
                # never got the subscription, so it cannot leave it; leave it here.
                self.unsubscribe(channel, sink)
                raise

    def unsubscribe(self, channel: str, sink: Sink) -> None:
        """Remove ``sink``; the last one out unsubscribes the channel. Never blocks."""
        sinks = self._sinks.get(channel)
        if sinks is None or sink not in sinks:
            return
        sinks.discard(sink)
        if not sinks:
            del self._sinks[channel]
            del self._decoders[channel]
            # Nobody awaits it now (every awaiter is a sink); a later subscriber makes
            # its own, resolved after the last SUBSCRIBE sent. Kept, it would outlive
            # a connection lost before the confirmation, for ever.
            ready = self._ready.pop(channel, None)
            if ready is not None:
                ready.cancel()
            self._to_unsubscribe.add(channel)
            self._dirty.set()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    @property
    def channels(self) -> int:
        """How many channels are subscribed (or being subscribed)."""
        return len(self._sinks)

    async def aclose(self) -> None:
        """Stop both tasks, close the connection, fail waiting sinks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._drop_connection()
        closed = TrackerClosed("the tracker was closed")
        for ready in self._ready.values():
            if not ready.done():
                ready.set_exception(closed)
                ready.exception()  # retrieved: nobody may be awaiting it any more
        for sinks in self._sinks.values():
            for sink in sinks:
                sink.fail(closed)
        self._sinks.clear()
        self._decoders.clear()

    # Tasks

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._read_loop(), name="immortus-pubsub-reader"),
                asyncio.create_task(self._write_loop(), name="immortus-pubsub-writer"),
            ]

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def _read_loop(self) -> None:
        delay = self._backoff_min
        ever_connected = False
        lost_logged = False
        while True:
            try:
                conn = await self._connect()
            except _LOST as exc:
                if not lost_logged:
                    logger.warning("pub/sub connection to Redis failed (%s); retrying", exc)
                    lost_logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            try:
                await self._resubscribe(conn, resync=ever_connected)
                if lost_logged:
                    logger.warning("pub/sub connection to Redis is back")
                ever_connected, lost_logged, delay = True, False, self._backoff_min
                await self._read(conn)
            except _LOST as exc:
                if not lost_logged:
                    logger.warning("pub/sub connection to Redis lost (%s); reconnecting", exc)
                    lost_logged = True
                if self._conn is conn:
                    await self._drop_connection()
                else:
                    await conn.disconnect(nowait=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)

    async def _resubscribe(self, conn: AbstractConnection, *, resync: bool) -> None:
        channels = list(self._sinks)
        self._to_subscribe.clear()
        self._to_unsubscribe.clear()
        self._inflight = dict.fromkeys(channels, 1)
        self._resync_on_confirm = set(channels) if resync else set()
        self._conn = conn
        if channels:
            await conn.send_command("SUBSCRIBE", *channels)
        self.connected.set()

    async def _read(self, conn: AbstractConnection) -> None:
        awaiting_pong = False
        while True:
            try:
                message = await conn.read_response(timeout=self._ping_interval)
            except ResponseError as exc:
                logger.error("Redis refused a pub/sub command: %s", exc)
                continue
            if message is None:
                if awaiting_pong:
                    raise RedisTimeoutError("no answer to PING on the pub/sub connection")
                await conn.send_command("PING")
                awaiting_pong = True
                continue
            awaiting_pong = False
            self._dispatch(message)

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3:
            return
        kind = message[0]
        channel = _text(message[1])
        if kind == b"message":
            sinks = self._sinks.get(channel)
            if not sinks:
                return
            try:
                item = self._decoders[channel](message[2])
            except ImmortusError as exc:
                logger.error("bad message on %s: %s", channel, exc)
                for sink in sinks:
                    sink.fail(exc)
                return
            for sink in sinks:
                sink.push(item)
        elif kind == b"subscribe":
            left = self._inflight.get(channel, 1) - 1
            if left > 0:
                self._inflight[channel] = left
                return
            self._inflight.pop(channel, None)
            ready = self._ready.pop(channel, None)
            if ready is not None and not ready.done():
                ready.set_result(None)
            if channel in self._resync_on_confirm:
                self._resync_on_confirm.discard(channel)
                for sink in self._sinks.get(channel, ()):
                    sink.request_resync()

    async def _write_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            conn = self._conn
            if conn is None or not conn.is_connected:
                continue  # the reader resubscribes everything once it reconnects
            subscribe = [c for c in self._to_subscribe if c in self._sinks]
            unsubscribe = [c for c in self._to_unsubscribe if c not in self._sinks]
            self._to_subscribe.clear()
            self._to_unsubscribe.clear()
            commands: list[tuple[str, ...]] = []
            if subscribe:
                for channel in subscribe:
                    self._inflight[channel] = self._inflight.get(channel, 0) + 1
                commands.append(("SUBSCRIBE", *subscribe))
            if unsubscribe:
                commands.append(("UNSUBSCRIBE", *unsubscribe))
            if not commands:
                continue
            try:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            except _LOST:
                # The reader sees the same dead socket, reconnects and resubscribes.
                continue
