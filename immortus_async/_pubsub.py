"""One Redis pub/sub connection shared by every waiter of a process.

Why not redis-py's ``PubSub``: its first ``subscribe()`` opens the connection, so
concurrent first subscribers can each open one; its ``listen()`` never pings, so a
dead peer goes unnoticed; and it has no notion of "this channel's SUBSCRIBE has
been confirmed", which a waiter needs before it may read its snapshot. Here a
single reader task owns the connection (and reconnects it), a single writer task
batches SUBSCRIBE/UNSUBSCRIBE commands, and channels are reference-counted.

What one channel brings stays with that channel: a message its decoder cannot
read (whatever it raises), a SUBSCRIBE that Redis refuses (an ACL without the
channel), a name that cannot be encoded fail that channel's sinks alone. Each
reply is matched to the command it answers (Redis answers in order), so an error
reply is known to be the refusal of one SUBSCRIBE. A task that dies anyway is
logged with its traceback, every sink is failed with :class:`ImmortusError`, and
the task is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import metrics
from ._redis import REFUSED
from .exceptions import (
    ImmortusError,
    InvalidStateError,
    RedisUnavailable,
    SubscriptionRefused,
    TrackerClosed,
)

__all__ = ["SILENT", "PubSubHub", "Silence", "Sink", "connection_factory", "dedicated"]

logger = logging.getLogger("immortus_async.pubsub")

# RedisError covers a server that answers garbage while starting or stopping.
_LOST = (RedisError, ConnectionError, OSError, TimeoutError)
_UNSUBSCRIBE_AFTER = 0.02  # seconds a channel left waits for others to leave with it


class Sink(Protocol):
    """Where the hub delivers a channel's messages: a :class:`StateBuffer` fits."""

    def push(self, item: Any) -> None: ...
    def fail(self, error: BaseException) -> None: ...
    def request_resync(self) -> None: ...


def connection_factory(redis: Redis) -> Callable[[], Awaitable[AbstractConnection]]:
    """Open dedicated connections with ``redis``'s settings, fit for pub/sub.

    A subscribed connection stays silent between messages, so no read timeout; the
    hub's own PING does the health check (redis-py's would read our messages). It
    speaks RESP2 whatever the client does: redis-py 8 defaults to RESP3, where
    messages are push frames that ``read_response`` hands to a push handler rather
    than return, and RESP2 is what every redis-py from 5.0.1 on reads the same way.
    redis-py 8's maintenance notifications (which it refuses on RESP2) stay off.
    """
    pool = redis.connection_pool
    return dedicated(pool.connection_class, pool.connection_kwargs)


def dedicated(
    connection_class: type[AbstractConnection], connection_kwargs: dict[str, Any]
) -> Callable[[], Awaitable[AbstractConnection]]:
    """Open pub/sub connections of ``connection_class`` with ``connection_kwargs``
    made fit as :func:`connection_factory` says (a cluster node's, too)."""
    kwargs = {
        key: value
        for key, value in connection_kwargs.items()
        if not key.startswith("maint_notifications")
    }
    kwargs.update(socket_timeout=None, health_check_interval=0, decode_responses=False, protocol=2)

    async def connect() -> AbstractConnection:
        conn: AbstractConnection = connection_class(**kwargs)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await conn.disconnect(nowait=True)  # cut off mid-handshake: no socket left
            raise
        return conn

    return connect


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _short(error: BaseException) -> str:
    """An error's text for a message: a hostile payload may make it huge."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 200 else text[:200] + "..."


@dataclass
class _Sent:
    """A command sent on the connection whose replies have not all arrived."""

    kind: bytes  # the reply's first element: b"subscribe", b"unsubscribe", b"pong"
    channels: tuple[str, ...]
    left: int  # replies still expected: one per channel, one for a PING


SILENT: Any = object()
"""What :meth:`Silence.read` returns once the connection has been silent too long
(a reply may be nil, so None cannot say it)."""


class Silence:
    """Reads of one connection that give up once it has been silent ``interval``
    seconds, at the cost of one timer per interval rather than one per message: a
    deadline per read (``read_response(timeout=...)``) scheduled and cancelled a
    timer for every message of a burst, a tenth of the hub's CPU as jobs ended.

    Made, read and closed by one task, which the expiry cancels while it waits in
    :meth:`read` alone (as ``asyncio.timeout`` does).
    """

    __slots__ = ("_expired", "_handle", "_heard", "_interval", "_loop", "_reading", "_task")

    def __init__(self, interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "read from a task"
        self._task = task
        self._interval = interval
        self._heard = self._loop.time()
        self._reading = self._expired = False
        self._handle = self._loop.call_at(self._heard + interval, self._check)

    async def read(self, conn: AbstractConnection) -> Any:
        """The next reply, or :data:`SILENT` once ``interval`` seconds passed without one."""
        self._reading = True
        try:
            # Not disconnected on the expiry's cancellation: a reply cut short by
            # it stays in the parser's buffer, as with read_response's own timeout.
            # A broken connection is the caller's to drop.
            reply = await conn.read_response(disconnect_on_error=False)
        except asyncio.CancelledError:
            expired, self._expired = self._expired, False
            if not expired or self._task.uncancel() > 0:
                # Cancelled from outside (a hub closed, or a loop shut down with the
                # hub open): the connection goes with the task, as redis-py's would.
                await conn.disconnect(nowait=True)
                raise
            self._rearm()
            return SILENT
        finally:
            self._reading = False
        self._heard = self._loop.time()
        return reply

    def close(self) -> None:
        """Stop the timer. Idempotent."""
        self._handle.cancel()

    def _rearm(self) -> None:
        self._heard = self._loop.time()
        self._handle.cancel()
        self._handle = self._loop.call_at(self._heard + self._interval, self._check)

    def _check(self) -> None:
        due = self._heard + self._interval
        if self._loop.time() < due or not self._reading:
            # Heard since, or busy elsewhere (a PING's send): look again later.
            self._handle = self._loop.call_at(max(due, self._loop.time() + 0.01), self._check)
            return
        self._expired = True
        self._task.cancel()


class _Hub:
    """What every hub offers on top of its ``subscribe`` and ``unsubscribe``."""

    _closed: bool

    async def subscribe(self, channel: str, sink: Sink, decode: Callable[[bytes], Any]) -> None:
        raise NotImplementedError

    def unsubscribe(self, channel: str, sink: Sink) -> None:
        raise NotImplementedError

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

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed


class PubSubHub(_Hub):
    """Delivers each channel's messages to every sink subscribed to it.

    Args:
        connect: opens a new connected Redis connection (:func:`connection_factory`).
        ping_interval: seconds of silence after which the hub sends PING; no answer
            within as long again means the connection is dead (a connection
            attempt gets as long).
        backoff_min, backoff_max: reconnect (and restart) delays, doubling from the
            first to the second.
        unreachable_timeout: seconds a channel waits for a connection that cannot be
            made (counted from the loss, or from its subscription if later) before
            its sinks fail with :class:`RedisUnavailable`; None waits for ever.
        where: names the server in that error (no password).

    After a lost connection the hub reconnects, resubscribes every channel in one
    command and, once each is confirmed, asks its sinks to resync: messages
    published meanwhile are gone, the sinks re-read the state instead.
    """

    # What the hub sends and what Redis answers; a cluster node's hub
    # (immortus_async._sharded) speaks the sharded ones: SSUBSCRIBE, smessage.
    _SUBSCRIBE = ("SUBSCRIBE", b"subscribe")
    _UNSUBSCRIBE = ("UNSUBSCRIBE", b"unsubscribe")
    _MESSAGE = b"message"

    def __init__(
        self,
        connect: Callable[[], Awaitable[AbstractConnection]],
        *,
        ping_interval: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        unreachable_timeout: float | None = None,
        where: str = "Redis",
    ) -> None:
        self._connect = connect
        self._ping_interval = ping_interval
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._unreachable_timeout = unreachable_timeout
        self._where = where
        self._sinks: dict[str, set[Sink]] = {}
        self._decoders: dict[str, Callable[[bytes], Any]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._added_at: dict[str, float] = {}
        self._inflight: dict[str, int] = {}
        self._sent: deque[_Sent] = deque()
        self._resync_on_confirm: set[str] = set()
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._solo: set[str] = set()  # subscribed one per command: a batch was refused
        self._dirty = asyncio.Event()
        self._linger: asyncio.TimerHandle | None = None  # the UNSUBSCRIBEs left to send
        self._conn: AbstractConnection | None = None
        self._lost_at: float | None = None
        self._last_error: BaseException | None = None
        self._restarting = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.connected = asyncio.Event()
        """Set while the hub has a live, subscribed connection."""

    # Public API

    async def subscribe(self, channel: str, sink: Sink, decode: Callable[[bytes], Any]) -> None:
        """Add ``sink`` to ``channel``; return when Redis has confirmed the channel.

        ``decode`` turns the channel's payloads into what its sinks receive, once
        per message whatever the number of sinks; whatever it raises fails that
        channel's sinks only (with :class:`InvalidStateError` unless it raised an
        :class:`ImmortusError`). The first subscriber's decoder serves the channel
        (every subscriber of one channel passes the same).

        Raises:
            SubscriptionRefused: Redis refused the SUBSCRIBE (an ACL user without
                the channel), or the name cannot be encoded for Redis.
            RedisUnavailable: no connection could be made for ``unreachable_timeout``.
            TrackerClosed: the hub is closed.
            ImmortusError: a hub task failed meanwhile (it is restarted).
        """
        if self._closed:
            raise TrackerClosed("the tracker's pub/sub connection is closed")
        self._start()
        sinks = self._sinks.get(channel)
        if sinks is None:
            self._sinks[channel] = {sink}
            self._decoders[channel] = decode
            self._added_at[channel] = asyncio.get_running_loop().time()
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
                # Cancelled (a timeout), refused or closed before the confirmation:
                # the caller never got the subscription, so it cannot leave it.
                self.unsubscribe(channel, sink)
                raise

    def unsubscribe(self, channel: str, sink: Sink) -> None:
        """Remove ``sink``; the last one out unsubscribes the channel. Never blocks."""
        sinks = self._sinks.get(channel)
        if sinks is None or sink not in sinks:
            return
        sinks.discard(sink)
        if not sinks:
            self._forget(channel)
            self._to_unsubscribe.add(channel)
            # Sent a moment later, with every other channel left meanwhile (and at
            # once with the next SUBSCRIBE): as jobs end, one send for a batch of
            # waiters leaving rather than one each, on the loop that wakes the others.
            # What the channel still brings meanwhile has no sink and is dropped.
            if self._linger is None:
                self._linger = asyncio.get_running_loop().call_later(
                    _UNSUBSCRIBE_AFTER, self._unsubscribe_now
                )

    def _unsubscribe_now(self) -> None:
        self._linger = None
        self._dirty.set()

    @property
    def channels(self) -> int:
        """How many channels are subscribed (or being subscribed)."""
        return len(self._sinks)

    @property
    def healthy(self) -> bool:
        """False while there are channels to serve and no live connection, or while
        a failed task is being restarted."""
        return not self._restarting and (self.connected.is_set() or not self._sinks)

    async def aclose(self) -> None:
        """Stop both tasks, close the connection, fail waiting sinks. Idempotent.

        Raises:
            asyncio.CancelledError: the caller was cancelled meanwhile; the hub is
                closed all the same (a second call would return at once).
        """
        if self._closed:
            return
        self._closed = True
        if self._linger is not None:
            self._linger.cancel()
        for task in self._tasks:
            task.cancel()
        try:
            # The tasks restart themselves on any error, so all they end with is the
            # cancellation; anything else was already logged where it happened. Their
            # connection has no socket_timeout: redis-py writes without the
            # asyncio.wait_for that can lose a cancellation.
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._tasks.clear()
            await self._drop_connection()
            closed = TrackerClosed("the tracker was closed")
            for channel in list(self._sinks):
                self._fail(channel, closed)

    # Channels

    def _forget(self, channel: str) -> set[Sink]:
        """Remove every trace of ``channel`` but what the server was sent; its sinks."""
        sinks = self._sinks.pop(channel, set())
        self._decoders.pop(channel, None)
        self._added_at.pop(channel, None)
        self._resync_on_confirm.discard(channel)
        self._solo.discard(channel)
        # Nobody awaits it now (every awaiter is a sink); a later subscriber makes
        # its own, resolved after the last SUBSCRIBE sent. Kept, it would outlive
        # a connection lost before the confirmation, for ever.
        ready = self._ready.pop(channel, None)
        if ready is not None:
            ready.cancel()
        return sinks

    def _fail(self, channel: str, error: BaseException) -> None:
        """End ``channel`` here: its sinks, and a subscriber still waiting, get ``error``.

        Only for a channel the server does not hold subscribed for us any more
        (refused, never sent, or its connection gone): no UNSUBSCRIBE is sent.
        """
        ready = self._ready.pop(channel, None)
        if ready is not None and not ready.done():
            ready.set_exception(error)
            ready.exception()  # retrieved: its awaiters may all be gone
        for sink in self._forget(channel):
            sink.fail(error)

    def _encodable(self, conn: AbstractConnection, channels: Iterable[str]) -> list[str]:
        """``channels`` that ``conn`` can encode; the others fail (a lone surrogate in
        a job id passes every ``str`` check and breaks the whole command)."""
        fit = []
        for channel in channels:
            try:
                conn.encoder.encode(channel)  # type: ignore[no-untyped-call]
            except Exception as exc:
                self._fail(
                    channel,
                    SubscriptionRefused(f"cannot subscribe to {channel!r}: {_short(exc)}"),
                )
            else:
                fit.append(channel)
        return fit

    # Tasks

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(
                    self._supervise("reader", self._read_loop), name="immortus-pubsub-reader"
                ),
                asyncio.create_task(
                    self._supervise("writer", self._write_loop), name="immortus-pubsub-writer"
                ),
            ]

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` for ever: if it dies, log it, fail every sink, and start it again."""
        loop = asyncio.get_running_loop()
        delay = self._backoff_min
        while True:
            started = loop.time()
            try:
                await run()
            except Exception as exc:
                logger.exception("the pub/sub %s task failed; restarting it", name)
                self._restarting += 1
                try:
                    # What the connection holds is unknown now: start it afresh, and
                    # tell every waiter rather than let it wait on a broken hub.
                    error = ImmortusError(
                        f"the pub/sub {name} failed ({_short(exc)}) and is restarted: wait again"
                    )
                    for channel in list(self._sinks):
                        self._fail(channel, error)
                    await self._drop_connection()
                    if loop.time() - started > self._backoff_max:
                        delay = self._backoff_min
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff_max)
                finally:
                    self._restarting -= 1

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        self._sent.clear()
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def _send(
        self, conn: AbstractConnection, commands: list[tuple[str, ...]], sent: list[_Sent]
    ) -> None:
        # Recorded before the write, with no await in between: replies come back in
        # the order the commands went out, and so does this queue.
        packed = conn.pack_commands(commands)
        self._sent.extend(sent)
        await conn.send_packed_command(packed, check_health=False)

    def _lost(self, exc: BaseException) -> None:
        """Note when the connection was first found missing, for the unreachable timeout."""
        self._last_error = exc
        if self._lost_at is None:
            self._lost_at = asyncio.get_running_loop().time()

    def _waited(self, channel: str, now: float) -> float:
        assert self._lost_at is not None
        return now - max(self._lost_at, self._added_at.get(channel, now))

    def _due(self) -> float:
        """Seconds until a channel has waited ``unreachable_timeout`` (inf: none will)."""
        if self._unreachable_timeout is None or self._lost_at is None or not self._sinks:
            return float("inf")
        now = asyncio.get_running_loop().time()
        waited = max(self._waited(channel, now) for channel in self._sinks)
        return self._unreachable_timeout - waited

    def _give_up(self) -> float:
        """After a failed attempt: fail the channels that waited ``unreachable_timeout``
        for a connection; return the seconds until the next one is due."""
        if self._unreachable_timeout is None or self._lost_at is None:
            return float("inf")
        now = asyncio.get_running_loop().time()
        for channel in list(self._sinks):
            if self._waited(channel, now) < self._unreachable_timeout:
                continue
            error = RedisUnavailable(
                f"cannot reach {self._where} for {self._unreachable_timeout:g}s"
                + (f" ({_short(self._last_error)})" if self._last_error is not None else "")
            )
            self._fail(channel, error)
        return self._due()

    async def _read_loop(self) -> None:
        delay = self._backoff_min
        ever_connected = False
        lost_logged = False
        while True:
            if self._lost_at is None:
                # Until Redis answers, the waiters' unreachable clock runs.
                self._lost_at = asyncio.get_running_loop().time()
            try:
                # A frozen server accepts the connection and never answers the
                # handshake: give up on it in time for the waiters' deadlines.
                limit = min(2 * self._ping_interval, max(self._due(), 1.0))
                async with asyncio.timeout(limit):
                    conn = await self._connect()
            except _LOST as exc:
                if not lost_logged:
                    logger.warning("pub/sub connection to Redis failed (%s); retrying", exc)
                    lost_logged = True
                if isinstance(exc, REFUSED):
                    # Reached, and refused (a wrong password): the waiters are told
                    # now; later ones are told at each attempt, until it is mended.
                    refused = SubscriptionRefused(f"Redis refused the connection: {_short(exc)}")
                    for channel in list(self._sinks):
                        self._fail(channel, refused)
                self._lost(exc)
                await asyncio.sleep(min(delay, self._give_up()))
                delay = min(delay * 2, self._backoff_max)
                continue
            try:
                await self._resubscribe(conn, resync=ever_connected)
                if ever_connected:
                    metrics.reconnected()
                if lost_logged:
                    logger.warning("pub/sub connection to Redis is back")
                ever_connected, lost_logged, delay = True, False, self._backoff_min
                await self._read(conn)
            except _LOST as exc:
                if not lost_logged:
                    logger.warning("pub/sub connection to Redis lost (%s); reconnecting", exc)
                    lost_logged = True
                self._lost(exc)
                if self._conn is conn:
                    await self._drop_connection()
                else:
                    await conn.disconnect(nowait=True)
                await asyncio.sleep(min(delay, self._give_up()))
                delay = min(delay * 2, self._backoff_max)

    async def _resubscribe(self, conn: AbstractConnection, *, resync: bool) -> None:
        channels = self._encodable(conn, list(self._sinks))
        self._to_subscribe.clear()
        self._to_unsubscribe.clear()
        self._sent.clear()
        self._inflight = dict.fromkeys(channels, 1)
        self._resync_on_confirm = set(channels) if resync else set()
        self._conn = conn
        if channels:
            await self._send(conn, *self._subscribe_commands(channels))
        self.connected.set()

    def _groups(self, channels: list[str]) -> list[list[str]]:
        """The channels one command may name together: all of them, on one server."""
        return [channels] if channels else []

    def _batches(self, channels: list[str]) -> list[list[str]]:
        """How ``channels`` are split into SUBSCRIBE commands: a channel refused in a
        batch before goes alone."""
        batches = [[c] for c in channels if c in self._solo]
        batches.extend(self._groups([c for c in channels if c not in self._solo]))
        return batches

    def _subscribe_commands(self, channels: list[str]) -> tuple[list[tuple[str, ...]], list[_Sent]]:
        name, kind = self._SUBSCRIBE
        batches = self._batches(channels)
        sent = [_Sent(kind, tuple(batch), len(batch)) for batch in batches]
        return [(name, *batch) for batch in batches], sent

    async def _read(self, conn: AbstractConnection) -> None:
        awaiting_pong = False
        silence = Silence(self._ping_interval)
        try:
            while True:
                try:
                    message = await silence.read(conn)
                except ResponseError as exc:
                    self._refused(exc)
                    awaiting_pong = False
                    continue
                if message is SILENT:
                    if awaiting_pong:
                        raise RedisTimeoutError("no answer to PING on the pub/sub connection")
                    await self._send(conn, [("PING",)], [_Sent(b"pong", (), 1)])
                    awaiting_pong = True
                    continue
                awaiting_pong = False
                # Only an answer proves Redis back: a frozen server (SIGSTOP) still
                # accepts connections, and each would restart the unreachable clock.
                self._lost_at = self._last_error = None
                self._dispatch(message)
        finally:
            silence.close()

    def _answered(self, kind: bytes) -> _Sent:
        """The command a reply of ``kind`` answers, counted off."""
        if not self._sent or self._sent[0].kind != kind:
            # Replies no longer match commands: nothing it says can be trusted.
            raise RedisError(f"unexpected {kind!r} reply on the pub/sub connection")
        command = self._sent[0]
        command.left -= 1
        if command.left == 0:
            self._sent.popleft()
        return command

    def _refused(self, exc: ResponseError) -> None:
        """An error reply: it answers the oldest command still waiting, whole."""
        if not self._sent:
            raise RedisError(f"an error reply to no command on the pub/sub connection: {exc}")
        command = self._sent.popleft()
        if command.kind != self._SUBSCRIBE[1]:
            logger.error("Redis refused a pub/sub command: %s", exc)
            return
        # One refused channel refuses its whole command: a batch is tried again one
        # channel a command, so that only the channels refused on their own fail.
        batch = len(command.channels) > 1
        redirected = self._redirected(exc)
        if not batch and redirected is None:
            logger.warning("Redis refused to subscribe to %s: %s", command.channels[0], exc)
        for channel in command.channels:
            left = self._inflight.get(channel, 1) - 1
            if left > 0:
                self._inflight[channel] = left  # a later SUBSCRIBE of it may pass
                continue
            self._inflight.pop(channel, None)
            if channel not in self._sinks:
                continue
            if redirected is not None:
                self._fail(channel, redirected)
            elif batch:
                self._solo.add(channel)
                self._to_subscribe.add(channel)
                self._dirty.set()
            else:
                refused = SubscriptionRefused(f"Redis refused to subscribe to {channel!r}: {exc}")
                self._fail(channel, refused)

    def _dispatch(self, message: Any) -> None:
        if message == b"PONG":  # PING on a connection with no channel left
            self._answered(b"pong")
            return
        if not isinstance(message, list) or not message:
            return
        kind = message[0]
        if kind == b"pong":
            self._answered(b"pong")
        elif len(message) < 3:
            return
        elif kind == self._MESSAGE:
            self._deliver(_text(message[1]), message[2])
        elif kind == self._UNSUBSCRIBE[1]:
            if self._answers(kind, _text(message[1])):
                self._answered(kind)
            else:
                self._pushed_unsubscribe(_text(message[1]))
        elif kind == self._SUBSCRIBE[1]:
            self._answered(kind)
            self._confirmed(_text(message[1]))

    def _answers(self, kind: bytes, channel: str) -> bool:
        """True if a reply of ``kind`` for ``channel`` is the next one expected."""
        if not self._sent or self._sent[0].kind != kind:
            return False
        command = self._sent[0]
        return command.channels[len(command.channels) - command.left] == channel

    def _pushed_unsubscribe(self, channel: str) -> None:
        """An unsubscribe no command asked for: never on one server, so nothing
        that follows can be trusted (a cluster node's hub takes it as a moved slot)."""
        raise RedisError(f"unexpected unsubscribe from {channel!r} on the pub/sub connection")

    def _redirected(self, exc: ResponseError) -> BaseException | None:
        """What a refused SUBSCRIBE's channels fail with when Redis sent them
        elsewhere (a cluster node's MOVED); None: it is a refusal."""
        return None

    def _deliver(self, channel: str, payload: bytes) -> None:
        sinks = self._sinks.get(channel)
        if not sinks:
            return
        try:
            item = self._decoders[channel](payload)
        except Exception as exc:
            # Anyone who may PUBLISH can send anything: whatever decoding raises
            # (OverflowError, RecursionError, ...) ends this channel's waiters only.
            logger.warning("bad message on %s: %s", channel, _short(exc))
            error = (
                exc
                if isinstance(exc, ImmortusError)
                else InvalidStateError(f"a message on {channel!r} cannot be read: {_short(exc)}")
            )
            for sink in sinks:
                sink.fail(error)
            return
        for sink in sinks:
            sink.push(item)

    def _confirmed(self, channel: str) -> None:
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
                metrics.resynced()

    async def _write_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            conn = self._conn
            if conn is None or not conn.is_connected:
                continue  # the reader resubscribes everything once it reconnects
            subscribe = self._encodable(conn, [c for c in self._to_subscribe if c in self._sinks])
            unsubscribe = [c for c in self._to_unsubscribe if c not in self._sinks]
            self._to_subscribe.clear()
            self._to_unsubscribe.clear()
            commands: list[tuple[str, ...]] = []
            sent: list[_Sent] = []
            for channel in subscribe:
                self._inflight[channel] = self._inflight.get(channel, 0) + 1
            if subscribe:
                commands, sent = self._subscribe_commands(subscribe)
            name, kind = self._UNSUBSCRIBE
            for group in self._groups(unsubscribe):
                commands.append((name, *group))
                sent.append(_Sent(kind, tuple(group), len(group)))
            if not commands:
                continue
            try:
                await self._send(conn, commands, sent)
            except _LOST:
                # The reader sees the same dead socket, reconnects and resubscribes.
                continue
