"""Told when a key changes, at no cost while it does not: Redis client-side caching.

A reader of a queue's own records must learn that the queue changed them (arq ends
some jobs without calling anything) without reading them again and again. Redis
can say so itself: a connection with ``CLIENT TRACKING ON REDIRECT <id>`` has every
key it reads remembered, and when one of them is written, deleted or expires (one
that did not exist when read included) Redis publishes its name once on
``__redis__:invalidate`` to the connection ``<id>``, which is subscribed to it. A
key is then forgotten until it is read again: its watchers are told at once. A
watcher reads what it watches on the tracking connection itself
(:meth:`KeyWatch.read`), so its snapshot and every re-read register the keys again
at no cost of their own: registering a job's keys costs no command, and a change
after a read is announced. A watcher that knows the change already (the job side
reported it) re-reads nothing, and its keys cost nothing more.

Findings this follows:

* Two dedicated connections, opened here: a pooled one would scatter the tracking
  over connections that come and go. RESP2 with ``REDIRECT``: redis-py 5.3's RESP3
  push handling is broken with hiredis.
* Losing either connection silently loses invalidations (Redis forgets the tracking
  of a closed connection, and a closed redirect target receives nothing): both are
  dropped, reopened, every key is read again and every watcher told to re-read.
* ``tracking-table-max-keys`` below the keys tracked makes Redis evict keys from its
  table, each eviction an invalidation, each re-read an eviction again: an endless
  storm, as fast as the server's traffic. Watching more keys than the limit (read
  with ``CONFIG GET`` where allowed) is taken for one, and so is a key invalidated
  ``storm_limit`` times within ten seconds (arq writes a job's key a few times a
  try); tracking is then turned off for good and the watchers handed to ``on_off``.
* Where ``CLIENT ID`` or ``CLIENT TRACKING`` is refused (Redis < 6, a proxy, an ACL
  or a ``rename-command`` that denies it), tracking is off, said once in the log:
  the caller falls back to another way (:attr:`KeyWatch.off`).

Never read a key that every job writes (a queue's shared sorted set) through this,
but where nothing else answers (one invalidation at its next write, ignored: no
subject has that key); a key of a subject is read by the subject's watchers only.
What it costs while nothing changes: a PING on each connection every
``ping_interval`` seconds, per process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._pubsub import SILENT, Silence, connection_factory
from ._redis import Client
from ._script import SharedScript
from .exceptions import TrackerClosed

__all__ = ["KeyWatch", "KeyWatching", "Sink", "Untracked", "tracked_read"]

logger = logging.getLogger("immortus_async.key_watch")

_CHANNEL = b"__redis__:invalidate"
_LOST = (RedisError, ConnectionError, OSError, TimeoutError)
_CHUNK = 1024  # keys per EXISTS: a reconnect reads every watched key again


class Sink(Protocol):
    """A watcher: told to re-read what it watches."""

    def request_resync(self) -> None: ...


class _Off(Exception):
    """Tracking cannot work here: the reason, for the log and the statistics."""


class Untracked(Exception):
    """A read :meth:`KeyWatch.read` could not make on the tracking connection (it is
    down, off, or the subject is not watched): read another way. A reconnection
    nudges every watcher, so what changed meanwhile is read again."""


@dataclass(slots=True)
class _Subject:
    keys: tuple[bytes, ...]
    sinks: set[Sink] = field(default_factory=set)
    ends: frozenset[bytes] = frozenset()  # whose change ends the subject


# What a reply goes to: the callbacks of an EXISTS (keys tracked again after a
# reconnection), or the future of a watcher's read.
_Pending = list[Callable[[], None]] | asyncio.Future[Any]


class KeyWatch:
    """Nudges the watchers of a subject (a job) whenever one of its keys changes.

    Args:
        connect: opens a new connected RESP2 connection without read timeout
            (:func:`~immortus_async._pubsub.connection_factory`).
        on_off: given every subject's sinks when tracking turns off while they
            watch (a storm, or a refusal found on reconnecting): they must be
            watched another way from then on.
        ping_interval: seconds of silence after which each connection is pinged;
            no answer within as long again means it is dead.
        backoff_min, backoff_max: reconnect delays, doubling from one to the other.
        storm_limit: invalidations of one key within ten seconds taken for a storm;
            None for a watcher whose nudges never read again what nobody changed
            (so that a storm cannot feed itself through it), where a key busy with
            writes would be taken for one.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[AbstractConnection]],
        *,
        on_off: Callable[[dict[str, set[Sink]]], None],
        ping_interval: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        storm_limit: int | None = 32,
    ) -> None:
        self._connect = connect
        self._on_off = on_off
        self._ping_interval = ping_interval
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._storm_limit = storm_limit
        self._subjects: dict[str, _Subject] = {}
        self._by_key: dict[bytes, set[str]] = {}
        self._counts: dict[bytes, tuple[float, int]] = {}  # key: (window start, invalidations)
        self._queued: list[bytes] = []  # keys to read on the tracking connection
        self._after: list[Callable[[], None]] = []  # what to do once they are read
        self._reads: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []  # watchers' reads
        self._pending: deque[_Pending] = deque()  # per command sent
        self._dirty = asyncio.Event()
        self._answered: asyncio.Future[None] | None = None  # the first attempt's outcome
        self._task: asyncio.Task[None] | None = None
        self._table_max = 0  # the server's tracking-table-max-keys; 0: none, or unknown
        self._closed = False
        self.off: str | None = None
        """Why tracking is off (refused, a storm), or None while it works or may."""
        self.connected = False
        """True while both connections are up and tracking."""
        self.generation = 0
        """Counts the connections made: a read tracked in one is announced by it alone."""

    @property
    def subjects(self) -> int:
        """How many subjects are watched."""
        return len(self._subjects)

    async def watch(
        self, subject: str, keys: Sequence[str], sink: Sink, *, ends: Sequence[str] = ()
    ) -> bool:
        """Nudge ``sink`` whenever a key of ``subject`` changes; False when tracking is off.

        A change of one of ``ends`` (keys among ``keys``, the first watcher's) calls
        ``request_resync_now()`` on the sinks that have it: a watcher that would
        wait a little before re-reading (to let the job side report first) re-reads
        at once when the queue has ended the job.

        Sends nothing: the keys are registered by the watcher's reads
        (:meth:`read`), its snapshot first, and a change after a read is announced.
        The first watcher of a process waits for the first connection attempt;
        while the connections are down it returns at once: the reconnection tells
        every watcher to re-read. The sink is watched even if this is cancelled:
        the caller unwatches it in any case.

        Raises:
            TrackerClosed: it is closed.
        """
        if self._closed:
            raise TrackerClosed("the strategy's client-side caching is closed")
        if self.off is not None:
            return False
        self._start()
        if self._answered is not None and not self._answered.done():
            await asyncio.shield(self._answered)
            if self._closed:
                raise TrackerClosed("the strategy's client-side caching is closed")
            if self.off is not None:
                return False
        try:
            encoded = tuple(key.encode() for key in keys)
        except UnicodeEncodeError:
            return False  # a lone surrogate in a job id: watched another way
        known = self._subjects.get(subject)
        if known is not None:
            known.sinks.add(sink)
            return True
        if self._table_max and len(self._by_key) + len(encoded) > self._table_max:
            self._stop(
                f"more keys to watch than tracking-table-max-keys ({self._table_max}) "
                "allows: an eviction storm"
            )
            return False
        ending = frozenset(key.encode() for key in ends)
        self._subjects[subject] = _Subject(encoded, {sink}, ends=ending)
        for key in encoded:
            self._by_key.setdefault(key, set()).add(subject)
        return True

    def ready(self) -> bool:
        """True while both connections are up and tracking. Otherwise False at once,
        the connections being made (unless tracking is off or this is closed), so
        that a later caller finds them: for a caller that has another way meanwhile."""
        if self._closed or self.off is not None:
            return False
        self._start()
        return self.connected

    async def read(self, subject: str, *command: Any) -> Any:
        """``command``'s reply, sent on the tracking connection: every key it reads
        is tracked, so a change after it is announced. For the watchers of
        ``subject`` only; a script is sent whole (``EVAL``): a ``NOSCRIPT`` here
        would cost the command again.

        Raises:
            Untracked: the connections are down or tracking is off, ``subject`` is
                not watched, the connection was lost before the reply, or Redis
                answered with an error: read another way (which raises the error
                again if it is the command's own).
        """
        if not self.connected or subject not in self._subjects:
            raise Untracked(subject)
        reply = asyncio.get_running_loop().create_future()
        self._reads.append((command, reply))
        self._dirty.set()
        return await reply

    def unwatch(self, subject: str, sink: Sink) -> None:
        """Stop nudging ``sink``; the last one out forgets the subject. Never blocks.

        Redis keeps the keys tracked until their next change (one invalidation,
        then nothing): what a tracked key costs the server is a few bytes.
        """
        known = self._subjects.get(subject)
        if known is None or sink not in known.sinks:
            return
        known.sinks.discard(sink)
        if not known.sinks:
            del self._subjects[subject]
            for key in known.keys:
                subjects = self._by_key.get(key)
                if subjects is not None:
                    subjects.discard(subject)
                    if not subjects:
                        del self._by_key[key]
                        self._counts.pop(key, None)

    async def aclose(self) -> None:
        """Close both connections, and return once the task has ended. Idempotent.

        Raises:
            asyncio.CancelledError: the caller was cancelled meanwhile; the task
                ends all the same, and whoever waits for a read goes on.
        """
        self._closed = True
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                # wait() and not `await task`: the task's CancelledError would hide
                # the closer's own. The cancellation cannot be lost in a redis-py
                # write: without socket_timeout, redis-py writes without wait_for.
                await asyncio.wait([task])
                if not task.cancelled():
                    task.result()  # it ended before (tracking off): what it raised
        finally:
            self._drop()  # whoever waits for a read goes on, to find the tracker closed
            self._answer()
            self._subjects.clear()
            self._by_key.clear()

    # The connections

    def _start(self) -> None:
        if self._task is None:
            self._answered = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name="immortus-key-watch")

    def _read(self, keys: Iterable[bytes], then: Callable[[], None]) -> None:
        self._queued.extend(keys)
        self._after.append(then)
        self._dirty.set()

    def _answer(self) -> None:
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(None)

    async def _run(self) -> None:
        delay = self._backoff_min
        while True:
            was = False
            try:
                await self._session()
            except _Off as exc:
                self._drop()
                self._turn_off(str(exc))
                return
            except _LOST as exc:
                was = self.connected
                if was or delay == self._backoff_min:
                    logger.warning("client-side caching connection lost (%s); reconnecting", exc)
            except Exception:
                # A bug, not Redis: start afresh rather than leave the watchers deaf.
                logger.exception("client-side caching failed; restarting it")
            self._drop()
            self._answer()  # Unreachable at first: watchers wait for the reconnection.
            delay = self._backoff_min if was else min(delay * 2, self._backoff_max)
            await asyncio.sleep(delay)

    def _drop(self) -> None:
        self.connected = False
        # Whatever waited on a reply of the lost connection goes on: the next one
        # reads every key again and nudges every watcher.
        for pending in self._pending:
            _answer(pending, Untracked("the client-side caching connection was lost"))
        self._pending.clear()
        for then in self._after:
            then()
        for _, reply in self._reads:
            _answer(reply, Untracked("the client-side caching connection was lost"))
        self._queued.clear()
        self._after.clear()
        self._reads.clear()

    def _stop(self, why: str) -> None:
        """Turn tracking off from outside the task, which is stopped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self._drop()
        self._turn_off(why)

    def _turn_off(self, why: str) -> None:
        self.off = why
        self._answer()
        logger.warning("client-side caching is off (%s); watching another way", why)
        subjects, self._subjects = self._subjects, {}
        self._by_key.clear()
        self._counts.clear()
        if subjects:
            self._on_off({name: set(subject.sinks) for name, subject in subjects.items()})

    async def _session(self) -> None:
        sub = data = None
        try:
            async with asyncio.timeout(2 * self._ping_interval):
                sub = await self._connect()
                data = await self._connect()
                client_id = await self._command(sub, "CLIENT", "ID")
                await self._command(data, "CLIENT", "TRACKING", "ON", "REDIRECT", client_id)
                self._table_max = await self._table_limit(data)
                await sub.send_command("SUBSCRIBE", _CHANNEL)
                reply = await sub.read_response()
                if not isinstance(reply, list) or reply[:1] != [b"subscribe"]:
                    raise RedisError(f"unexpected reply to SUBSCRIBE: {reply!r}")
            self.connected = True
            self.generation += 1
            logger.info("watching queue records with client-side caching (CLIENT TRACKING)")
            subjects = list(self._subjects.values())
            everyone = [sink for subject in subjects for sink in subject.sinks]
            # Invalidations were lost meanwhile, or this is the first connection and
            # the watchers came while it was made: every key read, every watcher told.
            self._read((key for subject in subjects for key in subject.keys), _nudge(everyone))
            self._answer()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._invalidations(sub))
                group.create_task(self._replies(data))
                group.create_task(self._send(data))
        except* _Off as group:
            raise group.exceptions[0] from None
        except* _LOST as group:
            raise group.exceptions[0] from None
        finally:
            for conn in (sub, data):
                if conn is not None:
                    await conn.disconnect(nowait=True)

    async def _table_limit(self, data: AbstractConnection) -> int:
        """The server's ``tracking-table-max-keys`` (0: no limit, or not told)."""
        await data.send_command("CONFIG", "GET", "tracking-table-max-keys")
        try:
            reply = await data.read_response()
        except ResponseError:  # CONFIG denied (a managed service): the rate tells
            return 0
        try:
            return int(reply[1])
        except (TypeError, ValueError, IndexError):
            return 0

    async def _command(self, conn: AbstractConnection, *args: Any) -> Any:
        await conn.send_command(*args)
        try:
            return await conn.read_response()
        except ResponseError as exc:
            raise _Off(f"Redis refused {' '.join(map(str, args[:2]))}: {exc}") from None

    async def _invalidations(self, sub: AbstractConnection) -> None:
        pinged = False
        silence = Silence(self._ping_interval)
        try:
            while True:
                message = await silence.read(sub)
                if message is SILENT:
                    if pinged:
                        raise RedisTimeoutError("no answer to PING on the invalidation connection")
                    await sub.send_command("PING")
                    pinged = True
                    continue
                pinged = False
                if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                    self._invalidated(message[2])
        finally:
            silence.close()

    def _invalidated(self, keys: Any) -> None:
        if keys is None:  # FLUSHDB / FLUSHALL: every key, and Redis forgot them all
            subjects = set(self._subjects)
            keys = list(self._by_key)
        else:
            now = asyncio.get_running_loop().time()
            subjects = set()
            for key in keys:
                subjects |= self._by_key.get(key, set())
                if self._storm_limit and key in self._by_key and self._storm(key, now):
                    raise _Off(
                        f"key {key!r} invalidated {self._storm_limit} times within ten "
                        "seconds: an eviction storm (tracking-table-max-keys too low?)"
                    )
        keys = [key for key in keys if key in self._by_key]
        if not keys:
            return
        for name in subjects:
            subject = self._subjects[name]
            now = not subject.ends.isdisjoint(keys)
            for sink in list(subject.sinks):
                resync = getattr(sink, "request_resync_now", None) if now else None
                (resync or sink.request_resync)()

    def _storm(self, key: bytes, now: float) -> bool:
        start, count = self._counts.get(key, (now, 0))
        if now - start > 10.0:
            start, count = now, 0
        self._counts[key] = (start, count + 1)
        return count + 1 >= (self._storm_limit or 0)

    async def _send(self, data: AbstractConnection) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            keys = list(dict.fromkeys(self._queued))
            after, self._queued, self._after = self._after, [], []
            reads, self._reads = [(c, r) for c, r in self._reads if not r.done()], []
            commands: list[tuple[Any, ...]] = [
                ("EXISTS", *keys[i : i + _CHUNK]) for i in range(0, len(keys), _CHUNK)
            ]
            pending: list[_Pending] = [[] for _ in commands[:-1]]
            if commands:
                pending.append(after)
            else:
                for then in after:
                    then()
            commands += [command for command, _ in reads]
            pending += [reply for _, reply in reads]
            if not commands:
                continue
            # Recorded before the write, with no await in between: replies come back
            # in the order the commands went out, and so does this queue.
            self._pending.extend(pending)
            await data.send_packed_command(data.pack_commands(commands), check_health=False)

    async def _replies(self, data: AbstractConnection) -> None:
        pinged = False
        silence = Silence(self._ping_interval)
        try:
            while True:
                reply: Any
                try:
                    reply = await silence.read(data)
                except ResponseError as exc:
                    if not self._pending or not isinstance(self._pending[0], asyncio.Future):
                        # An ACL that denies the keys to the EXISTS that tracks them.
                        raise _Off(f"Redis refused to read watched keys: {exc}") from None
                    reply = Untracked(f"Redis answered a read on the tracking connection: {exc}")
                if reply is SILENT:
                    if pinged:
                        raise RedisTimeoutError("no answer to PING on the tracking connection")
                    self._pending.append([])
                    await data.send_command("PING")
                    pinged = True
                    continue
                pinged = False
                if not self._pending:
                    raise RedisError(f"a reply to no command on the tracking connection: {reply!r}")
                _answer(self._pending.popleft(), reply)
        finally:
            silence.close()


def _answer(pending: _Pending, reply: Any) -> None:
    """Give a reply (or, for a read, the Untracked that replaces it) to what waits."""
    if isinstance(pending, asyncio.Future):
        if not pending.done():
            if isinstance(reply, Untracked):
                pending.set_exception(reply)
            else:
                pending.set_result(reply)
        return
    for then in pending:
        then()


def _nudge(sinks: list[Sink]) -> Callable[[], None]:
    def nudge() -> None:
        for sink in sinks:
            sink.request_resync()

    return nudge


async def tracked_read(
    watch: KeyWatch | None,
    subject: str,
    script: SharedScript,
    keys: list[str],
    args: list[Any],
    slots: asyncio.Semaphore,
) -> tuple[Any, int | None]:
    """``script``'s reply, and the :attr:`KeyWatch.generation` it was tracked in:
    for a watched subject, run on the tracking connection, which tracks every key
    it reads (see :meth:`KeyWatch.read`); otherwise, or where that cannot be,
    through the client, holding one of ``slots`` (generation None)."""
    if watch is not None:
        generation = watch.generation
        try:
            reply = await watch.read(subject, "EVAL", script.script, len(keys), *keys, *args)
        except Untracked:
            pass
        else:
            return reply, generation
    async with slots:
        return await script(keys, args), None


class KeyWatching:
    """What a reader of a queue's records that watches its keys has: one
    :class:`KeyWatch` on its client, made on first use, and statistics saying how
    its watchers learn of changes (:attr:`watching`)."""

    redis: Client
    _watch: KeyWatch | None = None

    @property
    def watching(self) -> str:
        """How watchers learn of the queue's writes (``"client-tracking"``, ...)."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """What this strategy does, for a health endpoint: ``watching`` (see the
        attribute), and why client-side caching is off when it is."""
        stats: dict[str, Any] = {"watching": self.watching}
        if self._watch is not None and self._watch.off is not None:
            stats["client_tracking_off"] = self._watch.off
        return stats

    async def _tracked(
        self,
        subject: str,
        script: SharedScript,
        keys: list[str],
        args: list[Any],
        slots: asyncio.Semaphore,
    ) -> Any:
        """``script``'s reply: for a watched subject, run on the tracking connection,
        which tracks every key it reads (see :meth:`KeyWatch.read`); otherwise, or
        where that cannot be, through the client, holding one of ``slots``."""
        return (await tracked_read(self._watch, subject, script, keys, args, slots))[0]

    def _key_watch(self) -> KeyWatch:
        if self._watch is None:
            # A queue's records are on one server: its strategy refuses a cluster.
            assert isinstance(self.redis, Redis), "a queue's records are on one server"
            self._watch = KeyWatch(connection_factory(self.redis), on_off=self._hand_over)
        return self._watch

    def _hand_over(self, subjects: dict[str, set[Sink]]) -> None:
        """Client-side caching turned off under these watchers: watch them another way."""
        raise NotImplementedError
