"""Sharded pub/sub on a Redis Cluster: one hub per master, each channel where its slot is.

A job's state is published with ``SPUBLISH`` on the shard that owns the channel's
slot, so a waiter must ``SSUBSCRIBE`` on that master. :class:`ShardedHub` keeps the
slot map (``CLUSTER SLOTS``), one :class:`~immortus_async._pubsub.PubSubHub` per
master speaking the sharded commands (so the replies, pings, reconnects and
backoff are that hub's), and, per channel, one sink of its own in the master's hub
that hands every message to the channel's sinks.

A channel moves when its slot does: the master that loses the slot pushes
``sunsubscribe`` (a migration, a failover), a subscribe is answered ``MOVED`` (or
``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN`` while a slot is moving), or a master's
connection is lost or stops answering PING (killed: its replica takes over). The
slot map is then read again, and the channel subscribed where its slot is now,
until that is confirmed; only then are its sinks asked to resync, so the snapshot
re-read comes after the new subscription, and what was published to nobody in
between is in it: subscribe, snapshot, newer seq only, as on one server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError

from ._pubsub import _LOST, PubSubHub, Sink, _Hub, _short, dedicated
from ._redis import REFUSED
from .exceptions import ImmortusError, RedisUnavailable, SubscriptionRefused, TrackerClosed

__all__ = ["ShardedHub"]

logger = logging.getLogger("immortus_async.pubsub")

Address = tuple[str, int]

# What a node answers for a slot it does not serve, or not yet: the channel is
# subscribed again wherever the slot map then says.
_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


class _Moved(ImmortusError):
    """The channel's slot is served elsewhere now: subscribe it again where it is."""


class _NodeHub(PubSubHub):
    """The hub of one master: sharded commands, one command per slot, and a slot
    that left (pushed ``sunsubscribe``, ``MOVED``) or a lost connection reported."""

    _SUBSCRIBE = ("SSUBSCRIBE", b"ssubscribe")
    _UNSUBSCRIBE = ("SUNSUBSCRIBE", b"sunsubscribe")
    _MESSAGE = b"smessage"

    def __init__(
        self, address: Address, on_lost: Callable[[], None], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.address = address
        self._on_lost = on_lost

    def _groups(self, channels: list[str]) -> list[list[str]]:
        # One command may not name channels of two slots (CROSSSLOT).
        slots: dict[int, list[str]] = {}
        for channel in channels:
            slots.setdefault(_slot(channel), []).append(channel)
        return list(slots.values())

    def _pushed_unsubscribe(self, channel: str) -> None:
        if channel in self._sinks:
            self._fail(channel, _Moved(f"{channel!r} left {self._where}"))

    def _redirected(self, exc: ResponseError) -> BaseException | None:
        # redis-py's cluster parser raises these; a plain one leaves the prefix.
        if isinstance(exc, AskError | TryAgainError | ClusterDownError) or str(exc).startswith(
            _REDIRECTS
        ):
            return _Moved(f"{self._where} does not serve the slot now: {_short(exc)}")
        return None

    def _lost(self, exc: BaseException) -> None:
        super()._lost(exc)
        self._on_lost()


def _slot(channel: str) -> int:
    return int(key_slot(channel.encode()))


class _Channel:
    """One channel: its sinks, and the sink that stands for them all in a node's hub."""

    __slots__ = ("_router", "decode", "hub", "name", "ready", "since", "sinks", "slot")

    def __init__(
        self, router: ShardedHub, name: str, slot: int, decode: Callable[[bytes], Any]
    ) -> None:
        self._router = router
        self.name = name
        self.slot = slot
        self.decode = decode
        self.sinks: set[Sink] = set()
        self.hub: _NodeHub | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.since = 0.0  # loop time it was left without a node (for unreachable_timeout)

    def push(self, item: Any) -> None:
        for sink in self.sinks:
            sink.push(item)

    def request_resync(self) -> None:
        for sink in self.sinks:
            sink.request_resync()

    def fail(self, error: BaseException) -> None:
        self._router._failed(self, error)


class ShardedHub(_Hub):
    """Delivers each shard channel's messages to every sink subscribed to it.

    The interface of :class:`~immortus_async._pubsub.PubSubHub` (which waiters
    and the bridge use as they are), on a ``RedisCluster``.

    Args:
        cluster: the cluster client; its connection settings (password, TLS) and
            startup nodes serve the hub's own connections.
        ping_interval, backoff_min, backoff_max, unreachable_timeout, where: as
            for :class:`~immortus_async._pubsub.PubSubHub`, for each master's
            connection; the backoff also spaces the re-reads of the slot map.
    """

    def __init__(
        self,
        cluster: RedisCluster,
        *,
        ping_interval: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        unreachable_timeout: float | None = None,
        where: str = "Redis Cluster",
    ) -> None:
        self._cluster = cluster
        settings = dict(cluster.get_connection_kwargs())
        self._connection_class: type[AbstractConnection] = (
            settings.pop("connection_class", None) or Connection
        )
        for key in ("max_connections", "host", "port", "response_callbacks"):
            settings.pop(key, None)
        self._settings = settings
        self._options: dict[str, Any] = {
            "ping_interval": ping_interval,
            "backoff_min": backoff_min,
            "backoff_max": backoff_max,
            "unreachable_timeout": unreachable_timeout,
        }
        self._ping_interval = ping_interval
        self._backoff = (backoff_min, backoff_max)
        self._unreachable_timeout = unreachable_timeout
        self._where = where
        self._owners: list[Address | None] = []  # by slot; empty until first read
        self._known: list[Address] = []  # every node the last map named
        # By slot, the node that last told us it gave the slot up (sunsubscribe,
        # MOVED, ...): its word is newer than a map, read elsewhere, that still
        # gives it the slot.
        self._left: dict[int, Address] = {}
        self._hubs: dict[Address, _NodeHub] = {}
        self._channels: dict[str, _Channel] = {}
        self._homeless: set[_Channel] = set()
        self._attaching: set[asyncio.Task[None]] = set()
        self._stale = True
        self._failing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # Public API, as PubSubHub's

    async def subscribe(self, channel: str, sink: Sink, decode: Callable[[bytes], Any]) -> None:
        """Add ``sink`` to ``channel``; return when its master has confirmed it.

        Raises: as :meth:`PubSubHub.subscribe <immortus_async._pubsub.PubSubHub.subscribe>`.
        """
        if self._closed:
            raise TrackerClosed("the tracker's pub/sub connection is closed")
        entry = self._channels.get(channel)
        if entry is None:
            try:
                slot = _slot(channel)
            except UnicodeError as exc:
                raise SubscriptionRefused(
                    f"cannot subscribe to {channel!r}: {_short(exc)}"
                ) from None
            entry = self._channels[channel] = _Channel(self, channel, slot, decode)
            self._place(entry)
        entry.sinks.add(sink)
        if not entry.ready.done():
            try:
                await asyncio.shield(entry.ready)
            except BaseException:
                self.unsubscribe(channel, sink)
                raise

    def unsubscribe(self, channel: str, sink: Sink) -> None:
        """Remove ``sink``; the last one out unsubscribes the channel. Never blocks."""
        entry = self._channels.get(channel)
        if entry is None or sink not in entry.sinks:
            return
        entry.sinks.discard(sink)
        if not entry.sinks:
            self._drop(entry)
            if not entry.ready.done():
                entry.ready.cancel()

    @property
    def channels(self) -> int:
        """How many channels are subscribed (or being subscribed)."""
        return len(self._channels)

    @property
    def healthy(self) -> bool:
        """False while a master's hub is unhealthy, or channels wait for a slot map
        that cannot be read."""
        return not (self._failing and self._homeless) and all(
            hub.healthy for hub in self._hubs.values()
        )

    async def aclose(self) -> None:
        """Stop every task, close every connection, fail waiting sinks. Idempotent.

        Raises:
            asyncio.CancelledError: the caller was cancelled meanwhile; the hub is
                closed all the same (a second call would return at once).
        """
        if self._closed:
            return
        self._closed = True
        tasks = [*self._attaching, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            hubs, self._hubs = list(self._hubs.values()), {}
            await asyncio.gather(*(hub.aclose() for hub in hubs), return_exceptions=True)
            closed = TrackerClosed("the tracker was closed")
            for entry in list(self._channels.values()):
                self._end(entry, closed)

    # Where each channel goes

    def _place(self, entry: _Channel) -> None:
        """Subscribe ``entry`` where the slot map says, or wait for a fresh map."""
        owner = None if self._stale or not self._owners else self._owners[entry.slot]
        if owner is None:
            if entry not in self._homeless:
                entry.since = asyncio.get_running_loop().time()
                self._homeless.add(entry)
            self._start()
            self._wake.set()
            return
        self._homeless.discard(entry)
        hub = self._hubs.get(owner)
        if hub is None:
            hub = self._hubs[owner] = self._node_hub(owner)
        entry.hub = hub
        task = asyncio.get_running_loop().create_task(
            self._attach(entry, hub), name=f"immortus-sharded-subscribe {entry.name}"
        )
        self._attaching.add(task)
        task.add_done_callback(self._attaching.discard)

    async def _attach(self, entry: _Channel, hub: _NodeHub) -> None:
        try:
            await hub.subscribe(entry.name, entry, entry.decode)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return  # moved on meanwhile: the hub let go of it
        except Exception as exc:
            # The hub told the channel already (entry.fail), unless it was closed.
            if entry.hub is hub:
                self._failed(entry, exc)
            return
        if self._channels.get(entry.name) is not entry or entry.hub is not hub:
            return
        if entry.ready.done():
            entry.request_resync()  # it moved: what was published meanwhile is in a snapshot
        else:
            entry.ready.set_result(None)

    def _failed(self, entry: _Channel, error: BaseException) -> None:
        """A node's hub gave up ``entry``: moved elsewhere, or failed for good."""
        if self._channels.get(entry.name) is not entry:
            return
        if isinstance(error, _Moved):
            logger.info("%s moved (%s); subscribing it where its slot is now", entry.name, error)
            if entry.hub is not None:
                self._left[entry.slot] = entry.hub.address
                entry.hub = None
                self._stale = True
            self._place(entry)
            return
        self._end(entry, error)

    def _end(self, entry: _Channel, error: BaseException) -> None:
        """``entry`` ends here: its sinks, and a subscriber still waiting, get ``error``."""
        hub = entry.hub
        self._drop(entry)
        if hub is not None:
            # Later, not now: the hub may be iterating over the channel's sinks.
            asyncio.get_running_loop().call_soon(hub.unsubscribe, entry.name, entry)
        if not entry.ready.done():
            entry.ready.set_exception(error)
            entry.ready.exception()  # retrieved: its awaiters may all be gone
        for sink in list(entry.sinks):
            sink.fail(error)

    def _drop(self, entry: _Channel) -> None:
        if self._channels.get(entry.name) is entry:
            del self._channels[entry.name]
        self._homeless.discard(entry)
        hub, entry.hub = entry.hub, None
        if hub is not None:
            hub.unsubscribe(entry.name, entry)

    def _node_lost(self) -> None:
        self._stale = True
        self._start()
        self._wake.set()

    def _node_hub(self, address: Address) -> _NodeHub:
        host, port = address
        connect = dedicated(self._connection_class, {**self._settings, "host": host, "port": port})
        return _NodeHub(
            address,
            self._node_lost,
            connect,
            where=f"{self._where} (node {host}:{port})",
            **self._options,
        )

    # The slot map

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="immortus-sharded-slots"
            )

    async def _run(self) -> None:
        """Re-read the slot map when asked, no faster than the backoff allows, and
        move every channel whose slot is elsewhere now; restarted if it fails."""
        loop = asyncio.get_running_loop()
        low, high = self._backoff
        delay, last = low, float("-inf")
        while True:
            await self._wake.wait()
            delay = low if loop.time() - last > high else min(delay * 2, high)
            if (wait := last + delay - loop.time()) > 0:
                await asyncio.sleep(wait)
            last = loop.time()
            self._wake.clear()
            try:
                await self._refresh()
                self._failing = False
                self._reconcile()
            except Exception as exc:
                self._failing = True
                if not isinstance(exc, _LOST):
                    logger.exception("reading the Redis Cluster's slot map failed")
                else:
                    logger.warning("cannot read the Redis Cluster's slot map: %s", _short(exc))
                self._give_up(exc)
                self._wake.set()

    async def _refresh(self) -> None:
        """The slot map, from the first node that answers ``CLUSTER SLOTS``: first
        the nodes that said they gave a slot up, whose map has that change.

        Another node may not have it yet (it learns a failover a moment later):
        its map would send the channel back to the demoted master, which as a
        replica accepts ``SSUBSCRIBE`` but hears nothing from its new master for
        a while, and pushes nothing more. A slot such a map gives back to the
        node that gave it up stays unplaced until a map agrees, or until that
        node itself says it serves the slot again.
        """
        startup = [
            (node.host, int(node.port))
            for node in self._cluster.nodes_manager.startup_nodes.values()
        ]
        candidates = list(dict.fromkeys([*self._left.values(), *self._known, *startup]))
        error: BaseException = RedisUnavailable(f"no node of {self._where} to ask")
        for address in candidates:
            try:
                async with asyncio.timeout(self._ping_interval):
                    reply = await self._cluster_slots(address)
            except REFUSED:
                raise
            except _LOST as exc:
                error = exc
                continue
            owners: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            known: list[Address] = []
            for start, end, *nodes in reply:
                addresses = [_address(node, address) for node in nodes]
                known.extend(addresses)
                owners[int(start) : int(end) + 1] = [addresses[0]] * (int(end) - int(start) + 1)
            for slot, gone in list(self._left.items()):
                if owners[slot] != gone or address == gone:
                    del self._left[slot]
                else:
                    owners[slot] = None  # this map is older than the node's word
            self._owners, self._known = owners, list(dict.fromkeys(known)) or self._known
            self._stale = False
            return
        raise error

    def any_node(self) -> Callable[[], Awaitable[AbstractConnection]]:
        """Open connections for plain ``SUBSCRIBE``: to the node last connected to,
        or else any master, startup node or replica, first that answers.

        A cluster's plain ``PUBLISH`` reaches every node (over the cluster bus), so
        one connection anywhere hears all of it: what an owner's channel carries,
        which is in no job's slot. A node that died, or hung the last attempt, is
        tried last.
        """
        current: list[Address] = []
        avoid: list[Address] = []
        # Every node ever named: the client forgets a startup node it saw die.
        seen: dict[Address, None] = {}

        async def connect() -> AbstractConnection:
            masters = [owner for owner in dict.fromkeys(self._owners) if owner is not None]
            named = [
                (node.host, int(node.port))
                for node in [
                    *self._cluster.nodes_manager.startup_nodes.values(),
                    *self._cluster.get_nodes(),
                ]
            ]
            seen.update(dict.fromkeys([*named, *self._known]))
            known = dict.fromkeys([*current, *masters, *seen])
            candidates = [a for a in known if a not in avoid] + [a for a in avoid if a in known]
            error: BaseException = RedisUnavailable(f"no node of {self._where} to ask")
            for host, port in candidates:
                current.clear()
                avoid[:] = [(host, port)]  # until it connects: a hang cancels this call
                try:
                    settings = {**self._settings, "host": host, "port": port}
                    conn = await dedicated(self._connection_class, settings)()
                except REFUSED:
                    raise
                except _LOST as exc:
                    error = exc
                    continue
                current.append((host, port))
                avoid.clear()
                return conn
            raise error

        return connect

    async def _cluster_slots(self, address: Address) -> Any:
        host, port = address
        conn = await dedicated(
            self._connection_class, {**self._settings, "host": host, "port": port}
        )()
        try:
            await conn.send_command("CLUSTER", "SLOTS")
            return await conn.read_response()
        finally:
            await conn.disconnect(nowait=True)

    def _reconcile(self) -> None:
        """Each channel to the master of its slot; hubs of nodes that serve nothing closed."""
        for entry in list(self._channels.values()):
            owner = self._owners[entry.slot]
            if entry.hub is not None and entry.hub.address == owner:
                continue
            if entry.hub is not None:
                logger.info("%s moves to %s", entry.name, owner)
                hub, entry.hub = entry.hub, None
                hub.unsubscribe(entry.name, entry)
            self._place(entry)
        owners = set(self._owners)
        for address, hub in list(self._hubs.items()):
            if address not in owners and not hub.channels:
                del self._hubs[address]
                task = asyncio.get_running_loop().create_task(hub.aclose())
                self._attaching.add(task)
                task.add_done_callback(self._attaching.discard)
        if self._homeless or any(
            hub.channels and not hub.connected.is_set() for hub in self._hubs.values()
        ):
            # A slot no node serves yet, or a master down that may be replaced
            # (its replica promoted): look again, backing off.
            self._wake.set()

    def _give_up(self, exc: BaseException) -> None:
        """Fail the channels that waited ``unreachable_timeout`` for a slot map."""
        if self._unreachable_timeout is None:
            return
        now = asyncio.get_running_loop().time()
        for entry in list(self._homeless):
            if now - entry.since >= self._unreachable_timeout:
                self._end(
                    entry,
                    RedisUnavailable(
                        f"cannot reach {self._where} for {self._unreachable_timeout:g}s "
                        f"({_short(exc)})"
                    ),
                )


def _address(node: Any, asked: Address) -> Address:
    """A node of a ``CLUSTER SLOTS`` reply; an empty host is the node that answered."""
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return (host or asked[0], int(node[1]))
