"""One held connection that writes a strategy's script calls as they come, pipelined.

Why: a tracked job's writes (``started``, progress, its end, heartbeats) are each one
EVALSHA. Through redis-py's client each takes a connection from the pool, checks it
(a non-blocking read), writes, waits for its reply and gives the connection back:
about 100 µs of the worker's CPU per write, where arq spends some 500 µs on a whole
trivial job, so two writes cost a tracked job a third of its throughput. Here the
calls go out on one connection held for them, without waiting for earlier replies:
the calls made in one turn of the event loop leave in one ``send()``, and one reader
matches the replies to the calls in order (Redis answers a connection in order).
The connection is taken from the client's pool and never given back, so closing the
client (``pool.disconnect()``) closes it too, and it has the client's settings (TLS,
password, database, protocol).

Failures are the ones a redis-py command has: a call's future fails with the error
that cut the connection (one of ``UNREACHABLE``), and the next call connects again.
A caller that gives up waiting (its write deadline cancels the future) costs the
connection, as a cancelled command does in redis-py: every call not yet answered
fails with ``TimeoutError`` (their callers redeliver), and the connection is closed,
so a reply is never matched to the wrong call. A call Redis answers ``NOSCRIPT``
(a restarted or flushed Redis) is sent again as EVAL, which also loads the script:
it then lands after calls sent behind it, which the strategy's forward-only script
makes harmless (a job's state never moves back, a terminal state is written once).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import NoScriptError, ResponseError

from ._script import SharedScript

__all__ = ["ScriptPipe"]

logger = logging.getLogger("immortus_async.pipe")

# redis-py before 5.3 needs a command name for get_connection(); 5.3 on deprecate it.
_NAMES_COMMAND = (
    inspect.signature(ConnectionPool.get_connection).parameters["command_name"].default
    is inspect.Parameter.empty
)


def _pack(command: tuple[Any, ...], encoding: str) -> bytes:
    """``command`` in RESP, as redis-py packs it, at a fifth of its cost (its packer is
    Python too, and general: memoryviews, large values split from the header)."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode(encoding)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Call:
    __slots__ = ("args", "eval", "future", "nkeys", "retried", "script", "sent")

    def __init__(
        self, script: SharedScript, nkeys: int, args: list[Any], future: asyncio.Future[Any]
    ) -> None:
        self.script, self.nkeys, self.args, self.future = script, nkeys, args, future
        self.sent = False  # taken by the sender: its reply may be on the way
        self.eval = False  # send the script's body (after NOSCRIPT)
        self.retried = False  # sent again after its connection broke

    def command(self) -> tuple[Any, ...]:
        if self.eval:
            return ("EVAL", self.script.script, self.nkeys, *self.args)
        return ("EVALSHA", self.script.sha, self.nkeys, *self.args)


class ScriptPipe:
    """Script calls on one held connection of ``redis``'s pool, pipelined (see the module)."""

    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._connection: AbstractConnection | None = None
        self._queue: list[_Call] = []
        self._in_flight: deque[_Call] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._flush_due = False

    def call(
        self, script: SharedScript, keys: list[Any], args: list[Any], *, now: bool = False
    ) -> asyncio.Future[Any]:
        """Queue ``script(keys, args)``; the future is its reply (or its error).

        ``now``: written at once, with what is queued before it, rather than in the
        next turn of the loop (for a caller that goes on without awaiting the reply).
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call = _Call(script, len(keys), [*keys, *args], future)
        future.add_done_callback(lambda done: self._given_up(call) if done.cancelled() else None)
        self._queue.append(call)
        if now:
            self._flush()
        else:
            self._wake()
        return future

    async def _send(self) -> None:
        try:
            while self._queue:
                batch = [call for call in self._queue if not call.future.done()]
                self._queue = []
                for call in batch:
                    call.sent = True
                try:
                    connection = self._connection
                    if connection is None:
                        # Untyped in redis-py 8 (a deprecation decorator), typed in 5.
                        get = self._pool.get_connection
                        if _NAMES_COMMAND:
                            connection = await get("EVALSHA")  # type: ignore[no-untyped-call, unused-ignore]
                        else:
                            connection = await get()  # type: ignore[no-untyped-call, unused-ignore]
                        self._connection = connection
                    elif not connection.is_connected:
                        await connection.connect()  # type: ignore[no-untyped-call]
                    self._in_flight.extend(batch)
                    if self._reader is None:
                        self._reader = asyncio.get_running_loop().create_task(
                            self._read(connection)
                        )
                    encoding = connection.encoder.encoding
                    packed = [_pack(call.command(), encoding) for call in batch]
                    await connection.send_packed_command(packed, check_health=False)
                except Exception as exc:
                    # redis-py closes a connection it could not open or write to.
                    lost = [*self._in_flight, *(c for c in batch if c not in self._in_flight)]
                    self._in_flight.clear()
                    self._lost(exc, lost)
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None

    async def _read(self, connection: AbstractConnection) -> None:
        try:
            while self._in_flight:
                try:
                    reply = await connection.read_response()
                except ResponseError as exc:
                    reply = exc
                call = self._in_flight.popleft()
                if isinstance(reply, NoScriptError):
                    call.eval, call.sent = True, False
                    self._queue.append(call)
                    self._wake()
                elif call.future.done():
                    pass
                elif isinstance(reply, Exception):
                    call.future.set_exception(reply)
                else:
                    call.future.set_result(reply)
        except Exception as exc:
            # redis-py closed the connection: what was not answered never will be.
            lost = list(self._in_flight)
            self._in_flight.clear()
            self._lost(exc, lost)
            self._wake()
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    def _lost(self, error: BaseException, calls: list[_Call]) -> None:
        """Calls whose connection broke: each is sent once more, then fails with ``error``.

        Once, on a new connection, because a pooled connection may have been cut while
        idle (a Redis restart): redis-py's own retry does the same. A call applied
        before the break and again after changes nothing (the script is forward-only).
        """
        for call in calls:
            if call.future.done():
                continue
            if call.retried:
                call.future.set_exception(error)
            else:
                call.retried, call.sent = True, False
                self._queue.append(call)

    def _wake(self) -> None:
        if self._queue and self._sender is None and not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write what the last turn of the loop queued, in one send, without a task.

        Writing to redis-py's stream writer directly (its ``send_packed_command`` is
        a coroutine, which would cost a task per write) is safe: a failed write
        closes the transport, and the reader then fails (and resends) what was in
        flight. Flow control is not needed: what is written is bounded by the
        callers' deadlines. A connection to open goes to the sender task.
        """
        self._flush_due = False
        if self._sender is not None or not self._queue:
            return
        connection = self._connection
        writer = getattr(connection, "_writer", None)
        if connection is None or writer is None or not connection.is_connected:
            self._sender = asyncio.get_running_loop().create_task(self._send())
            return
        batch = [call for call in self._queue if not call.future.done()]
        self._queue = []
        for call in batch:
            call.sent = True
        self._in_flight.extend(batch)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(connection))
        encoding = connection.encoder.encoding
        writer.write(b"".join(_pack(call.command(), encoding) for call in batch))

    def _given_up(self, call: _Call) -> None:
        """A caller's deadline cancelled ``call``: one already sent costs the connection."""
        if call.sent:
            self._reset(TimeoutError())

    def _reset(self, error: BaseException) -> None:
        # Cancelling a task inside a redis-py read or write closes the connection;
        # it stays ours, and the next send connects it again.
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
        self._sender = self._reader = None
        self._fail(error, [*self._in_flight, *self._queue])
        self._in_flight.clear()
        self._queue = []

    @staticmethod
    def _fail(error: BaseException, calls: Any) -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_exception(error)

    async def aclose(self) -> None:
        """Fail what is pending, and give the connection back to the pool."""
        tasks = [task for task in (self._sender, self._reader) if task is not None]
        self._reset(ConnectionError("the strategy was closed"))
        if tasks:
            await asyncio.wait(tasks)
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)
